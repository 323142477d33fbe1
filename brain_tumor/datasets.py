"""Data roots: folder layouts, several roots as one collection (source, sequence, patient, masks), loading, sampling.

One root is class folders or ``Training/`` + ``Testing/`` (``find_splits``), or one level of sequence folders
above class folders (``flair/glioma/x.jpg``, as the LGG segmentation set and the teaching-case set are laid out).
Every image carries its *source* (the root's name), its *sequence* (the sequence folder's name, "" where the
root has none) and, where the file names give one, its *patient* (``<case>_<slice>.jpg``). A root may hold only
some classes; the classes of a run are the union over its roots, canonicalised through ``config.CLASS_ALIASES``.
Tumour masks (``<root>/masks/<stem>.png``) or YOLO boxes (``<stem>.txt`` beside the image) travel with their
slices for the heat-map objective and its figures. The split by patient and near-duplicate groups is
``splits.py``'s.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .config import CLASS_ALIASES, DICOM_SUFFIXES, IMAGE_SUFFIXES, canonical_class
from .metrics import box_mask
from .decode import ImageReadError, PathLike, read_image
from .preprocess import apply_crop, prepare, thumbnail

_KNOWN_CLASSES = frozenset(CLASS_ALIASES)
_CASE_SLICE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)$")


# --------------------------------------------------------------------------------------- one root's layout

@dataclass
class ImageFolder:
    """Images under class folders: paths, integer labels, and the class names (sorted folder names)."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


_SPLIT_NAMES = {"train": ("training", "train"), "test": ("testing", "test"), "val": ("validation", "val", "valid")}


def is_image_file(path: Path) -> bool:
    """Scan files by name: known image suffixes, .dcm, or no suffix (DICOM often has none)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES


def list_images(folder: PathLike) -> list[Path]:
    """Every scan file under a folder, walked recursively, in sorted order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_class_folders(root: PathLike) -> ImageFolder:
    """A root whose sub-folders are classes. Folder names are canonicalised (``glioma_tumor`` -> ``glioma``,
    ``no`` -> ``notumor``, ``yes`` -> ``tumor``) so that class names travel consistently into the checkpoint."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    by_class: dict[str, list[Path]] = {}
    for d in folders:
        files = list_images(d)
        if files:
            by_class.setdefault(canonical_class(d.name), []).extend(files)
    if len(by_class) < 2:
        raise ValueError(f"{root} needs at least two class folders holding images "
                         f"(e.g. glioma/ meningioma/ notumor/ pituitary/, or yes/ no/); found {[d.name for d in folders]}")
    classes = sorted(by_class)
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted(by_class[c]):
            paths.append(p)
            labels.append(i)
    return ImageFolder(paths, labels, classes)


def find_splits(root: PathLike) -> dict[str, ImageFolder]:
    """Read a dataset root: Kaggle style (``Training/``, ``Testing/``) or a plain root of class folders.

    Returns ``{"train": ..., "test": ...}`` for the first, ``{"train": ...}`` for the second.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    splits = {}
    for split, names in _SPLIT_NAMES.items():
        for n in names:
            if n in subdirs:
                splits[split] = read_class_folders(subdirs[n])
                break
    if splits:
        if "train" not in splits:
            raise ValueError(f"{root} has {sorted(splits)} split folders but no Training/ folder")
        return splits
    return {"train": read_class_folders(root)}


# ------------------------------------------------------------------------------------ several roots at once

@dataclass
class Collection:
    """Images of one or more roots, one entry per image in parallel lists."""

    paths: list[Path] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # canonical class name per image
    sources: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # "" where the file names give none
    masks: list[Optional[Path]] = field(default_factory=list)  # mask .png or YOLO box .txt, or None
    roots: dict[str, str] = field(default_factory=dict)  # source name -> root folder as given

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.classes))

    def groups(self) -> list[str]:
        """'source/sequence' of every image (``source`` alone where the root has no sequence folders)."""
        return [f"{s}/{q}" if q else s for s, q in zip(self.sources, self.sequences)]

    def take(self, indices: Sequence[int]) -> "Collection":
        """The images at these positions, in this order."""
        return Collection(*([getattr(self, name)[i] for i in indices] for name in _PER_IMAGE), roots=dict(self.roots))

    def subset(self, keep: Sequence[bool]) -> "Collection":
        return self.take([i for i, k in enumerate(keep) if k])

    def extend(self, other: "Collection") -> None:
        for name in _PER_IMAGE:
            getattr(self, name).extend(getattr(other, name))
        self.roots.update(other.roots)

    def relpath(self, i: int) -> str:
        """``source/path-inside-root``: how split.json names an image."""
        return f"{self.sources[i]}/{self.paths[i].relative_to(self.roots[self.sources[i]]).as_posix()}"


