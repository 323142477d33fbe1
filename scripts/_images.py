"""The images an evaluation scores: a model folder's validation split, or a plain folder of class folders.

The split is the model folder's split.json, read by brain_tumor.splits (read_split, previous_sides).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from brain_tumor.datasets import Collection, read_class_folders
from brain_tumor.splits import read_split

SPLIT_HELP = "a model folder or its split.json: the validation images it lists, under the data roots it names"


def split_file(split: str) -> Path:
    """The split.json of ``split`` (a model folder, or the file itself)."""
    path = Path(split)
    path = path if path.suffix == ".json" else path / "split.json"
    if not path.is_file():
        raise ValueError(f"no split.json at {path}: give a model folder written by train.py, or its split.json")
    return path


def is_split(path: str) -> bool:
    """Whether ``path`` is a split.json or a model folder holding one (else: a folder of images)."""
    return Path(path).suffix == ".json" or (Path(path) / "split.json").is_file()


def split_images(split: str, validation: bool = True) -> Collection:
    """The validation (or the training) images of a model folder's split.json."""
    col, is_val = read_split(str(split_file(split).parent))
    return col.subset(is_val if validation else ~is_val)


def labelled_images(predictor, split: Optional[str] = None,
                    data: Optional[str] = None) -> tuple[list[Path], np.ndarray, list[str]]:
    """The images to score, each one's class as an index into the model's classes, and each one's group
    ('source/sequence'): the class folders of ``data`` if given (one group, the folder's name), else the validation
    images of ``split`` (default: the model's own folder). Images of a class the model does not know are left out."""
    if data:
        folder = read_class_folders(data)
        paths, classes = folder.paths, [folder.classes[k] for k in folder.labels]
        groups = [Path(data).name or str(data)] * len(paths)
    else:
        col = split_images(split or predictor.source)
        paths, classes, groups = col.paths, col.classes, col.groups()
    known = [i for i, c in enumerate(classes) if c in predictor.classes]
    if not known:
        raise ValueError(f"no images of the model's classes {predictor.classes} in {data or split or predictor.source}")
    return ([paths[i] for i in known], np.array([predictor.classes.index(classes[i]) for i in known], dtype=int),
            [groups[i] for i in known])


def scored_images(description: str, argv: Optional[Sequence[str]] = None):
    """The command line every evaluation of labelled images shares (--model, --split, --data, --json), parsed:
    (arguments, the Predictor, the images to score, each one's class index, each one's group) -- see
    labelled_images."""
    from brain_tumor.inference import Predictor

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", default=None)
    ap.add_argument("--split", metavar="MODEL|SPLIT_JSON", help=SPLIT_HELP + " (default: the --model folder's)")
    ap.add_argument("--data", metavar="DIR", help="a plain folder of class folders to score instead")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    predictor = Predictor(args.model)
    paths, y, groups = labelled_images(predictor, args.split, args.data)
    return args, predictor, paths, y, groups
