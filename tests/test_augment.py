"""Training augmentations: every transform keeps shape and range, makes no NaN, is deterministic under a seed,
and does what it says (masks follow the geometry, skull stripping zeroes the rim, black stays black)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brain_tumor import augment as A
from brain_tumor.preprocess import prepare
from conftest import synthetic_slice


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    imgs = np.stack([prepare(synthetic_slice(i, 96), 64)[0] for i in range(6)])
    return torch.from_numpy(imgs).float().div(255).unsqueeze(1)


def _all(n):
    return torch.ones(n, dtype=torch.bool)


TRANSFORMS = {
    "geometric": lambda x, g: A.geometric(x, g),
    "intensity_curve": lambda x, g: A.intensity_curve(x, g, p=1.0),
    "photometric": lambda x, g: A.photometric(x, g),
    "skull_strip": lambda x, g: A.skull_strip(x, _all(len(x))),
    "invert_tissue": lambda x, g: A.invert_tissue(x, _all(len(x))),
    "ghosting": lambda x, g: A.ghosting(x, _all(len(x)), g),
    "motion": lambda x, g: A.motion(x, _all(len(x)), g),
    "low_resolution": lambda x, g: A.low_resolution(x, _all(len(x)), g),
    "film": lambda x, g: A.film(x, _all(len(x)), g),
    "bias_field": lambda x, g: A._monai(x, _all(len(x)), A._monai_transforms()[0], g),
    "gibbs": lambda x, g: A._monai(x, _all(len(x)), A._monai_transforms()[1], g),
    "rician": lambda x, g: A._monai(x, _all(len(x)), A._monai_transforms()[2], g),
    "augment": lambda x, g: A.augment(x, g, mri=True, strip_p=0.5, artefact_p=0.5, film_p=0.5),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_keeps_shape_and_range_and_is_seeded(batch, name):
    fn = TRANSFORMS[name]
    torch.manual_seed(0)
    a = fn(batch.clone(), torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    b = fn(batch.clone(), torch.Generator().manual_seed(3))
    assert a.shape == batch.shape and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b), "the same seed must give the same augmentation"
    if name not in ("geometric",):  # geometry may, by chance, be near the identity for a few images
        assert (a - batch).abs().mean() > 1e-3, "the transform changed nothing"


def test_transforms_leave_unselected_images_alone(batch):
    none = torch.zeros(len(batch), dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    for fn in (A.ghosting, A.motion, A.low_resolution, A.film):
        assert torch.equal(fn(batch, none, g), batch)
    assert torch.equal(A.skull_strip(batch, none), batch)


def test_skull_strip_zeroes_the_rim_and_keeps_the_centre(batch):
    out = A.skull_strip(batch, _all(len(batch)))
    head = batch > 0.08
    rim = head & ~A.brain_mask(batch, 0.12)
    assert out[rim].mean() < 0.5 * batch[rim].mean()
    c = slice(28, 36)
    assert torch.allclose(out[..., c, c], batch[..., c, c])


def test_masks_follow_the_geometry(batch):
    mask = torch.zeros_like(batch)
    mask[..., 10:20, 40:50] = 1
    x = batch.clone()
    x[..., 10:20, 40:50] = 1.0  # a bright square exactly where the mask is
    g = torch.Generator().manual_seed(1)
    xa, ma = A.augment(x, g, intensity=False, mask=mask)
    assert ma.shape == mask.shape
    inside = ma > 0.5
    assert inside.any(dim=(1, 2, 3)).all()
    assert xa[inside].mean() > 0.9  # the square moved with its mask


def test_intensity_curve_keeps_black_black(batch):
    out = A.intensity_curve(batch, torch.Generator().manual_seed(0), p=1.0)
    assert out[batch == 0].abs().max() == 0