_PER_IMAGE = ("paths", "classes", "sources", "sequences", "patients", "masks")  # Collection's parallel lists


def _is_class_dir(d: Path) -> bool:
    return d.is_dir() and d.name.strip().lower() in _KNOWN_CLASSES


def _source_name(root: Path) -> str:
    name = root.resolve().name
    if name.lower() in sum(_SPLIT_NAMES.values(), ()):  # .../brain-tumor-mri/Training -> brain-tumor-mri
        name = root.resolve().parent.name
    return name or "data"


def read_root(root: str, source: Optional[str] = None) -> tuple[Collection, Optional[Collection]]:
    """One root as (training images, its Testing/ split or None). See the module docstring for layouts."""
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"data folder not found: {root}")
    source = source or _source_name(path)
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.name.lower() in sum(_SPLIT_NAMES.values(), ())]
    sequence_dirs = [] if split_dirs else [d for d in subdirs if not _is_class_dir(d)
                                           and any(_is_class_dir(c) for c in d.iterdir())]
    train, test = Collection(roots={source: root}), None
    if sequence_dirs:  # flair/glioma/..., t1/notumor/...
        for seq in sequence_dirs:
            for cdir in sorted(c for c in seq.iterdir() if _is_class_dir(c)):
                _add(train, list_images(cdir), canonical_class(cdir.name), source, seq.name.lower(), path)
    else:
        splits = find_splits(path)
        for name, folder in splits.items():
            if name == "val":
                continue
            target = train if name == "train" else Collection(roots={source: root})
            for p, y in zip(folder.paths, folder.labels):
                _add(target, [p], folder.classes[y], source, "", path)
            if name == "test":
                test = target
    if not train.paths:
        raise ValueError(f"{root} holds no images in class folders (e.g. glioma/ notumor/, or flair/glioma/ ...)")
    _assign_patients(train, path)
    if test is not None:
        _assign_patients(test, path)
    return train, test


def _add(col: Collection, files: list[Path], cls: str, source: str, sequence: str, root: Path) -> None:
    masks = root / "masks"
    for p in files:
        mask = masks / f"{p.stem}.png"
        box = p.with_suffix(".txt")
        col.paths.append(p)
        col.classes.append(cls)
        col.sources.append(source)
        col.sequences.append(sequence)
        col.patients.append("")
        col.masks.append(mask if mask.is_file() else box if box.is_file() else None)


def _assign_patients(col: Collection, root: Path) -> None:
    """Patient ids from ``<case>_<slice>`` file names, where they are patients and not class prefixes.

    Accepted when every file name has that form and most cases appear in more than one (sequence, class)
    folder (Kaggle's ``Tr-gl_0010`` prefixes each stay in one class folder: not patients), or when the root has
    a ``slices.csv`` with a ``case`` column (as the LGG set does)."""
    stems = [_CASE_SLICE.match(p.stem) for p in col.paths]
    if not col.paths or not all(stems):
        return
    cases = [m.group("case") for m in stems]
    folders: dict[str, set] = {}
    for case, q, c in zip(cases, col.sequences, col.classes):
        folders.setdefault(case, set()).add((q, c))
    listed = root / "slices.csv"
    declared = False
    if listed.is_file():
        try:
            with listed.open(newline="") as fh:
                declared = "case" in (csv.DictReader(fh).fieldnames or [])
        except (OSError, csv.Error, UnicodeDecodeError):
            declared = False
    if declared or sum(len(f) > 1 for f in folders.values()) > len(folders) / 2:
        col.patients[:] = cases


