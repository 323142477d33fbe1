"""End to end on tiny data: train -> save -> load -> predict, resume, layouts, predict/evaluate CLIs."""
from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
import torch

import train
from brain_tumor import evaluate, metrics, predict
from brain_tumor.config import TrainConfig
from brain_tumor.model import load_model
from conftest import CLASSES, write_class_folders

TINY = ["--img-size", "64", "--epochs", "2", "--batch-size", "8", "--init", "scratch", "--backbone-lr", "same",
        "--val-fraction", "0.25", "--patience", "0"]


@pytest.mark.slow
def test_train_save_load_predict_round_trip(class_folders, tmp_path, capsys):
    out = tmp_path / "model"
    assert train.main(["--data", str(class_folders), "--out", str(out), *TINY]) == 0
    for name in ("model.safetensors", "config.json", "README.md", "training_curves.png", "split.json"):
        assert (out / name).exists(), name
    log = capsys.readouterr().out
    assert len(re.findall(r"^epoch +\d+ ", log, re.M)) == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["class_names"] == CLASSES and cfg["img_size"] == 64
    assert cfg["metrics"]["validation"]["n"] > 0 and 0.05 < cfg["temperature"] < 20
    assert "python train.py" in cfg["training"]["command"]
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == 16
    card = (out / "README.md").read_text()
    assert "not a diagnostic device" in card and "grouped" in card

    model = load_model(str(out))
    assert model.targets == CLASSES
    code = predict.main([str(class_folders), "--model", str(out), "--json"])
    records = json.loads(capsys.readouterr().out)
    assert code == 0 and len(records) == 16
    for r in records:
        assert set(r) >= {"path", "label", "probabilities", "tumor_probability"}
        assert r["label"] in CLASSES and abs(sum(r["probabilities"].values()) - 1) < 1e-4
        assert abs(r["tumor_probability"] - (1 - r["probabilities"]["notumor"])) < 1e-5


