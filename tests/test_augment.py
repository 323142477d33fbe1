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
    "bias_field": lambda x, g: A.bias_field(x, _all(len(x)), g),
    "gibbs": lambda x, g: A.gibbs_ringing(x, _all(len(x)), g),
    "rician": lambda x, g: A.rician_noise(x, _all(len(x)), g),
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


# ---------------------------------------------------------------- the batched artefacts are MONAI's models

def test_gibbs_ringing_matches_monai(batch):
    monai = pytest.importorskip("monai.transforms")
    x = batch[:2].clone()
    g = torch.Generator().manual_seed(0)
    alpha = 0.2 + 0.5 * torch.rand(2, generator=torch.Generator().manual_seed(0))  # the draw gibbs_ringing makes
    ours = A.gibbs_ringing(x, _all(2), g)
    for i in range(2):
        ref = torch.as_tensor(monai.GibbsNoise(alpha=float(alpha[i]))(x[i])).float()
        ref = (ref / ref.amax().clamp(min=1.0)).clamp(0, 1)
        assert torch.allclose(ours[i], ref, atol=1e-4)


def test_bias_field_matches_monai_field():
    monai = pytest.importorskip("monai.transforms")
    x = torch.full((1, 1, 24, 32), 0.5)
    coeff = 0.05 + 0.25 * torch.rand(1, 10, generator=torch.Generator().manual_seed(1))
    ours = A.bias_field(x, _all(1), torch.Generator().manual_seed(1))
    field = monai.RandBiasField()._generate_random_field((24, 32), 3, coeff[0].tolist())
    ref = torch.as_tensor(0.5 * np.exp(field)).float()
    ref = (ref / ref.amax().clamp(min=1.0)).clamp(0, 1)
    assert torch.allclose(ours[0, 0], ref, atol=1e-4)


def test_rician_noise_has_the_rayleigh_floor():
    # on a black image the magnitude of two N(0, s) draws is Rayleigh: mean s * sqrt(pi / 2), s ~ U(0, std)
    x = torch.zeros(4, 1, 64, 64)
    g = torch.Generator().manual_seed(2)
    s = 0.04 * torch.rand(4, generator=torch.Generator().manual_seed(2))
    out = A.rician_noise(x, _all(4), g)
    assert torch.allclose(out.mean((1, 2, 3)), s * np.sqrt(np.pi / 2), rtol=0.05)


def test_transforms_run_on_the_device_the_batch_is_on(batch, monkeypatch):
    # every draw comes from the CPU generator and moves to the batch (how a GPU batch is augmented in place):
    # on the meta device (shapes only, no data) any CPU tensor meeting the batch raises
    monkeypatch.setattr(A, "_randn", lambda shape, generator, device: torch.empty(shape, device=device))
    x, g = batch.to("meta"), torch.Generator().manual_seed(0)
    selected = (A.bias_field, A.gibbs_ringing, A.rician_noise, A.ghosting, A.motion, A.low_resolution, A.film)
    outs = [fn.__wrapped__(x, g) for fn in selected]
    outs += [A.geometric(x, g), A.intensity_curve(x, g, p=1.0), A.brain_mask(x)]
    assert all(o.device.type == "meta" and o.shape[-2:] == x.shape[-2:] for o in outs)