def read_roots(roots: Sequence[str]) -> tuple[Collection, Optional[Collection]]:
    """Several roots as one collection (and the union of their Testing/ splits, if any)."""
    if not roots:
        raise ValueError("no data roots given")
    train, test = Collection(), None
    seen: Counter = Counter()
    for root in roots:
        name = _source_name(Path(root))
        seen[name] += 1
        tr, te = read_root(root, name if seen[name] == 1 else f"{name}-{seen[name]}")
        train.extend(tr)
        if te is not None:
            test = te if test is None else (test.extend(te) or test)
    return train, test


# ------------------------------------------------------------------------------------------------ sampling

def sampling_weights(col: Collection, balance: float) -> np.ndarray:
    """Per-image sampling weights: a (source, sequence) group of n images gets total weight n ** balance.

    balance 1: as pooled (big sources dominate); 0: every group equally often; 0.5 (default) in between, so a
    5,700-image source is drawn about 3.5x as often as a 450-image one, not 13x."""
    if not 0 <= balance <= 1:
        raise ValueError(f"source balance must be between 0 and 1, got {balance}")
    keys = col.groups()
    counts = Counter(keys)
    w = np.array([counts[k] ** balance / counts[k] for k in keys], dtype=np.float64)
    return w / w.sum()


# ------------------------------------------------------------------------------------------------- loading

def read_mask(path: Path, shape: tuple[int, int]) -> Optional[np.ndarray]:
    """A tumour mask (H x W bool) from a mask image or a YOLO box file; None if unreadable or of another size."""
    if path.suffix.lower() == ".txt":
        box = read_yolo_box(path)
        return box_mask(shape, box) if box is not None else None
    try:
        m = read_image(path) > 127
    except ImageReadError:
        return None
    return m if m.shape == shape else None


def load(col: Collection, size: int, progress: bool = True, settings: Optional[dict] = None
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Optional[str]]]:
    """Decode every image once: (N x S x S uint8 prepared slices, N x 1024 thumbnails, N x S x S uint8 masks
    (0 where none; ``has_mask`` is ``masks.any((1, 2))``), errors per file). ``settings``: a checkpoint's
    preprocessing block (default: today's, which a new model records in its config)."""
    from tqdm import tqdm

    n = len(col)
    images = np.zeros((n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    thumbs = np.zeros((n, 1024), dtype=np.float32)
    errors: list[Optional[str]] = [None] * n

    def one(i: int) -> None:
        try:
            gray = read_image(col.paths[i])
        except ImageReadError as e:
            errors[i] = str(e)
            return
        images[i], crop = prepare(gray, size, settings)
        thumbs[i] = thumbnail(gray)
        if col.masks[i] is not None and canonical_class(col.classes[i]) != "notumor":
            m = read_mask(col.masks[i], gray.shape)
            if m is not None:
                masks[i] = apply_crop(m.astype(np.uint8) * 255, crop, size) > 127

    # Pillow and OpenCV release the GIL while they decode and resize: threads use every core
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for _ in tqdm(pool.map(one, range(n)), total=n, desc="decoding", unit="img", disable=not progress,
                      leave=False):
            pass
    return images, thumbs, masks, errors


def read_yolo_box(path: Path) -> Optional[tuple[float, float, float, float]]:
    """(x_center, y_center, width, height) as fractions, from a YOLO line ``class xc yc w h``; None if absent/bad."""
    try:
        parts = path.read_text().split()
        xc, yc, w, h = (float(v) for v in parts[1:5])
    except (OSError, ValueError, IndexError):
        return None
    return (xc, yc, w, h) if w > 0 and h > 0 else None


def load_prepared(paths: Sequence[PathLike], size: int, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[Optional[str]]]:
    """Decode each file once: (N x size x size uint8 prepared slices, N x 1024 thumbnails, errors per file)."""
    from tqdm import tqdm

    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    thumbs = np.zeros((len(paths), 1024), dtype=np.float32)
    errors: list[Optional[str]] = [None] * len(paths)
    for i, p in enumerate(tqdm(paths, desc="decoding", unit="img", disable=not progress, leave=False)):
        try:
            gray = read_image(p)
        except ImageReadError as e:
            errors[i] = str(e)
            continue
        images[i], _ = prepare(gray, size)
        thumbs[i] = thumbnail(gray)
    return images, thumbs, errors