@pytest.mark.slow
def test_bf16_and_dilated_training_runs_and_is_recorded(class_folders, tmp_path, monkeypatch):
    from brain_tumor import config, engine

    assert engine.use_bf16("bf16") and not engine.use_bf16("fp32")
    monkeypatch.setattr(config, "native_bf16", lambda: False)
    assert not engine.use_bf16("auto")  # emulated bf16 is slower: auto keeps fp32 there
    with pytest.raises(ValueError, match="precision"):
        engine.use_bf16("fp8")
    out = tmp_path / "model"
    assert train.main(["--data", str(class_folders), "--out", str(out), *TINY, "--precision", "bf16",
                       "--output-stride", "16"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["forward_precision"] == "bf16 autocast" and cfg["output_stride"] == 16
    model = load_model(str(out))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert model.net.layer4[0].conv1.stride == (1, 1)


@pytest.mark.slow
def test_interrupted_training_resumes_from_the_last_epoch(class_folders, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["--data", str(class_folders), "--out", str(out), *TINY]
    args[args.index("--epochs") + 1] = "1"
    assert train.main(args) == 0
    capsys.readouterr()
    args[args.index("--epochs") + 1] = "2"
    assert train.main(args) == 0
    log = capsys.readouterr().out
    assert "resuming" in log and "after epoch 1" in log
    assert re.findall(r"^epoch +(\d+) ", log, re.M) == ["2"]
    history = json.loads((out / "config.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def test_weight_average_follows_its_decay_and_batch_norm_statistics():
    from brain_tumor.engine import make_ema
    from brain_tumor.model import create_model

    model = create_model(CLASSES, init="scratch", img_size=32)
    assert make_ema(model, 0.0) is None
    ema = make_ema(model, 0.75)
    fc0 = model.net.fc[-1].weight.detach().clone()
    bn0 = model.net.bn1.running_mean.detach().clone()
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.net.fc[-1].weight.add_(1.0)
        model.net.bn1.running_mean.add_(2.0)
    ema.update_parameters(model)
    avg = ema.module
    assert torch.allclose(avg.net.fc[-1].weight, fc0 + 0.25, atol=1e-6)
    assert torch.allclose(avg.net.bn1.running_mean, bn0 + 0.5, atol=1e-6)
    assert torch.allclose(model.net.fc[-1].weight, fc0 + 1.0)  # the trained weights are left alone


@pytest.mark.slow
def test_training_with_a_weight_average_saves_the_average_and_resumes(class_folders, tmp_path, capsys):
    from safetensors.torch import load_file

    from brain_tumor.engine import state_file

    out = tmp_path / "model"
    args = ["--data", str(class_folders), "--out", str(out), *TINY, "--ema", "0.9"]
    args[args.index("--epochs") + 1] = "1"
    assert train.main(args) == 0
    state = torch.load(state_file(out), weights_only=True)
    saved = load_file(str(out / "model.safetensors"))
    key = "fc.1.weight"
    averaged, raw = state["ema"]["module.net." + key], state["model"]["net." + key]
    lag = (averaged - raw).abs().max()
    assert lag > 1e-4  # the average lags the trained weights
    assert (saved[key].float() - averaged).abs().max() < lag / 4  # and is what was saved (fp16)
    assert json.loads((out / "config.json").read_text())["training"]["config"]["ema"] == 0.9
    capsys.readouterr()
    args[args.index("--epochs") + 1] = "2"
    assert train.main(args) == 0
    assert "after epoch 1" in capsys.readouterr().out
    args[args.index("--epochs") + 1] = "3"
    state = torch.load(state_file(out), weights_only=True)
    state["ema"] = None
    torch.save(state, state_file(out))
    assert train.main(args) == 2  # a state without an average cannot resume one
    assert "saved without --ema" in capsys.readouterr().err
    state["ema"] = {"n_averaged": torch.tensor(1)}
    torch.save(state, state_file(out))
    args[args.index("--ema") + 1] = "0"
    assert train.main(args) == 2  # nor one with an average a run without
    assert "saved with --ema" in capsys.readouterr().err


def test_distillation_term_counts_only_its_rows_and_pulls_toward_the_teacher():
    from brain_tumor.engine import distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(6, 4)
    on = torch.tensor([True, True, False, False, True, False])
    student = teacher.clone()
    student[~on] += 5 * torch.randn(int((~on).sum()), 4)  # rows it does not score may disagree freely
    assert distillation_loss(student, teacher, on, 2.0).abs() < 1e-6
    assert distillation_loss(student, teacher, torch.zeros(6, dtype=torch.bool), 2.0) == 0
    s = torch.zeros(6, 4, requires_grad=True)
    first = distillation_loss(s, teacher, on, 2.0)
    assert first > 0
    first.backward()
    assert torch.all(s.grad[~on] == 0) and s.grad[on].abs().sum() > 0
    with torch.no_grad():
        after = distillation_loss(s - 1.0 * s.grad, teacher, on, 2.0)
    assert after < first  # a step down the gradient moves the student's answers toward the teacher's


def test_the_anchor_scores_the_slices_the_distill_teacher_does_not():
    from brain_tumor.config import TrainConfig
    from brain_tumor.engine import make_teachers
    from brain_tumor.model import create_model

    groups = ["kaggle", "lgg/flair", "lgg/t1", "kaggle"]
    a, b = create_model(CLASSES, init="scratch", img_size=32), create_model(CLASSES[::-1], init="scratch", img_size=32)
    cfg = TrainConfig(data=["x"], distill="a", distill_source="kaggle", distill_weight=3, anchor_weight=0.5)
    kd, anchor = make_teachers(a, b, cfg, CLASSES, groups, torch.device("cpu"))
    assert kd.on.tolist() == [True, False, False, True] and anchor.on.tolist() == [False, True, True, False]
    assert (kd.weight, anchor.weight) == (3, 0.5)
    assert [CLASSES[::-1][i] for i in anchor.order] == CLASSES  # the anchor's logits read in the student's order
    assert make_teachers(None, None, cfg, CLASSES, groups, torch.device("cpu")) == []
    (only,) = make_teachers(None, b, cfg, CLASSES, groups, torch.device("cpu"))
    assert only.on.all()  # without --distill the anchor scores every slice
    with pytest.raises(ValueError, match="already scores every training image"):
        make_teachers(a, b, TrainConfig(data=["x"], anchor_weight=1), CLASSES, groups, torch.device("cpu"))
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(data=["x"], anchor_weight=-1)


@pytest.mark.slow
def test_training_with_a_teacher_learns_its_answers_on_its_source_only(class_folders, tmp_path, capsys):
    from brain_tumor.augment import augment_appearance, augment_geometry
    from brain_tumor.model import create_model, save_model

    torch.manual_seed(1)
    teacher_dir = tmp_path / "teacher"
    save_model(create_model(list(reversed(CLASSES)), init="scratch", img_size=48).eval(), teacher_dir)
    other = tmp_path / "other"
    write_class_folders(other, classes=CLASSES[:2])
    out = tmp_path / "model"
    args = ["--data", str(class_folders), "--data", str(other), "--out", str(out), *TINY, "--distill", str(teacher_dir),
            "--distill-source", class_folders.name, "--distill-weight", "2", "--strip-p", "0"]
    args[args.index("--epochs") + 1] = "1"
    assert train.main(args) == 0
    log = capsys.readouterr().out
    assert re.search(r"distillation from .* on \d+ of \d+ training images", log)
    n_on, n_all = map(int, re.search(r"on (\d+) of (\d+) training images", log).groups())
    assert 0 < n_on < n_all  # the other root's slices are not the teacher's
    row = json.loads((out / "config.json").read_text())["training"]["history"][0]
    assert row["train_distill_loss"] > 0
    cfg = json.loads((out / "config.json").read_text())["training"]["config"]
    assert cfg["distill"] == str(teacher_dir) and cfg["distill_weight"] == 2
    assert f"the answers of `{teacher_dir}` (frozen) were learned too (weight 2" in (out / "README.md").read_text()

    args[args.index("--distill-source") + 1] = "nowhere"
    assert train.main(args + ["--out", str(tmp_path / "b")]) == 2
    assert "names no training images" in capsys.readouterr().err
    save_model(create_model(["a", "b"], init="scratch", img_size=48).eval(), tmp_path / "two")
    args[args.index("--distill") + 1] = str(tmp_path / "two")
    assert train.main(args + ["--out", str(tmp_path / "c")]) == 2
    assert "classes" in capsys.readouterr().err

    # --anchor-weight: the --init model scores the other root's slices; it must be a model folder
    args[args.index("--distill") + 1] = str(teacher_dir)
    args[args.index("--distill-source") + 1] = class_folders.name
    assert train.main(args + ["--out", str(tmp_path / "d"), "--anchor-weight", "1"]) == 2
    assert "--init must be a model folder" in capsys.readouterr().err
    args[args.index("--init") + 1] = str(teacher_dir)
    assert train.main(args + ["--out", str(tmp_path / "e"), "--anchor-weight", "0.5"]) == 0
    log = capsys.readouterr().out
    (n1, a1), (n2, a2) = [tuple(map(int, m)) for m in re.findall(r"on (\d+) of (\d+) training images", log)]
    assert a1 == a2 and n1 + n2 == a1 and n1 == n_on  # the two teachers share the slices out
    assert "weight 0.5" in log
    assert f"the answers of the initial weights `{teacher_dir}` (frozen) were learned too (weight 0.5)" in \
        (tmp_path / "e" / "README.md").read_text()

    # the teacher's view is the student's before contrast and artefacts: the same geometry, split in two
    x, g1, g2 = torch.rand(4, 1, 32, 32), torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    from brain_tumor.augment import augment
    torch.manual_seed(2)
    whole = augment(x, g1, mri=True, strip_p=0.5)
    torch.manual_seed(2)
    weak, _, stripped = augment_geometry(x, g2, mri=True, strip_p=0.5)
    assert torch.equal(augment_appearance(weak, g2, mri=True), whole) and stripped.dtype == torch.bool


@pytest.mark.slow
def test_kaggle_layout_scores_the_testing_split(tmp_path):
    root = tmp_path / "kaggle"
    write_class_folders(root / "Training", per_class=4)
    write_class_folders(root / "Testing", per_class=2, seed=50)
    out = tmp_path / "model"
    assert train.main(["--data", str(root), "--out", str(out), *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["metrics"]["test"]["n"] == 8
    split = json.loads((out / "split.json").read_text())
    assert split["roots"] == {"kaggle": str(root)}
    assert all(p.startswith("kaggle/Training/") for p in split["val"])  # source/path inside the root


@pytest.mark.slow
def test_yes_no_layout_trains_a_two_class_model(tmp_path):
    root = write_class_folders(tmp_path / "brain_tumor_dataset", classes=["yes", "no"], per_class=8)
    out = tmp_path / "model"
    assert train.main(["--data", str(root), "--out", str(out), *TINY]) == 0
    assert load_model(str(out)).targets == ["notumor", "tumor"]


def test_bad_training_arguments_give_a_message(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m"), *TINY]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "-1", "--lr must be > 0"), ("--backbone-lr", "0", "--backbone-lr must be > 0"),
    ("--dup-threshold", "1.5", "--dup-threshold must be in (0, 1]"), ("--curve-p", "2", "--curve-p must be in [0, 1]"),
    ("--label-smoothing", "1", "--label-smoothing must be in [0, 1)"), ("--patience", "-1", "--patience must be >= 0"),
    ("--weight-decay", "-0.1", "--weight-decay must be >= 0"), ("--img-size", "8", "--img-size must be at least 32"),
])
def test_every_training_option_is_checked_by_the_config(tmp_path, capsys, flag, value, words):
    with pytest.raises(SystemExit):  # the flag named in the message, before any data is read
        train.main(["--data", str(tmp_path / "missing"), flag, value])
    assert words in capsys.readouterr().err
    field = flag[2:].replace("-", "_")  # direct callers of engine.fit get the same rule from TrainConfig
    number = int(value) if field in ("img_size", "patience") else float(value)
    with pytest.raises(ValueError, match=field):
        TrainConfig(data=[str(tmp_path)], **{field: number})


def test_predict_reports_errors_in_place_and_writes_heatmaps(class_folders, tiny_model_dir, tmp_path, capsys):
    (class_folders / "glioma" / "broken.png").write_text("not an image")
    wide = np.zeros((50, 90), np.uint8)
    cv2.ellipse(wide, (45, 25), (30, 20), 0, 0, 360, 120, -1)
    cv2.imwrite(str(class_folders / "notumor" / "wide.png"), wide)
    maps = tmp_path / "maps"
    code = predict.main([str(class_folders), "--model", str(tiny_model_dir), "--json", "--heatmaps", str(maps)])
    records = json.loads(capsys.readouterr().out)
    assert code == 2
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.png") and set(errors[0]) == {"path", "error"}
    assert len(records) == 18 and [r["path"] for r in records] == sorted(r["path"] for r in records)
    heat = np.load(maps / "notumor" / "wide.npy")
    assert heat.shape == (50, 90) and heat.dtype == np.float32
    assert 0 <= heat.min() and heat.max() <= 1
    assert (maps / "glioma" / "glioma_0.npy").exists() and not (maps / "glioma" / "broken.npy").exists()


def test_predict_table_and_exit_code_zero(class_folders, tiny_model_dir, capsys):
    assert predict.main([str(class_folders / "glioma" / "glioma_0.png"), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "glioma_0.png" in out and "P(tumour)" in out


def test_predict_with_a_missing_model_fails_cleanly(tmp_path, capsys):
    assert predict.main([str(tmp_path), "--model", str(tmp_path / "none")]) == 2
    assert "model not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ evaluation

def test_metrics_on_known_answers():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    cm = metrics.confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = metrics.per_class_scores(cm, ["a", "b", "c"])
    assert s["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert s["b"]["precision"] == pytest.approx(2 / 3) and s["c"]["recall"] == 0.5
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # a model that always says 0.9 but is right 60% of the time is off by 0.3
    assert metrics.expected_calibration_error([0.9] * 10, [1] * 6 + [0] * 4) == pytest.approx(0.3)
    assert metrics.expected_calibration_error([0.7] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.0)
    assert metrics.error_at_coverage([0.99, 0.9, 0.8, 0.6], [1, 1, 1, 0], 0.75) == 0.0
    assert metrics.error_at_coverage([0.99, 0.9, 0.8, 0.6], [1, 1, 1, 0], 1.0) == 0.25
    t = metrics.tumor_scores([1, 1, 0, 0], [0.9, 0.2, 0.1, 0.7])
    assert t["tumor_sensitivity"] == 0.5 and t["tumor_specificity"] == 0.5


def test_heatmap_scores_hit_and_miss():
    heat = np.zeros((100, 100), np.float32)
    heat[10, 10] = 1.0
    box = evaluate.box_mask((100, 100), (0.7, 0.7, 0.2, 0.2))  # x 60..80, y 60..80
    assert not evaluate.pointing_hit(heat, box) and evaluate.heat_share(heat, box) == 0.0
    heat[70, 72] = 2.0
    assert evaluate.pointing_hit(heat, box) and evaluate.heat_share(heat, box) == pytest.approx(2 / 3)


def test_evaluate_cli_on_a_tiny_set(class_folders, tiny_model_dir, tmp_path, capsys):
    # one box file for a heat-map score
    (class_folders / "glioma" / "glioma_0.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    out = tmp_path / "fig.json"
    report = tmp_path / "report"
    assert evaluate.main(["--data", str(class_folders), "--model", str(tiny_model_dir), "--json", str(out),
                          "--report", str(report)]) == 0
    f = json.loads(out.read_text())
    assert f["n"] == 16 and f["mode"] == "multiclass"
    cm = np.array(f["confusion_matrix"])
    assert cm.sum() == 16 and cm.sum(1).tolist() == [4, 4, 4, 4]
    assert f["accuracy"] == pytest.approx(np.trace(cm) / 16)
    assert set(f) >= {"per_class", "tumor_sensitivity", "tumor_specificity", "tumor_auroc", "ece", "ece_uncalibrated",
                      "error_at_90_coverage", "heat_in_head", "pointing_game", "heat_in_box"}
    assert f["n_boxes"] == 1 and 0 <= f["heat_in_head"] <= 1
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "confidence_histogram.png"):
        assert (report / name).stat().st_size > 1000
    assert "accuracy" in capsys.readouterr().out


def test_evaluate_uncalibrated_ece_reads_the_raw_scores_whatever_the_calibration(class_folders, tiny_model_dir,
                                                                                 tmp_path):
    figures = []
    for per_class in ([], [0.3, 2.0, 1.0, 5.0]):
        folder = tmp_path / f"model{len(per_class)}"
        shutil.copytree(tiny_model_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "temperature": 1.0, "class_temperature": per_class}))
        out = tmp_path / f"fig{len(per_class)}.json"
        assert evaluate.main(["--data", str(class_folders), "--model", str(folder), "--json", str(out)]) == 0
        figures.append(json.loads(out.read_text()))
    plain, scaled = figures
    assert plain["ece"] == pytest.approx(plain["ece_uncalibrated"])  # T = 1: calibration changes nothing
    assert scaled["ece_uncalibrated"] == pytest.approx(plain["ece_uncalibrated"])  # the same raw scores
    assert scaled["ece"] != pytest.approx(plain["ece"])


def test_evaluate_refuses_an_unwritable_output_before_scoring_and_names_a_bad_split(class_folders, tiny_model_dir,
                                                                                     tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("a file where a folder should be")
    scored = []
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: scored.append(1))
    for flag, path in (("--json", blocker / "fig.json"), ("--report", blocker)):
        with pytest.raises(SystemExit):
            evaluate.main(["--data", str(class_folders), "--model", str(tiny_model_dir), flag, str(path)])
        assert f"{blocker} is a file, not a folder" in capsys.readouterr().err
    assert not scored  # refused before any image was read
    monkeypatch.undo()
    bad = tmp_path / "split.json"
    bad.write_text("{not json")
    assert evaluate.main(["--data", str(class_folders), "--model", str(tiny_model_dir), "--split", str(bad)]) == 2
    assert f"cannot read the split file {bad}" in capsys.readouterr().err


def test_bf16_answers_from_the_command_lines(class_folders, tiny_model_dir, tmp_path, capsys, monkeypatch):
    """--bf16 (on any CPU here: native bf16 is assumed) answers like fp32 and says which forward pass it used."""
    from brain_tumor import inference

    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    assert predict.main([str(class_folders), "--model", str(tiny_model_dir), "--json"]) == 0
    fp32 = json.loads(capsys.readouterr().out)
    assert predict.main([str(class_folders), "--model", str(tiny_model_dir), "--json", "--bf16"]) == 0
    bf16 = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in bf16] == [r["path"] for r in fp32]
    for a, b in zip(fp32, bf16):
        assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) < 0.05
    out = tmp_path / "fig.json"
    assert evaluate.main(["--data", str(class_folders), "--model", str(tiny_model_dir), "--json", str(out),
                          "--bf16"]) == 0
    assert json.loads(out.read_text())["answer_forward"] == "bf16 autocast"
    monkeypatch.setattr(inference, "native_bf16", lambda: False)  # elsewhere the flag falls back to fp32
    assert not inference.Predictor(str(tiny_model_dir), bf16_answer=True).bf16_answer


def test_evaluate_decodes_each_file_once(class_folders, tiny_model_dir, monkeypatch):
    from brain_tumor import inference
    from brain_tumor.inference import Predictor

    calls = []
    real = inference.read_image
    monkeypatch.setattr(inference, "read_image", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    (class_folders / "glioma" / "glioma_0.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    f = evaluate.evaluate(Predictor(str(tiny_model_dir)), str(class_folders))["figures"]
    assert len(calls) == 16 and len(set(calls)) == 16  # heat maps scored on the original grid, no second decode
    assert f["n_boxes"] == 1 and f["pointing_game"] in (0.0, 1.0)


def test_evaluate_scores_the_boxes_of_each_tumour_type(class_folders, tiny_model_dir):
    from brain_tumor.inference import Predictor

    for name in ("glioma_0", "glioma_1"):  # boxes over the whole slice: every peak and all heat inside
        (class_folders / "glioma" / f"{name}.txt").write_text("0 0.5 0.5 1 1\n")
    (class_folders / "pituitary" / "pituitary_0.txt").write_text("3 0.25 0.5 0.5 1\n")
    f = evaluate.evaluate(Predictor(str(tiny_model_dir)), str(class_folders))["figures"]
    by = f["boxes_by_class"]
    assert set(by) == {"glioma", "pituitary"}
    assert by["glioma"]["n_boxes"] == 2 and by["pituitary"]["n_boxes"] == 1
    assert by["glioma"]["pointing_game"] == 1.0 and by["glioma"]["heat_in_box"] == pytest.approx(1.0)
    assert f["pointing_game"] == pytest.approx((2 * 1.0 + by["pituitary"]["pointing_game"]) / 3)
    assert "by tumour type: glioma 1.0000" in evaluate.format_figures(f)


def test_evaluate_yes_no_scores_tumour_vs_none(tmp_path, tiny_model_dir):
    root = write_class_folders(tmp_path / "yn", classes=["yes", "no"], per_class=3)
    out = tmp_path / "f.json"
    assert evaluate.main(["--data", str(root), "--model", str(tiny_model_dir), "--json", str(out), "--no-heatmaps"]) == 0
    f = json.loads(out.read_text())
    assert f["mode"] == "binary" and f["n"] == 6 and f["class_names"] == ["notumor", "tumor"]
    cm = np.array(f["confusion_matrix"])
    assert f["tumor_sensitivity"] == pytest.approx(cm[1, 1] / 3)


def test_evaluate_refuses_unknown_classes(tmp_path, tiny_model_dir, capsys):
    root = write_class_folders(tmp_path / "other", classes=["cats", "dogs"], per_class=2)
    assert evaluate.main(["--data", str(root), "--model", str(tiny_model_dir)]) == 2
    assert "match neither" in capsys.readouterr().err
