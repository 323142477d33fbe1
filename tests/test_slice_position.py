"""scripts/slice_position.py: each slice's distance to its patient's tumour, and the table by distance band."""
from __future__ import annotations

from pathlib import Path

from brain_tumor.datasets import Collection
from scripts.slice_position import distances, table


def stack() -> Collection:
    """Patient A on FLAIR: tumour on slices 10-14, tumour-free slices 5, 8 and 9; A on T1: tumour on slice 20 only
    (another sequence is another extent); patient B: tumour-free slices only; one Kaggle slice with no patient."""
    rows = [(f"A_{s}", "glioma", "flair", "A") for s in range(10, 15)]
    rows += [(f"A_{s}", "notumor", "flair", "A") for s in (5, 8, 9)]
    rows += [("A_20", "glioma", "t1", "A"), ("A_23", "notumor", "t1", "A")]
    rows += [("B_3", "notumor", "flair", "B"), ("Tr-gl_0001", "glioma", "", "")]
    col = Collection()
    for name, cls, seq, pat in rows:
        src = "kaggle" if not pat else "lgg"
        col.paths.append(Path(f"/data/{src}/{seq}/{cls}/{name}.jpg"))
        col.classes.append(cls)
        col.sources.append(src)
        col.sequences.append(seq)
        col.patients.append(pat)
        col.masks.append(None)
    return col


def test_distances_count_slices_to_the_tumours_ends_and_to_the_nearest_tumour_slice():
    col = stack()
    keep = [True] * len(col)
    keep[1] = False  # a training slice: no distance of its own, but its tumour still marks the extent
    assert distances(col, keep) == [0, None, 2, 1, 0,   # tumour 10-14: distance to the nearer end
                                    5, 2, 1,            # tumour-free 5, 8, 9: to slice 10
                                    0, 3,               # T1's own extent (slice 20)
                                    None, None]         # B has no tumour slice; the Kaggle slice no patient


def test_table_bands_and_counts_the_tumour_calls():
    col = stack()
    d = distances(col, [True] * len(col))
    called = [False, True, True, True, False, False, True, True, True, True, True, True]
    t = table(col.groups(), [c != "notumor" for c in col.classes], d, called)
    assert t["lgg/flair"]["tumour"] == {"0": {"n": 2, "called_tumour": 0}, "1": {"n": 2, "called_tumour": 2},
                                        "2-4": {"n": 1, "called_tumour": 1}}
    assert t["lgg/flair"]["no tumour"] == {"5+": {"n": 1, "called_tumour": 0}, "2-4": {"n": 1, "called_tumour": 1},
                                           "1": {"n": 1, "called_tumour": 1}}
    assert t["lgg/t1"] == {"tumour": {"0": {"n": 1, "called_tumour": 1}},
                           "no tumour": {"2-4": {"n": 1, "called_tumour": 1}}}
    assert "kaggle" not in t and sum(c["n"] for k in t.values() for b in k.values() for c in b.values()) == 10
