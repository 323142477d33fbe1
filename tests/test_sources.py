"""Several data roots at once: layouts with sequence folders, patient groups, per-group figures, the heat-map
objective and the MRI detector on skull-stripped slices. Tiny synthetic data, offline."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import train
from brain_tumor import datasets, evaluate, metrics, splits
from brain_tumor.config import TrainConfig
from brain_tumor.augment import strip_view
from brain_tumor.engine import localisation_loss
from brain_tumor.trust import cam_pointing
from brain_tumor.model import create_model, load_model
from conftest import CLASSES, synthetic_slice, write_class_folders

TINY = ["--img-size", "64", "--epochs", "1", "--batch-size", "8", "--init", "scratch", "--backbone-lr", "same",
        "--val-fraction", "0.3", "--patience", "0"]


def write_lgg_like(root, patients: int = 6, slices: int = 3, sequences=("flair", "t1")):
    """``{sequence}/{glioma,notumor}/<case>_<slice>.png`` with masks/<case>_<slice>.png, as the LGG set is laid out."""
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        case = f"TCGA_XX_{1000 + p}_2001"
        for k in range(slices):
            tumour = k < 2
            img = synthetic_slice(1000 + 10 * p + k, 96, tumor=False)
            mask = np.zeros_like(img)
            if tumour:
                cv2.circle(mask, (40, 50), 10, 255, -1)
                img[mask > 0] = 230
            cv2.imwrite(str(root / "masks" / f"{case}_{k + 1}.png"), mask)
            for q, seq in enumerate(sequences):
                folder = root / seq / ("glioma" if tumour else "notumor")
                folder.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(folder / f"{case}_{k + 1}.png"), img if q == 0 else 255 - img * (img > 0))
    return root


def test_nested_sequence_layout_with_patients_and_masks(tmp_path):
    col, test = datasets.read_root(str(write_lgg_like(tmp_path / "lgg")))
    assert test is None and len(col) == 6 * 3 * 2
    assert set(col.sequences) == {"flair", "t1"} and set(col.classes) == {"glioma", "notumor"}
    assert set(col.groups()) == {"lgg/flair", "lgg/t1"}
    assert len(set(col.patients)) == 6 and all(col.patients)
    assert all(m is not None and m.name.endswith(".png") for m in col.masks)
    images, _, masks, errors = datasets.load(col, 64, progress=False)
    has = masks.any((1, 2))
    assert errors == [None] * len(col)
    assert has.sum() == 6 * 2 * 2  # glioma slices carry their mask, notumor slices none
    assert not has[[c == "notumor" for c in col.classes]].any()


def test_class_prefixes_are_not_patients(tmp_path):
    root = tmp_path / "kaggle"
    for c, prefix in (("glioma", "Tr-gl"), ("notumor", "Tr-no")):
        (root / c).mkdir(parents=True)
        for i in range(5):
            cv2.imwrite(str(root / c / f"{prefix}_{i:04d}.png"), synthetic_slice(i, 64, c == "glioma"))
    col, _ = datasets.read_root(str(root))
    assert col.patients == [""] * 10


def test_a_patient_never_straddles_the_split(tmp_path):
    col, _ = datasets.read_root(str(write_lgg_like(tmp_path / "lgg", patients=10)))
    _, thumbs, _, _ = datasets.load(col, 64, progress=False)
    for seed in range(5):
        is_val, groups = splits.split(col, thumbs, 0.3, seed, 0.95)
        assert is_val.any() and not is_val.all()
        for p in set(col.patients):
            sides = {bool(v) for v, q in zip(is_val, col.patients) if q == p}
            assert len(sides) == 1, f"patient {p} straddles train and validation"
        assert len(set(groups)) <= 10


def test_an_earlier_split_keeps_its_sides(tmp_path):
    root = write_class_folders(tmp_path / "data", per_class=6)
    col, _ = datasets.read_root(str(root))
    old = {"train": [col.relpath(i).split("/", 1)[1] for i in range(0, len(col), 2)],
           "val": [col.relpath(i).split("/", 1)[1] for i in range(1, len(col), 4)]}
    (tmp_path / "split.json").write_text(json.dumps(old))  # the older single-root format
    fixed = splits.previous_sides(col, tmp_path / "split.json")
    assert (fixed[::2] == 0).all() and (fixed[1::4] == 1).all()
    _, thumbs, _, _ = datasets.load(col, 64, progress=False)
    is_val, _ = splits.split(col, thumbs, 0.3, 0, 0.999, fixed)
    assert not is_val[::2].any() and is_val[1::4].all()


@pytest.mark.slow
def test_roots_with_different_classes_train_together(tmp_path, capsys):
    kaggle = write_class_folders(tmp_path / "kaggle", per_class=4)
    lgg = write_lgg_like(tmp_path / "lgg", patients=4)
    out = tmp_path / "model"
    assert train.main(["--data", str(kaggle), "--data", str(lgg), "--out", str(out), *TINY]) == 0
    log = capsys.readouterr().out
    assert "lgg/flair" in log and "group score" in log and "pointing" in log
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_names"] == CLASSES  # the union: LGG holds only glioma and notumor
    assert set(cfg["training"]["data_sources"]) == {"kaggle", "lgg/flair", "lgg/t1"}
    assert abs(sum(cfg["training"]["sampling_share"].values()) - 1) < 1e-6
    groups = cfg["metrics"]["validation_groups"]
    assert set(groups) <= {"kaggle", "lgg/flair", "lgg/t1"} and groups
    split = json.loads((out / "split.json").read_text())
    assert set(split["roots"]) == {"kaggle", "lgg"}
    assert not set(split["train"]) & set(split["val"])
    col, is_val = splits.read_split(str(out))
    assert len(col) == 16 + 24 and is_val.sum() == len(split["val"])
    assert load_model(str(out)).targets == CLASSES
    assert set(cfg["cam_shift"]) == {"layer4/gradcam", "layer4/gradcam++"}  # fitted by the run itself
    assert set(cfg["cam_shift"]["layer4/gradcam"]) == set(CLASSES)
    from brain_tumor import cam_offset
    cfg["cam_shift"] = {}
    (out / "config.json").write_text(json.dumps(cfg))
    assert cam_offset.main([str(out), "--max-slices", "12"]) == 0  # refit from split.json alone
    refit = json.loads((out / "config.json").read_text())
    assert set(refit["cam_shift"]) == {"layer4/gradcam", "layer4/gradcam++"}
    assert refit["metrics"]["cam_offset"]["slices"] == 12
    from brain_tumor import trust
    capsys.readouterr()
    stale = json.loads((out / "config.json").read_text())
    stale["metrics"].update(validation_groups={}, selection_score=-1.0)
    (out / "config.json").write_text(json.dumps(stale))
    assert trust.main([str(out)]) == 0  # refit from split.json alone: the roots it names
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    if not metrics["calibration"]["class_temperature"]:  # the run's own calibration again: its own figures
        for name, row in groups.items():
            assert metrics["validation_groups"][name] == pytest.approx(row, rel=1e-3, nan_ok=True)
        assert metrics["selection_score"] == pytest.approx(cfg["metrics"]["selection_score"])
    assert set(metrics["validation_groups"]) == set(groups)
    assert metrics["selection_score"] != -1.0  # refreshed (None here: too few slices a group to score)
    assert "pointing_game" in metrics["validation_groups"]["lgg/flair"]
    refit = metrics["mri_detector"]
    assert set(refit["validation_flagged_by_group"]) <= {"kaggle", "lgg/flair", "lgg/t1"}
    assert 0 <= refit["validation_view_flagged"] <= 1
    from scripts import detector_choice  # with every training slice, its layer3 row is the detector trust fitted
    assert detector_choice.main(["--model", str(out), "--per-source", "1000", "--json", str(tmp_path / "d.json")]) == 0
    choice = json.loads((tmp_path / "d.json").read_text())["candidates"]
    assert set(choice) == {"pooled", "layer3", "layer2"}
    # (up to the skull-stripped view's random strip width, drawn anew in each fit: a few images either way)
    assert choice["layer3"]["validation_flagged"] == pytest.approx(refit["validation_mris_flagged"], abs=0.05)
    assert choice["layer3"]["non_mri_caught"] == pytest.approx(refit["non_mri_flagged"], abs=0.05)
    for row in choice.values():
        assert set(row["leave_one_source_out"]) == {"kaggle", "lgg"}
        assert all(0 <= v["flagged"] <= 1 for v in row["leave_one_source_out"].values())
    from scripts import posthoc  # the same split's groups, answered as evaluate answers them
    assert posthoc.main(["--model", str(out), "--lams", "0.01", "--json", str(tmp_path / "p.json")]) == 0
    post = json.loads((tmp_path / "p.json").read_text())
    from brain_tumor.evaluate import evaluate
    from brain_tumor.inference import Predictor
    served = evaluate(Predictor(str(out)), [str(kaggle), str(lgg)], heatmaps=False,
                      split=str(out / "split.json"))["figures"]["groups"]
    for name, row in served.items():
        assert {k: post["served"]["groups"][name][k] for k in ("n", "accuracy", "tumor_sensitivity")} == \
            pytest.approx({k: row[k] for k in ("n", "accuracy", "tumor_sensitivity")}, nan_ok=True)
    assert sum(r["n"] for r in post["fit_training_side"]["groups"].values()) == post["training_slices"] == 40 - len(split["val"])
    assert set(post["last_layer"]) == {"none lam=0.01", "group lam=0.01"}
    card = (out / "README.md").read_text()
    assert "license: other" in card  # synthetic roots are no known source: their terms are not ours to state
    assert "model-index" in card and "lgg/flair (grouped validation split)" in card


def test_select_answers_chooses_the_epoch_by_the_answers_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "MIN_SUPPORT", 1)  # the tiny groups' figures count, the pointing game's too
    kaggle = write_class_folders(tmp_path / "kaggle", per_class=4)
    lgg = write_lgg_like(tmp_path / "lgg", patients=4)
    out = tmp_path / "model"
    assert train.main(["--data", str(kaggle), "--data", str(lgg), "--out", str(out), "--select", "answers", *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    groups = cfg["metrics"]["validation_groups"]
    assert any("pointing_game" in row for row in groups.values())  # measured and reported, not scored
    assert "pointing" not in cfg["metrics"]["selection"] and cfg["training"]["config"]["select"] == "answers"
    assert cfg["metrics"]["selection_score"] == pytest.approx(metrics.selection_score(groups, pointing=False),
                                                              nan_ok=True)
    assert cfg["metrics"]["selection_score"] != pytest.approx(metrics.selection_score(groups))  # it made a difference
    for h in cfg["training"]["history"]:
        assert h["val_score"] == pytest.approx(metrics.selection_score(h["val_groups"], pointing=False), nan_ok=True)


def test_sampling_weights_balance_sources():
    col = datasets.Collection(sources=["big"] * 900 + ["small"] * 100, sequences=[""] * 1000)
    pooled = datasets.sampling_weights(col, 1.0)
    assert pooled[:900].sum() == pytest.approx(0.9)
    equal = datasets.sampling_weights(col, 0.0)
    assert equal[:900].sum() == pytest.approx(0.5)
    half = datasets.sampling_weights(col, 0.5)
    assert half[:900].sum() == pytest.approx(30 / 40)  # sqrt(900) : sqrt(100)
    with pytest.raises(ValueError, match="between 0 and 1"):
        datasets.sampling_weights(col, 1.5)


def test_group_report_on_a_made_up_set():
    names, no_tumor = ["glioma", "notumor"], [1]
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 0, 0, 0, 1])
    probs = np.eye(2)[pred] * 0.8 + 0.1
    groups = ["a"] * 4 + ["b"] * 4
    r = metrics.group_reports(y, probs, groups, names, no_tumor)
    assert r["a"] == {"n": 4, "accuracy": 0.75, "tumor_sensitivity": pytest.approx(2 / 3), "tumor_specificity": 1.0,
                      "n_tumor": 3, "n_no_tumor": 1}
    for row in r.values():  # the made-up groups are tiny: let every figure count
        row.update(n=10, n_tumor=10, n_no_tumor=10)
    assert r["b"]["accuracy"] == 0.5 and r["b"]["tumor_sensitivity"] == 1.0
    assert r["b"]["tumor_specificity"] == pytest.approx(1 / 3)
    a, b = metrics.group_score(r["a"]), metrics.group_score(r["b"])
    assert a == pytest.approx((0.75 + 2 / 3 + 1) / 3)
    assert metrics.selection_score(r) == pytest.approx(0.5 * (a + b) / 2 + 0.5 * min(a, b))
    only_tumours = metrics.group_reports([0, 0], np.array([[0.9, 0.1], [0.2, 0.8]]), ["c", "c"], names, no_tumor)
    assert np.isnan(only_tumours["c"]["tumor_specificity"])
    assert np.isnan(metrics.group_score(only_tumours["c"]))  # two images: too few to count
    only_tumours["c"].update(n=10, n_tumor=10)
    assert metrics.group_score(only_tumours["c"]) == pytest.approx((0.5 + 0.5) / 2)
    r["a"]["n_no_tumor"] = 1  # a specificity from one normal slice leaves the score
    assert metrics.group_score(r["a"]) == pytest.approx((0.75 + 2 / 3) / 2)
    assert "c " in metrics.format_group_table(only_tumours)
    r["a"].update(pointing_game=0.25, n_masked=3)  # heat maps on three masks: too few to count
    assert metrics.group_score(r["a"]) == pytest.approx((0.75 + 2 / 3) / 2)
    r["a"]["n_masked"] = 10  # on ten, an epoch whose maps miss the tumour scores lower
    assert metrics.group_score(r["a"]) == pytest.approx((0.75 + 2 / 3 + 0.25) / 3)
    assert metrics.group_score(r["a"], pointing=False) == pytest.approx((0.75 + 2 / 3) / 2)  # --select answers
    b = metrics.group_score(r["b"])
    assert metrics.selection_score(r, pointing=False) == pytest.approx(0.5 * ((0.75 + 2 / 3) / 2 + b) / 2
                                                                       + 0.5 * min((0.75 + 2 / 3) / 2, b))


@pytest.mark.slow
def test_heat_map_objective_moves_the_map_into_a_planted_box():
    torch.manual_seed(0)
    model = create_model(["glioma", "notumor"], init="scratch", img_size=128)
    x = torch.from_numpy(np.stack([synthetic_slice(i, 128, tumor=False) for i in range(8)]))
    masks = torch.zeros(8, 128, 128, dtype=torch.uint8)
    masks[:, 32:64, 64:96] = 1  # one cell of layer4's 4 x 4 grid, upper right, where nothing marks it
    y = torch.zeros(8, dtype=torch.long)
    before = cam_pointing(model, x, y, masks)[1].mean()
    cfg = TrainConfig(loc_weight=1.0, head_weight=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    x01 = x.float().div(255).unsqueeze(1)
    for _ in range(30):
        _, _, maps = model.forward_with_maps(x01.expand(-1, 3, -1, -1))
        loss = localisation_loss(model, maps, y, masks.float().unsqueeze(1), x01, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hits, shares = cam_pointing(model, x, y, masks)
    assert shares.mean() > 2 * before and shares.mean() > before + 0.08  # the map is bilinear from 4 x 4 cells
    assert hits.mean() >= 0.75
    none = localisation_loss(model, maps, torch.ones(8, dtype=torch.long), torch.zeros(8, 1, 128, 128), x01, cfg)
    assert float(none) == 0.0  # no-tumour slices and no mask: nothing to push


def test_detector_passes_skull_stripped_slices_and_flags_photos():
    from brain_tumor.trust import calibrate, non_mri_images
    from brain_tumor.preprocess import prepare

    torch.manual_seed(0)
    model = create_model(["glioma", "notumor"], init="scratch", img_size=64).eval()
    x = torch.from_numpy(np.stack([prepare(synthetic_slice(i, 96, tumor=i % 2 == 0), 64)[0] for i in range(80)]))
    y = torch.tensor([i % 2 for i in range(80)])
    calibrate(model, x[:60], y[:60], x[60:], y[60:], measure_negatives=False, extra_view=strip_view)
    from brain_tumor.trust import extract
    stripped = extract(model, x[60:], transform=strip_view)[1]
    assert (model.ood_distance(stripped) <= model.config.ood_threshold).float().mean() >= 0.9
    photos = [g for name, g in non_mri_images() if name.startswith("skimage:")]  # photographs
    assert photos
    p = torch.from_numpy(np.stack([prepare(g, 64)[0] for g in photos]))
    assert (model.ood_distance(extract(model, p)[1]) > model.config.ood_threshold).float().mean() >= 0.9


def test_evaluate_reports_each_source_and_sequence(tmp_path, tiny_model_dir, capsys):
    kaggle = write_class_folders(tmp_path / "kaggle", per_class=2)
    lgg = write_lgg_like(tmp_path / "lgg", patients=2)
    code = evaluate.main(["--data", str(kaggle), "--data", str(lgg), "--model", str(tiny_model_dir),
                          "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert code == 0 and "by source and sequence" in out
    figures = json.loads((tmp_path / "f.json").read_text())
    assert set(figures["groups"]) == {"kaggle", "lgg/flair", "lgg/t1"}
    assert figures["groups"]["lgg/flair"]["n"] == 6
    assert sum(g["n"] for g in figures["groups"].values()) == figures["n"]
    assert all(0 <= g["ece"] <= 1 for g in figures["groups"].values())  # calibration per source (Kaggle's, say)
    assert evaluate.main(["--data", str(kaggle), "--model", str(tiny_model_dir), "--json", str(tmp_path / "k.json")]) == 0
    alone = json.loads((tmp_path / "k.json").read_text())
    assert alone["groups"]["kaggle"]["ece"] == pytest.approx(alone["ece"])  # one group: the pooled figure


def test_weights_licence_follows_the_training_data():
    from brain_tumor.hub import weights_licence

    assert weights_licence(["brain-tumor-mri"]) == "cc-by-4.0"
    assert weights_licence(["brain-tumor-mri", "lgg-segmentation/flair"]) == "cc-by-nc-sa-4.0"
    assert weights_licence(["mri-44class-half/t2"]) == "cc-by-nc-sa-4.0"
    assert weights_licence(["brain-tumor-mri", "hospital-x"]) == "other"
