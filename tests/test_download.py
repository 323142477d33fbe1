"""python -m brain_tumor.data download: kagglehub mocked, fake downloads in each set's own layout, converted to
layouts train.py reads; a clear message offline."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from brain_tumor import data
from brain_tumor.datasets import read_root, read_mask
from conftest import synthetic_slice


def fake_kagglehub(monkeypatch, folders: dict[str, Path], calls: list):
    module = types.ModuleType("kagglehub")

    def dataset_download(handle):
        calls.append(handle)
        if handle not in folders:
            raise ConnectionError("Failed to resolve 'www.kaggle.com'")
        return str(folders[handle])

    module.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", module)


def write_jpg(path: Path, seed: int, tumor: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), synthetic_slice(seed, 64, tumor))


def test_brain_tumor_mri_keeps_training_and_testing(tmp_path, monkeypatch, capsys):
    src = tmp_path / "cache" / "versions" / "1"
    for split in ("Training", "Testing"):
        for i, c in enumerate(("glioma", "meningioma", "notumor", "pituitary")):
            write_jpg(src / split / c / f"{split[:2]}-{i}.jpg", i, c != "notumor")
    calls = []
    fake_kagglehub(monkeypatch, {"masoudnickparvar/brain-tumor-mri-dataset": src}, calls)
    out = tmp_path / "data" / "kaggle"
    assert data.main(["download", "brain-tumor-mri", str(out)]) == 0
    assert calls == ["masoudnickparvar/brain-tumor-mri-dataset"] and "wrote 8 files" in capsys.readouterr().out
    train, test = read_root(str(out))
    assert sorted(set(train.classes)) == ["glioma", "meningioma", "notumor", "pituitary"] and len(test.paths) == 4


def test_lgg_is_split_into_sequences_with_masks_and_boxes(tmp_path, monkeypatch):
    case = tmp_path / "cache" / "kaggle_3m" / "TCGA_CS_4941_19960909"
    case.mkdir(parents=True)
    for n, tumour in [(1, False), (2, True), (3, True)]:
        rgb = np.stack([synthetic_slice(n + k, 64, tumour) for k in range(3)], -1)  # T1, FLAIR, T1+contrast
        cv2.imwrite(str(case / f"{case.name}_{n}.tif"), rgb[..., ::-1])
        mask = np.zeros((64, 64), np.uint8)
        if tumour:
            mask[20:30, 30:44] = 255
        cv2.imwrite(str(case / f"{case.name}_{n}_mask.tif"), mask)
    fake_kagglehub(monkeypatch, {"mateuszbuda/lgg-mri-segmentation": tmp_path / "cache"}, [])
    out = tmp_path / "lgg"
    assert data.main(["download", "lgg-segmentation", str(out)]) == 0
    train, _ = read_root(str(out))
    assert set(train.sequences) == {"flair", "t1", "t1ce"} and len(train.paths) == 9
    assert len(set(train.patients)) == 1  # one case: grouped by patient
    flair = cv2.imread(str(out / "flair" / "glioma" / f"{case.name}_2.png"), cv2.IMREAD_GRAYSCALE)
    assert (flair == synthetic_slice(3, 64, True)).all()  # channel 1 is FLAIR
    box = [float(v) for v in (out / "flair" / "glioma" / f"{case.name}_2.txt").read_text().split()[1:]]
    assert box == pytest.approx([37 / 64, 25 / 64, 14 / 64, 10 / 64], abs=1e-6)
    assert read_mask(out / "masks" / f"{case.name}_2.png", (64, 64)).sum() > 0


def test_44class_keeps_our_classes_and_sequences(tmp_path, monkeypatch):
    src = tmp_path / "cache"
    for folder, seed in [("Glioblastoma T1C+", 1), ("Astrocitoma T2", 2), ("Meningioma T1", 3), ("_NORMAL T2", 4),
                         ("Schwannoma T1", 5)]:
        write_jpg(src / "Brain" / folder / "a.jpg", seed)
    fake_kagglehub(monkeypatch, {"fernando2rad/brain-tumor-mri-images-44c": src}, [])
    out = tmp_path / "44"
    assert data.main(["download", "mri-44class", str(out)]) == 0
    found = sorted(p.relative_to(out).parent.as_posix() for p in out.rglob("*.jpg"))
    assert found == ["t1/meningioma", "t1ce/glioma", "t2/glioma", "t2/notumor"]  # the schwannoma left out


def test_offline_and_bad_targets_give_a_message(tmp_path, monkeypatch, capsys):
    fake_kagglehub(monkeypatch, {}, [])
    assert data.main(["download", "brain-tumor-mri", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "could not fetch masoudnickparvar/brain-tumor-mri-dataset" in err and "network" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert data.main(["download", "brain-tumor-mri", str(full)]) == 2
    assert "not empty" in capsys.readouterr().err and (full / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):
        data.main(["download", "imagenet", str(tmp_path / "y")])
