"""Dataset layouts, the one preprocessing path, and the leakage-aware split."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from brain_tumor.preprocess import (apply_crop, bright_margins, head_crop, head_mask, prepare, thumbnail, to_tensor,
                                   uncrop)
from brain_tumor.datasets import find_splits, read_class_folders
from brain_tumor.decode import read_image
from brain_tumor.splits import grouped_split, near_duplicate_groups
from conftest import CLASSES, synthetic_slice, write_class_folders


def test_class_folder_layout(class_folders):
    splits = find_splits(class_folders)
    assert list(splits) == ["train"]
    assert splits["train"].classes == CLASSES
    assert len(splits["train"]) == 16
    assert sorted(set(splits["train"].labels)) == [0, 1, 2, 3]


def test_kaggle_layout_with_training_and_testing(tmp_path):
    write_class_folders(tmp_path / "Training", per_class=3)
    write_class_folders(tmp_path / "Testing", per_class=2, seed=7)
    splits = find_splits(tmp_path)
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == 12 and len(splits["test"]) == 8
    assert splits["test"].classes == CLASSES


def test_yes_no_layout_maps_to_tumor_and_notumor(tmp_path):
    write_class_folders(tmp_path / "brain_tumor_dataset", classes=["yes", "no"], per_class=3)
    folder = read_class_folders(tmp_path / "brain_tumor_dataset")
    assert folder.classes == ["notumor", "tumor"]
    names = [p.parent.name for p, y in zip(folder.paths, folder.labels) if folder.classes[y] == "tumor"]
    assert set(names) == {"yes"}


def test_aliases_are_canonicalised(tmp_path):
    write_class_folders(tmp_path, classes=["glioma_tumor", "no_tumor"], per_class=2)
    assert read_class_folders(tmp_path).classes == ["glioma", "notumor"]


def test_one_class_folder_is_refused(tmp_path):
    write_class_folders(tmp_path, classes=["glioma"], per_class=2)
    with pytest.raises(ValueError, match="at least two class folders"):
        find_splits(tmp_path)


def test_head_crop_removes_border_and_size():
    img = synthetic_slice(1, size=200)
    framed = np.full((300, 260), 0, np.uint8)
    framed[50:250, 30:230] = img
    a, _ = prepare(img, 64)
    b, crop = prepare(framed, 64)
    # the same head, whatever the canvas around it: the prepared images nearly agree
    assert np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1] > 0.95
    assert crop.side < 260
    mask = head_mask(framed)
    assert mask[150, 130] and not mask[5, 5]


def test_white_page_frame_is_background():
    """A slice pasted on a white page (a paper figure, a film photographed on its frame): the frame is not head,
    even where the head touches it, and the model sees the slice as it would without the page."""
    img = synthetic_slice(3, size=200)
    img[150:, 60:140] = 120  # the neck runs off the slice's lower edge
    page = cv2.copyMakeBorder(img, 30, 30, 40, 40, cv2.BORDER_CONSTANT, value=245)
    cv2.putText(page, "R", (48, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 255, 2)  # a film's side letter
    cv2.putText(page, "Fig. 2", (4, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 0, 2)  # a label on the page itself
    assert bright_margins(page) == (30, 30, 40, 40) and bright_margins(img) == (0, 0, 0, 0)
    a, _ = prepare(img, 64)
    b, crop = prepare(page, 64)
    assert np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1] > 0.95
    assert crop.side < 250 and b[0].max() < 100  # not the page: no white line along the top
    mask = head_mask(page)
    assert mask[130, 140] and not mask[5, 5] and not mask[:27].any()  # (the mask is made at 256 px: a pixel or so)


def test_uncrop_maps_back_to_original_grid():
    img = synthetic_slice(3, size=120)
    canvas = np.zeros((150, 220), np.uint8)
    canvas[10:130, 60:180] = img
    prepared, crop = prepare(canvas, 64)
    heat = np.zeros((64, 64), np.float32)
    heat[28:36, 28:36] = 1.0  # centre of the prepared image
    back = uncrop(heat, crop)
    assert back.shape == canvas.shape
    y, x = np.unravel_index(back.argmax(), back.shape)
    assert abs(y - 70) < 12 and abs(x - 120) < 12
    assert back[:, :40].max() == 0  # nothing outside the crop


def test_apply_crop_pads_outside_the_image():
    img = np.full((10, 10), 200, np.uint8)
    crop = head_crop(img)
    out = apply_crop(img, crop, 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8


def test_to_tensor_shape_and_normalisation():
    x = to_tensor(np.zeros((2, 32, 32), np.uint8))
    assert tuple(x.shape) == (2, 3, 32, 32)
    assert abs(float(x[0, 0, 0, 0]) - (-0.485 / 0.229)) < 1e-5


def test_near_duplicates_grouped_and_never_straddle():
    rng = np.random.default_rng(0)
    base = [cv2.GaussianBlur(rng.integers(0, 255, (64, 64)).astype(np.uint8), (9, 9), 0) for _ in range(20)]
    images, labels = [], []
    for i, img in enumerate(base):
        images.append(img)
        labels.append(i % 2)
        if i < 8:  # a re-saved near-twin of the first eight
            twin = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
            images.append(twin)
            labels.append(i % 2)
    thumbs = np.stack([thumbnail(im) for im in images])
    groups = near_duplicate_groups(thumbs, 0.95)
    assert len(set(groups)) == 20  # twins join their original; distinct images stay apart
    twins = [(2 * i, 2 * i + 1) for i in range(8)]
    assert all(groups[a] == groups[b] for a, b in twins)
    for seed in range(5):
        is_val = grouped_split(groups, labels, 0.3, seed)
        assert 0 < is_val.sum() < len(is_val)
        for g in set(groups):
            assert len(set(is_val[groups == g])) == 1, "a near-duplicate group straddles train and validation"
    assert (grouped_split(groups, labels, 0.3, 1) == grouped_split(groups, labels, 0.3, 1)).all()


def test_distinct_images_are_not_grouped():
    rng = np.random.default_rng(1)
    thumbs = rng.normal(size=(30, 1024)).astype(np.float32)
    assert len(set(near_duplicate_groups(thumbs, 0.95))) == 30


def test_data_cli_reports_counts_and_duplicates(class_folders, capsys):
    from brain_tumor.data import main

    # a duplicate of one image under another class makes a cross-class group
    cv2.imwrite(str(class_folders / "notumor" / "copy.png"), cv2.imread(str(class_folders / "glioma" / "glioma_0.png")))
    assert main([str(class_folders)]) == 0
    out = capsys.readouterr().out
    assert "glioma" in out and "near-duplicates" in out
    assert "1 groups holding 2" in out


def test_data_cli_writes_augmentation_grid(tmp_path, class_folders):
    from brain_tumor.augment import main

    out = tmp_path / "grid.png"
    assert main([str(class_folders / "glioma" / "glioma_0.png"), "--img-size", "64", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_preprocessing_settings_travel_with_the_checkpoint(tmp_path):
    """The crop's numbers are data in config.json: a model trained with another margin is served with it, and
    an older config.json without them is served with today's values."""
    import json

    from brain_tumor.config import PREPROCESSING
    from brain_tumor.preprocess import prepare, preprocessing_settings
    from brain_tumor.inference import Predictor
    from brain_tumor.model import ModelLoadError, create_model, load_model, save_model
    from conftest import synthetic_slice

    gray = np.zeros((120, 160), np.uint8)
    gray[30:90, 50:110] = synthetic_slice(3, 60) // 2 + 100
    folder = save_model(create_model(["glioma", "notumor"], init="scratch", img_size=64).eval(), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert {k: config["preprocessing"][k] for k in PREPROCESSING} == PREPROCESSING
    default_view, default_crop = Predictor(str(folder)).prepare(gray)
    config["preprocessing"]["crop_margin"] = 0.25
    (folder / "config.json").write_text(json.dumps(config))
    wide_view, wide_crop = Predictor(str(folder)).prepare(gray)
    assert wide_crop.side > default_crop.side
    assert wide_crop == prepare(gray, 64, {"crop_margin": 0.25})[1]
    for key in PREPROCESSING:  # an older config: the words only
        del config["preprocessing"][key]
    (folder / "config.json").write_text(json.dumps(config))
    old_view, old_crop = Predictor(str(folder)).prepare(gray)
    assert old_crop == default_crop and (old_view == default_view).all()
    assert preprocessing_settings({"decode": "words"}) == PREPROCESSING
    config["preprocessing"]["crop_margin"] = -1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="crop_margin"):
        load_model(str(folder))


