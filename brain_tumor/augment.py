"""Training augmentations, applied to whole batches of prepared slices as tensors (fast on a CPU).

Geometry: flips, rotation, scale, translation. Intensity, to break the MRI-sequence shortcut (in the
training data 'no tumour' is mostly axial T2/FLAIR while tumours are mostly T1 contrast-enhanced):
a random piecewise-linear intensity curve that keeps the background black but may reorder tissue
brightness (as T1 vs T2 does), gamma, contrast, blur and noise.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def geometric(x: torch.Tensor, generator: torch.Generator, max_rotate: float = 15.0,
              scale: tuple[float, float] = (0.85, 1.15), max_shift: float = 0.08) -> torch.Tensor:
    """Random flip, rotation, scale and shift of an N x C x S x S batch (values in [0, 1], zero padding)."""
    n = x.shape[0]
    rand = torch.rand(n, 4, generator=generator)
    angle = (rand[:, 0] * 2 - 1) * math.radians(max_rotate)
    s = scale[0] + rand[:, 1] * (scale[1] - scale[0])
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2] = (rand[:, 2] * 2 - 1) * max_shift * 2
    theta[:, 1, 2] = (rand[:, 3] * 2 - 1) * max_shift * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def intensity_curve(x: torch.Tensor, generator: torch.Generator, p: float = 0.3, knots: int = 5) -> torch.Tensor:
    """With probability p per image, map intensities through a random piecewise-linear curve with f(0)=0.

    The curve need not be monotonic, so tissue contrasts get reordered the way a different MRI sequence
    reorders them; the background stays black and the anatomy (shapes, edges, masses) survives.
    """
    n = x.shape[0]
    values = torch.rand(n, knots, generator=generator) * 0.9 + 0.1
    values[:, 0] = 0.0
    identity = torch.linspace(0, 1, knots).expand(n, knots)
    use = (torch.rand(n, generator=generator) < p).float().unsqueeze(1)
    values = use * values + (1 - use) * identity
    pos = x.clamp(0, 1) * (knots - 1)
    idx = pos.floor().clamp(max=knots - 2).long()
    frac = pos - idx
    flat_idx = idx.view(n, -1)
    lo = torch.gather(values, 1, flat_idx).view_as(x)
    hi = torch.gather(values, 1, flat_idx + 1).view_as(x)
    return lo + (hi - lo) * frac


def photometric(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma, contrast/brightness, blur and noise, each at random strength per image."""
    n = x.shape[0]
    r = torch.rand(n, 5, generator=generator)
    gamma = torch.exp((r[:, 0] * 2 - 1) * math.log(1.6)).view(n, 1, 1, 1)  # 0.625 .. 1.6
    x = x.clamp(0, 1) ** gamma
    contrast = (0.8 + 0.4 * r[:, 1]).view(n, 1, 1, 1)
    bright = ((r[:, 2] - 0.5) * 0.1).view(n, 1, 1, 1)
    x = (x * contrast + bright * (x > 0.02)).clamp(0, 1)
    blur = r[:, 3] < 0.2
    if blur.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (k[:, None] * k[None, :]) / 256.0
        c = x.shape[1]
        kernel = k.expand(c, 1, 5, 5).contiguous()
        x[blur] = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), kernel, groups=c)
    noisy = (r[:, 4] < 0.2).float().view(n, 1, 1, 1)
    x = x + noisy * 0.02 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


def augment(x: torch.Tensor, generator: torch.Generator, intensity: bool = True, curve_p: float = 0.3) -> torch.Tensor:
    """The full training augmentation of an N x 1 x S x S batch in [0, 1]."""
    x = geometric(x, generator)
    if intensity:
        x = intensity_curve(x, generator, p=curve_p)
        x = photometric(x, generator)
    return x


def save_augmentation_grid(path: str, out: str, size: int = 224, n: int = 15, seed: int = 0) -> None:
    """Save the prepared image and n training augmentations of it as one PNG grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import prepare, read_image

    img, _ = prepare(read_image(path), size)
    base = torch.from_numpy(img).float().div(255).view(1, 1, size, size).repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    aug = augment(base, g).squeeze(1).numpy()
    cols = 4
    rows = math.ceil((n + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.5, rows * 2.5))
    for ax in np.ravel(axes):
        ax.axis("off")
    tiles = [img / 255.0] + list(aug)
    for i, (ax, tile) in enumerate(zip(np.ravel(axes), tiles)):
        ax.imshow(tile, cmap="gray", vmin=0, vmax=1)
        ax.set_title("prepared" if i == 0 else f"aug {i}", fontsize=8)
    fig.suptitle(Path(path).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
