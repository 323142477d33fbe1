"""Leakage-aware splits: near-duplicate and patient groups, the grouped train/validation split, split.json.

Slices of one patient (any sequence) and near-duplicate slices (thumbnail correlation >= a threshold, across
every root) form one group, and a group never straddles train and validation. A model folder's ``split.json``
lists every image's side; ``read_split`` reads it back (the one reader: evaluation, benchmarks, the README's
commands), and ``previous_sides`` keeps those sides when a run continues from that model.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from .datasets import Collection, read_root


def connected_components(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Component id per node of a graph of ``n`` nodes with these edges (ids in order of each component's
    smallest node): union-find with path halving."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    _, ids = np.unique([find(i) for i in range(n)], return_inverse=True)
    return ids


def near_duplicate_groups(thumbs: np.ndarray, threshold: float = 0.95, chunk: int = 2048) -> np.ndarray:
    """Group ids: connected components of the graph 'thumbnail correlation >= threshold'."""
    x = np.asarray(thumbs, dtype=np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-6)

    def similar_pairs():
        for start in range(0, len(x), chunk):
            rows, cols = np.nonzero(x[start:start + chunk] @ x.T >= threshold)
            yield from ((r, c) for r, c in zip(rows + start, cols) if c > r)

    return connected_components(len(x), similar_pairs())


def grouped_split(groups: Sequence[int], labels: Sequence[int], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean 'is validation' per image; whole groups go to one side, roughly stratified by label."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(groups), dtype=bool)
    unique = np.unique(groups)
    # a group's label: its most common one
    group_label = {g: Counter(labels[groups == g]).most_common(1)[0][0] for g in unique}
    for c in np.unique(labels):
        members = [g for g in unique if group_label[g] == c]
        rng.shuffle(members)
        target = val_fraction * int((labels == c).sum())
        taken = 0
        for g in members:
            if taken >= target:
                break
            size = int((groups == g).sum())
            if taken + size > 1.5 * target and taken > 0:
                continue
            is_val[groups == g] = True
            taken += size
    if is_val.all() or not is_val.any():
        raise ValueError("could not make a grouped validation split: too few groups")
    return is_val


def merge_groups(dup_groups: Sequence[int], patients: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    """Group ids joining near-duplicates and slices of one patient (of one source): connected components."""
    first: dict[tuple, int] = {}
    dup_edges = ((i, first.setdefault(("d", g), i)) for i, g in enumerate(dup_groups))
    patient_edges = ((i, first.setdefault(("p", s, p), i)) for i, (s, p) in enumerate(zip(sources, patients)) if p)
    return connected_components(len(dup_groups), itertools.chain(dup_edges, patient_edges))


def previous_sides(col: Collection, split_json: Path) -> np.ndarray:
    """Per image: 1 if an earlier split.json put it in validation, 0 in training, -1 if it does not list it.

    Entries are ``source/path`` (this module's format) or, in the older single-root format, paths inside the root."""
    info = json.loads(Path(split_json).read_text())
    sides = {k: 0 for k in info.get("train", [])} | {k: 1 for k in info.get("val", [])}
    out = np.full(len(col), -1, dtype=int)
    for i in range(len(col)):
        key = col.relpath(i)
        inner = key.split("/", 1)[1]
        out[i] = sides.get(key, sides.get(inner, -1)) if "roots" in info else sides.get(inner, -1)
    return out


def split(col: Collection, thumbs: np.ndarray, val_fraction: float, seed: int, dup_threshold: float,
          fixed: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(is_validation per image, group id per image): whole groups on one side, stratified by source, sequence
    and class (so that even a small sequence folder's class gets its share of validation images).

    ``fixed`` (previous_sides): images an earlier model was trained or validated on keep their side, and so does
    every group holding one (validation wins a tie), so continuing from that model never validates on its
    training images; the other groups are split as usual."""
    groups = merge_groups(near_duplicate_groups(thumbs, dup_threshold), col.patients, col.sources)
    _, strata = np.unique([f"{g}/{c}" for g, c in zip(col.groups(), col.classes)], return_inverse=True)
    if fixed is None or (fixed < 0).all():
        return grouped_split(groups, strata, val_fraction, seed), groups
    is_val = np.zeros(len(col), dtype=bool)
    free = np.ones(len(col), dtype=bool)
    for g in np.unique(groups[fixed >= 0]):
        members = groups == g
        is_val[members] = (fixed[members] == 1).any()
        free[members] = False
    if free.any():
        is_val[free] = grouped_split(groups[free], strata[free], val_fraction, seed)
    return is_val, groups


def write_split(path: Path, col: Collection, is_val: np.ndarray, groups: np.ndarray, **settings) -> None:
    path.write_text(json.dumps({
        **settings, "n_groups": int(groups.max() + 1) if len(groups) else 0, "roots": col.roots,
        "train": [col.relpath(i) for i in range(len(col)) if not is_val[i]],
        "val": [col.relpath(i) for i in range(len(col)) if is_val[i]],
    }, indent=1))


def read_split(folder: str, roots: Optional[dict[str, str]] = None) -> tuple[Collection, np.ndarray]:
    """The images of a model folder's split.json as (collection, is_validation). ``roots`` overrides where each
    source lies (source name -> folder), for a split written on another machine."""
    info = json.loads((Path(folder) / "split.json").read_text())
    where = {**info.get("roots", {}), **(roots or {})}
    if not where:
        raise ValueError(f"{folder}/split.json names no data roots; give them (source=DIR)")
    every = Collection()
    for name, root in where.items():
        every.extend(read_root(root, name)[0])
    position = {every.relpath(i): i for i in range(len(every))}
    listed = [(k, False) for k in info["train"]] + [(k, True) for k in info["val"]]
    listed = [(position[k], flag) for k, flag in listed if k in position]  # a file removed since is skipped
    return every.take([i for i, _ in listed]), np.array([flag for _, flag in listed], dtype=bool)
