"""scripts/shortcut_proxy.py: the skull-stripped view of a slice, and the images it scores grouped by source."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import torch

from brain_tumor.datasets import read_roots
from brain_tumor.inference import Predictor
from brain_tumor.splits import write_split
from conftest import write_class_folders
from scripts._images import labelled_images
from scripts.shortcut_proxy import skull_stripped


def test_skull_stripped_zeroes_the_scalp_and_keeps_the_brain():
    head = np.zeros((200, 200), np.uint8)
    cv2.circle(head, (100, 100), 90, 220, -1)  # skull and scalp: a bright ring 6 px thick (3% of the side) ...
    cv2.circle(head, (100, 100), 84, 90, -1)  # ... around the brain
    cv2.circle(head, (100, 100), 12, 200, -1)  # a bright lesion inside it
    ring = np.hypot(*np.mgrid[:200, :200] - 100)
    for seed in range(5):  # the width taken off is drawn (6-12% of the side, as training draws it)
        torch.manual_seed(seed)
        out = skull_stripped(head, None)
        assert out.shape == head.shape and out.dtype == np.uint8
        assert out[(ring > 88) & (ring < 90)].max() == 0  # the skull is gone ...
        assert out[(ring > 84) & (ring < 90)].mean() < 0.15 * 220  # ... at most its inner rim blurred in
        assert (out[ring < 50] == head[ring < 50]).all()  # the brain and its lesion are untouched
        assert out[ring >= 95].max() == 0


def test_scored_images_carry_their_source_and_sequence(tmp_path, tiny_model_dir):
    kaggle = write_class_folders(tmp_path / "kaggle", per_class=2)
    lgg = tmp_path / "lgg"
    write_class_folders(lgg / "flair", classes=["glioma", "notumor"], per_class=2, seed=7)
    col, _ = read_roots([str(kaggle), str(lgg)])
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_split(model / "split.json", col, np.ones(len(col), bool), np.arange(len(col)))
    predictor = Predictor(str(model))
    paths, y, groups = labelled_images(predictor)
    assert len(paths) == len(y) == len(groups) == 12
    assert sorted(set(groups)) == ["kaggle", "lgg/flair"]
    for path, label, group in zip(paths, y, groups):
        assert path.parent.name == predictor.classes[label]
        assert group == ("lgg/flair" if "lgg" in path.parts else "kaggle")
    _, _, plain = labelled_images(predictor, data=str(kaggle))
    assert plain == ["kaggle"] * 8
