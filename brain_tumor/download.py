"""Fetch the public data sets this project trains on (Kaggle, through kagglehub) into the layouts train.py reads.

    python -m brain_tumor.data download brain-tumor-mri data/brain-tumor-mri      # Training/ and Testing/
    python -m brain_tumor.data download lgg-segmentation data/lgg-segmentation    # {flair,t1,t1ce}/{glioma,notumor}/
    python -m brain_tumor.data download mri-44class data/mri-44class              # {t1,t1ce,t2}/{glioma,...}/
    python -m brain_tumor.data download brain-mri-yes-no data/yes-no              # yes/ and no/

Then ``python train.py --data data/brain-tumor-mri/Training --data data/lgg-segmentation ...``. kagglehub
keeps its own cache (~/.cache/kagglehub); public sets need no account, and KAGGLE_USERNAME / KAGGLE_KEY (or
~/.kaggle/kaggle.json) are used where Kaggle asks for them. Check each set's licence before use: LGG is
CC BY-NC-SA 4.0, the 44-class collection has no clear licence (treat it as non-commercial).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

import cv2
import numpy as np

DATASETS: dict[str, tuple[str, str]] = {  # name -> (Kaggle id, what it is)
    "brain-tumor-mri": ("masoudnickparvar/brain-tumor-mri-dataset",
                        "4 classes, Training/ and Testing/ (figshare, SARTAJ, Br35H); CC0 1.0"),
    "lgg-segmentation": ("mateuszbuda/lgg-mri-segmentation",
                         "lower-grade gliomas, FLAIR / T1 / T1+contrast with tumour masks, 110 patients; CC BY-NC-SA 4.0"),
    "mri-44class": ("fernando2rad/brain-tumor-mri-images-44c",
                    "teaching-case T1 / T1+contrast / T2 slices of 44 tumour types; glioma, meningioma, normal kept"),
    "brain-mri-yes-no": ("navoneel/brain-mri-images-for-brain-tumor-detection",
                         "253 web-collected slices, yes / no"),
}
GLIAL = ("astrocitoma", "astrocytoma", "glioblastoma", "oligodendroglioma", "ependimoma", "ependymoma", "ganglioglioma")
SEQUENCES = {"t1": "t1", "t1c+": "t1ce", "t1c": "t1ce", "t2": "t2"}


class DownloadError(RuntimeError):
    """A download or conversion that failed, with what to do about it."""


def fetch(kaggle_id: str) -> Path:
    """The dataset's files on disk (kagglehub's cache), or a DownloadError saying why not."""
    try:
        import kagglehub
    except ImportError:
        raise DownloadError("kagglehub is not installed: pip install kagglehub") from None
    try:
        return Path(kagglehub.dataset_download(kaggle_id))
    except Exception as e:  # network, DNS, HTTP errors, authentication: all reach the user as one message
        raise DownloadError(f"could not fetch {kaggle_id} from Kaggle ({type(e).__name__}: {str(e)[:200]}). It needs "
                            "a network connection; where Kaggle asks for an account, set KAGGLE_USERNAME and "
                            "KAGGLE_KEY (or ~/.kaggle/kaggle.json)") from None


def _find_dir(root: Path, wanted: Callable[[Path], bool]) -> Path:
    for p in [root, *sorted(q for q in root.rglob("*") if q.is_dir())]:
        if wanted(p):
            return p
    raise DownloadError(f"the download in {root} does not have the expected layout")


def _copy_tree(src: Path, dst: Path) -> int:
    n = 0
    for f in sorted(src.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            n += 1
    return n


def brain_tumor_mri(src: Path, out: Path) -> int:
    root = _find_dir(src, lambda p: (p / "Training").is_dir() and (p / "Testing").is_dir())
    return _copy_tree(root / "Training", out / "Training") + _copy_tree(root / "Testing", out / "Testing")


def yes_no(src: Path, out: Path) -> int:
    root = _find_dir(src, lambda p: (p / "yes").is_dir() and (p / "no").is_dir())
    return _copy_tree(root / "yes", out / "yes") + _copy_tree(root / "no", out / "no")


def lgg(src: Path, out: Path) -> int:
    """kaggle_3m/<case>/<case>_<n>.tif (3 channels: T1 before contrast, FLAIR, T1 after) and <case>_<n>_mask.tif ->
    {flair,t1,t1ce}/{glioma,notumor}/<case>_<n>.png, masks/<case>_<n>.png and a YOLO box beside each glioma slice."""
    masks = sorted(src.rglob("*_mask.tif"))
    if not masks:
        raise DownloadError(f"no *_mask.tif files under {src}: not the LGG segmentation layout")
    n = 0
    for mask_path in masks:
        image_path = mask_path.with_name(mask_path.name.replace("_mask.tif", ".tif"))
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            continue
        channels = image[..., ::-1]  # OpenCV reads BGR: back to the file's own order
        name = image_path.stem
        label = "glioma" if (mask > 0).any() else "notumor"
        (out / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / "masks" / f"{name}.png"), np.where(mask > 0, 255, 0).astype(np.uint8))
        for k, sequence in enumerate(("t1", "flair", "t1ce")):
            folder = out / sequence / label
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{name}.png"), channels[..., k])
            if label == "glioma":
                ys, xs = np.nonzero(mask)
                h, w = mask.shape
                box = ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h,
                       (xs.max() - xs.min() + 1) / w, (ys.max() - ys.min() + 1) / h)
                (folder / f"{name}.txt").write_text("0 " + " ".join(f"{v:.6f}" for v in box) + "\n")
            n += 1
    return n


def mri_44class(src: Path, out: Path) -> int:
    """Folders such as "Glioblastoma T1C+", "Meningioma T2", "_NORMAL T1" -> {t1,t1ce,t2}/{glioma,meningioma,notumor}/.
    Tumour types outside these classes are left out."""
    n = 0
    for folder in sorted(p for p in src.rglob("*") if p.is_dir()):
        match = re.fullmatch(r"_?(.+?)\s+(T1C\+|T1C|T1|T2)", folder.name.strip(), flags=re.I)
        if not match:
            continue
        kind, sequence = match.group(1).lower(), SEQUENCES[match.group(2).lower()]
        label = ("glioma" if kind.startswith(GLIAL) else "meningioma" if kind.startswith("meningioma")
                 else "notumor" if kind.startswith("normal") else None)
        if label is None:
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                prefix = re.sub(r"[^\w.-]+", "_", folder.name)
                target = out / sequence / label / f"{prefix}_{f.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
                n += 1
    if not n:
        raise DownloadError(f"no '<type> T1/T1C+/T2' folders under {src}: not the 44-class layout")
    return n


CONVERT = {"brain-tumor-mri": brain_tumor_mri, "lgg-segmentation": lgg, "mri-44class": mri_44class,
           "brain-mri-yes-no": yes_no}


def download(name: str, out: Path) -> int:
    """Fetch data set ``name`` and write it under ``out`` in train.py's layout; returns the files written."""
    if name not in DATASETS:
        raise DownloadError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if out.exists() and any(out.iterdir()):
        raise DownloadError(f"{out} exists and is not empty: choose a new folder")
    src = fetch(DATASETS[name][0])
    n = CONVERT[name](src, out)
    if not n:
        raise DownloadError(f"nothing usable found in the download of {name}")
    return n


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.data download", description=__doc__.split("\n")[0],
                                     epilog="data sets: " + "; ".join(f"{k} ({v[0]}): {v[1]}" for k, v in DATASETS.items()))
    parser.add_argument("name", choices=sorted(DATASETS), help="which data set")
    parser.add_argument("dir", help="where to write it (a new or empty folder)")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        n = download(args.name, Path(args.dir))
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} files to {args.dir} ({args.name}: {DATASETS[args.name][1]})")
    return 0
