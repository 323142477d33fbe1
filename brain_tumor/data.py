"""The data command line: describe a data root (counts, sizes, colour modes, shortcut flags, near-duplicates).

    python -m brain_tumor.data DIR                       # counts, sizes, modes, shortcut flags, duplicates
    python -m brain_tumor.data download NAME DIR         # fetch a public data set (brain_tumor.download)
    python -m brain_tumor.data pack SRC [SRC ...] --out DIR --max-side 192   # a small copy to carry elsewhere

Leakage warning: the Kaggle set (a merge of figshare, SARTAJ and Br35H) is full of near-duplicate slices (the
same slice re-saved, neighbouring slices of one patient), so a per-image random split overstates accuracy;
``describe`` counts them and how many test images have a near-twin in training. Reading files is decode.py's,
preparing them preprocess.py's, layouts datasets.py's, splits splits.py's.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import HelpFormatter
from .datasets import find_splits
from .decode import ImageReadError, PathLike, read_image
from .preprocess import thumbnail
from .splits import near_duplicate_groups


def _colour_mode(path: Path) -> str:
    """Pillow's mode of the stored image (L, RGB, I;16, ...), or 'DICOM' for what Pillow cannot open."""
    try:
        with Image.open(path) as im:
            return im.mode
    except (OSError, UnidentifiedImageError, ValueError):
        return "DICOM"


