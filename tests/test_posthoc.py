"""scripts/posthoc.py: the refit last layer weighs (group, class) cells as asked and stays near the shipped head
under a strong pull."""
from __future__ import annotations

import numpy as np
import torch

from scripts.posthoc import refit_head


def conflicting_groups():
    """1-D features: a big group (900 slices) at x = 1 labelled 0, a small one (100) at x = 1 labelled 1, and
    anchors at x = -1 of both classes (so the head is not degenerate)."""
    x = torch.tensor([[1.0]] * 1000 + [[-1.0]] * 20)
    y = torch.tensor([0] * 900 + [1] * 100 + [0] * 10 + [1] * 10)
    keys = np.array(["big|0"] * 900 + ["small|1"] * 100 + ["anchor|0"] * 10 + ["anchor|1"] * 10)
    return x, y, keys


def test_group_weighting_gives_the_small_group_its_share():
    x, y, keys = conflicting_groups()
    w0, b0 = torch.zeros(2, 1), torch.zeros(2)
    p1 = {}
    for weighting in ("none", "group"):
        W, b = refit_head(x, y, keys, w0, b0, weighting, lam=0.0)
        p1[weighting] = torch.softmax(torch.tensor([[1.0]]) @ W.T + b, 1)[0, 1].item()
    assert abs(p1["none"] - 0.1) < 0.03  # the pooled answer: 100 of 1,000
    assert abs(p1["group"] - 0.5) < 0.03  # each cell weighs the same: even odds


def test_a_strong_pull_keeps_the_head_and_a_weak_one_moves_it():
    x, y, keys = conflicting_groups()
    w0, b0 = torch.tensor([[2.0], [-2.0]]), torch.zeros(2)
    W, _ = refit_head(x, y, keys, w0, b0, "group", lam=1e4)
    assert torch.allclose(W, w0, atol=1e-3)
    W, _ = refit_head(x, y, keys, w0, b0, "group", lam=0.0)
    assert (W - w0).norm() > 0.5