def test_pack_writes_a_small_copy_that_reads_as_the_same_root(tmp_path):
    from brain_tumor.data import pack
    from brain_tumor.datasets import read_root

    src = tmp_path / "lgg"
    for seq in ("flair", "t1"):
        for cls in ("glioma", "notumor"):
            (src / seq / cls).mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(src / seq / cls / f"case{i}_{3 + (cls == 'glioma')}.png"),
                            synthetic_slice(i, 300, tumor=cls == "glioma"))
    (src / "masks").mkdir()
    mask = np.zeros((300, 300), np.uint8)
    mask[100:160, 120:200] = 255
    for i in range(2):
        cv2.imwrite(str(src / "masks" / f"case{i}_4.png"), mask)
    (src / "flair" / "glioma" / "case0_4.txt").write_text("0 0.5 0.43 0.27 0.2\n")
    (src / "slices.csv").write_text("case,slice\ncase0,3\n")

    n, size = pack(src, tmp_path / "small" / "lgg", max_side=96, quality=70)
    orig, small = read_root(str(src))[0], read_root(str(tmp_path / "small" / "lgg"))[0]
    assert n == 8 and size < sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert [orig.relpath(i) for i in range(len(orig))] == [small.relpath(i) for i in range(len(small))]
    assert small.patients == orig.patients and [m is None for m in small.masks] == [m is None for m in orig.masks]
    packed = read_image(tmp_path / "small" / "lgg" / "t1" / "glioma" / "case1_4.png")
    packed_mask = read_image(tmp_path / "small" / "lgg" / "masks" / "case1_4.png")
    assert packed.shape == packed_mask.shape == (96, 96)
    assert 0.04 < (packed_mask > 127).mean() < 0.07  # the 60 x 80 box of 300 x 300, shrunk with its slice
    with pytest.raises(ValueError, match="inside the source"):
        pack(src, src / "copy")