def describe(root: PathLike, dup_threshold: float = 0.95) -> str:
    """A text report: counts, sizes and colour modes per class, shortcut flags, near-duplicate groups."""
    splits = find_splits(root)
    lines = [f"dataset: {root}"]
    all_thumbs, all_split = [], []
    for split, folder in splits.items():
        lines.append(f"\n[{split}] {len(folder)} images, classes: {', '.join(folder.classes)}")
        sizes_by_class: dict[str, list[tuple[int, int]]] = {}
        modes_by_class: dict[str, Counter] = {}
        bad = 0
        for p, y in zip(folder.paths, folder.labels):
            c = folder.classes[y]
            try:
                gray = read_image(p)
            except ImageReadError:
                bad += 1
                continue
            sizes_by_class.setdefault(c, []).append(gray.shape[::-1])
            modes_by_class.setdefault(c, Counter())[_colour_mode(p)] += 1
            all_thumbs.append(thumbnail(gray))
            all_split.append(split)
        lines.append(f"  {'class':<14}{'n':>6}  {'median size':>12}  {'size range':>22}  modes")
        medians = {}
        for c in folder.classes:
            sizes = np.array(sizes_by_class.get(c, [(0, 0)]))
            area = sizes[:, 0] * sizes[:, 1]
            medians[c] = float(np.median(area))
            med = sizes[np.argsort(area)[len(area) // 2]]
            lo, hi = sizes[area.argmin()], sizes[area.argmax()]
            modes = ", ".join(f"{m}:{k}" for m, k in modes_by_class.get(c, Counter()).most_common())
            n = folder.labels.count(folder.classes.index(c))
            lines.append(f"  {c:<14}{n:>6}  {med[0]:>5}x{med[1]:<6}  {lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]:<8}  {modes}")
        if bad:
            lines.append(f"  unreadable files: {bad}")
        vals = [v for v in medians.values() if v > 0]
        if vals and max(vals) > 1.5 * min(vals):
            lines.append("  WARNING: median image size differs between classes by more than 1.5x -- a shortcut a "
                         "network can learn instead of the anatomy (we crop to the head and resize to remove it)")
        mode_sets = {c: set(m for m, _ in modes_by_class.get(c, Counter()).most_common(1)) for c in folder.classes}
        if len(set(map(frozenset, mode_sets.values()))) > 1:
            lines.append("  WARNING: the dominant colour mode differs between classes -- another shortcut "
                         "(we convert everything to grayscale)")
    if all_thumbs:
        groups = near_duplicate_groups(np.stack(all_thumbs), dup_threshold)
        sizes = Counter(groups)
        dup_images = sum(k for k in sizes.values() if k > 1)
        lines.append(f"\nnear-duplicates (32x32 thumbnail correlation >= {dup_threshold}): "
                     f"{sum(1 for k in sizes.values() if k > 1)} groups holding {dup_images} of {len(groups)} images; "
                     f"largest group {max(sizes.values())}")
        if len(splits) > 1:
            split_arr = np.array(all_split)
            for split in splits:
                if split == "train":
                    continue
                train_groups = set(groups[split_arr == "train"])
                mine = groups[split_arr == split]
                shared = sum(g in train_groups for g in mine)
                lines.append(f"  {split}: {shared} of {len(mine)} images have a near-duplicate in train "
                             f"({len(mine) - shared} are clean)")
        lines.append("  split by these groups (train.py does) so that no near-duplicate straddles train and validation")
    return "\n".join(lines)


def pack(root: PathLike, out: PathLike, max_side: int = 192, quality: int = 75) -> tuple[int, int]:
    """A small copy of a data root, to carry to a training machine (a lent GPU takes 64 MiB): every image
    re-encoded as grayscale WebP no larger than ``max_side`` on its long side, tumour masks (``masks/*.png``)
    shrunk to the same size as their slice, box files and ``slices.csv`` copied. File names stay as they are
    (decoding sniffs the content, not the suffix), so split.json keys, patients and masks still match.
    Returns (images written, bytes written). An unreadable image is skipped with a message, not fatal."""
    import shutil

    from .datasets import is_image_file

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    if not 16 <= max_side <= 4096 or not 1 <= quality <= 100:
        raise ValueError(f"max_side must be in 16..4096 and quality in 1..100, got {max_side} and {quality}")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"the copy must not be written inside the source: {out}")
    n = size = 0
    shapes: dict[str, tuple[int, int]] = {}  # mask stem -> (w, h) of the slice it belongs to
    files = sorted(p for p in root.rglob("*") if p.is_file())
    masks = {p for p in files if p.parent == root / "masks"}
    for p in files:
        if p in masks:
            continue
        dst = out / p.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if is_image_file(p):
            try:
                gray = read_image(p)
            except ImageReadError as e:
                print(f"skipped {p}: {e}", file=sys.stderr)
                continue
            im = Image.fromarray(gray)
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            shapes[p.stem] = im.size
            im.save(dst, format="WEBP", quality=quality, method=6)
            n += 1
        else:  # box files, slices.csv, READMEs
            shutil.copyfile(p, dst)
        size += dst.stat().st_size
    for p in sorted(masks):
        if p.stem not in shapes:
            continue
        dst = out / p.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as m:
            m.convert("L").resize(shapes[p.stem], Image.Resampling.NEAREST).convert("1").save(dst, optimize=True)
        size += dst.stat().st_size
    return n, size


def _pack_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.data pack", description=pack.__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("roots", nargs="+", metavar="SRC", help="data roots; each is copied to OUT/<its path below "
                                                                "the deepest folder they share>")
    parser.add_argument("--out", required=True, help="where the copies go")
    parser.add_argument("--max-side", type=int, default=192, help="long side of the re-encoded images, pixels")
    parser.add_argument("--quality", type=int, default=75, help="WebP quality")
    args = parser.parse_args(argv)
    roots = [Path(r).resolve() for r in args.roots]
    common = Path(os.path.commonpath(roots)) if len(roots) > 1 else roots[0].parent
    try:
        for r in roots:
            n, size = pack(r, Path(args.out) / r.relative_to(common), args.max_side, args.quality)
            print(f"{r}: {n} images, {size / 2 ** 20:.1f} MiB")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Optional[Iterable[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:  # python -m brain_tumor.data download NAME DIR
        from .download import main as download_main
        return download_main(argv[1:])
    if argv[:1] == ["pack"]:
        return _pack_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.data", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter,
                                     epilog="python -m brain_tumor.data download NAME DIR fetches a public data set "
                                            "(see: python -m brain_tumor.data download --help); "
                                            "python -m brain_tumor.data pack SRC --out DIR writes a small copy")
    parser.add_argument("data", help="dataset root: class folders, or Training/ and Testing/")
    parser.add_argument("--dup-threshold", type=float, default=0.95)
    args = parser.parse_args(argv)
    try:
        print(describe(args.data, args.dup_threshold))
    except (ValueError, ImageReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
