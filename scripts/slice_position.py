"""Where along a patient's stack of slices the answers go wrong (sources named ``<case>_<slice>``, as LGG's).

For each validation slice of a patient: a tumour slice's distance, in slices, to the nearer end of its patient's
tumour (0: the first or last slice with tumour), and a tumour-free slice's distance to the nearest tumour slice.
The tumour's extent is read from the file names of all the patient's slices in the data (the patient's slices
all lie on one side of the split). Then, per sequence and distance band: slices, and the share called a tumour
(P(tumour) >= 0.5, as in evaluate: on tumour slices the sensitivity, on tumour-free ones 1 - specificity).

    python -m scripts.slice_position --model model --json docs/evaluations/slice_position.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from brain_tumor.datasets import Collection
from brain_tumor.metrics import json_ready
from scripts._images import SPLIT_HELP, split_file
from brain_tumor.splits import read_split

NO_TUMOUR = "notumor"
BANDS = ((0, 0), (1, 1), (2, 4), (5, None))  # distances in slices, inclusive
_SLICE = re.compile(r"_(\d+)$")


def band_name(band: tuple[int, Optional[int]]) -> str:
    lo, hi = band
    return f"{lo}+" if hi is None else (str(lo) if lo == hi else f"{lo}-{hi}")


def slice_number(path: Path) -> Optional[int]:
    m = _SLICE.search(Path(path).stem)
    return int(m.group(1)) if m else None


def distances(col: Collection, keep: Sequence[bool]) -> list[Optional[int]]:
    """For each image of ``col`` where ``keep`` is true, its distance in slices as described above (None where the
    file name gives no patient and slice, or the patient has no tumour slice of that sequence); the others None."""
    tumour = defaultdict(set)  # (source, sequence, patient) -> tumour slice numbers
    for path, cls, src, seq, pat in zip(col.paths, col.classes, col.sources, col.sequences, col.patients):
        s = slice_number(path)
        if pat and s is not None and cls != NO_TUMOUR:
            tumour[(src, seq, pat)].add(s)
    out: list[Optional[int]] = []
    for i, (path, cls) in enumerate(zip(col.paths, col.classes)):
        s = slice_number(path)
        ts = tumour.get((col.sources[i], col.sequences[i], col.patients[i]))
        if not keep[i] or not col.patients[i] or s is None or not ts:
            out.append(None)
        elif cls == NO_TUMOUR:
            out.append(min(abs(s - t) for t in ts))
        else:
            out.append(min(s - min(ts), max(ts) - s))
    return out


def table(groups: Sequence[str], tumour: Sequence[bool], dist: Sequence[Optional[int]],
          called_tumour: Sequence[bool]) -> dict:
    """{group: {"tumour" | "no tumour": {band: {"n", "called_tumour"}}}} over the slices with a distance."""
    out: dict = {}
    for g, t, d, c in zip(groups, tumour, dist, called_tumour):
        if d is None:
            continue
        band = next(b for b in BANDS if d >= b[0] and (b[1] is None or d <= b[1]))
        cell = out.setdefault(g, {}).setdefault("tumour" if t else "no tumour", {}).setdefault(
            band_name(band), {"n": 0, "called_tumour": 0})
        cell["n"] += 1
        cell["called_tumour"] += int(bool(c))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder or Hub id (default: bundled)")
    ap.add_argument("--split", metavar="MODEL|SPLIT_JSON", help=SPLIT_HELP + " (default: the --model folder's)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from brain_tumor.decode import read_image
    from brain_tumor.inference import Predictor

    predictor = Predictor(args.model)
    try:
        col, is_val = read_split(str(split_file(args.split or predictor.source).parent))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    dist = distances(col, is_val)
    idx = [i for i, d in enumerate(dist) if d is not None]
    if not idx:
        raise SystemExit("error: no validation slice with a patient, a slice number and a tumour extent")
    called = []
    for start in range(0, len(idx), 32):
        preds = predictor.predict([read_image(col.paths[i]) for i in idx[start:start + 32]])
        called += [p.tumor_probability >= 0.5 for p in preds]  # as evaluate's sensitivity and specificity
    groups = [col.groups()[i] for i in idx]
    result = table(groups, [col.classes[i] != NO_TUMOUR for i in idx], [dist[i] for i in idx], called)
    print(f"{'group':<28}{'slices':<12}" + "".join(f"{'d=' + band_name(b):>14}" for b in BANDS))
    for g, kinds in sorted(result.items()):
        for kind in ("tumour", "no tumour"):
            cells = kinds.get(kind, {})
            print(f"{g:<28}{kind:<12}" + "".join(
                f"{c['called_tumour']:>5}/{c['n']:<4} {c['called_tumour'] / c['n']:4.2f}" if (c := cells.get(band_name(b)))
                else f"{'-':>14}" for b in BANDS))
    print("cells: called a tumour / slices, share. d: tumour slices, slices from the tumour's nearer end (0: an end "
          "slice); tumour-free slices, slices to the nearest tumour slice.")
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready({"model": predictor.source,
                                                          "split": str(split_file(args.split or predictor.source)),
                                                          "bands": [band_name(b) for b in BANDS],
                                                          "groups": result}), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
