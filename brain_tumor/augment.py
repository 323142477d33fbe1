"""Training augmentations, applied to whole batches of prepared slices as tensors, on the batch's device.

Each transform's parameters are drawn from the caller's CPU generator (the same whatever the device) and move to the
batch's device; pixel noise is drawn on the device. On a GPU the batch never leaves it.

The aim is a model for which the MRI sequence, the scanner and the framing carry no information, only the anatomy
does. Geometry: flips, rotation, scale, translation (applied to tumour masks too). Contrast: a random piecewise-
linear intensity curve that keeps the background black but may reorder tissue brightness (as T1, T2 and FLAIR do),
tissue inversion inside the head, gamma, contrast, blur. MRI artefacts: bias field, Gibbs ringing and Rician noise
(MONAI's models, batched here: MONAI's array transforms run one image at a time through NumPy, 5.7 ms a 192 px slice
for the three against 1.1 batched on a 2-core CPU (python -m benchmarks.augment), and would stall a GPU step on a
CPU round trip; tests check them against MONAI's), ghosting and motion (k-space, written here: MONAI has neither and
TorchIO's need SimpleITK), lower acquisition resolution. Inputs as users bring them: skull-stripped slices (zero
outside the brain, zoomed as the head crop then frames them) and photographed films (grey background, glare, low
contrast).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


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
    values = (use * values + (1 - use) * identity).to(x.device)
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
    r = torch.rand(n, 5, generator=generator).to(x.device)
    gamma = torch.exp((r[:, 0] * 2 - 1) * math.log(1.6)).view(n, 1, 1, 1)  # 0.625 .. 1.6
    x = x.clamp(0, 1) ** gamma
    contrast = (0.8 + 0.4 * r[:, 1]).view(n, 1, 1, 1)
    bright = ((r[:, 2] - 0.5) * 0.1).view(n, 1, 1, 1)
    x = (x * contrast + bright * (x > 0.02)).clamp(0, 1)
    blur = r[:, 3] < 0.2
    if blur.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device)
        k = (k[:, None] * k[None, :]) / 256.0
        c = x.shape[1]
        kernel = k.expand(c, 1, 5, 5).contiguous()
        x[blur] = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), kernel, groups=c)
    noisy = (r[:, 4] < 0.2).float().view(n, 1, 1, 1)
    x = x + noisy * 0.02 * _randn(x.shape, generator, x.device)
    return x.clamp(0, 1)


def _randn(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn where it is used: from ``generator`` on the CPU, elsewhere from a generator of
    that device seeded by it (drawing millions of numbers on the CPU to copy them would stall a GPU)."""
    if device.type == "cpu":
        return torch.randn(shape, generator=generator)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    return torch.randn(shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)


def _fill(mask: torch.Tensor) -> torch.Tensor:
    """Fill holes of an N x 1 x S x S boolean mask: inside along a row and inside along a column."""
    def span(m, dim):
        fwd = m.cummax(dim).values
        back = m.flip(dim).cummax(dim).values.flip(dim)
        return fwd & back
    return span(mask, 3) & span(mask, 2)


def brain_mask(x: torch.Tensor, strip: float = 0.08) -> torch.Tensor:
    """A rough brain mask of N x 1 x S x S slices: the filled head, eroded by ``strip`` of the side (skull, scalp)."""
    s = x.shape[-1]
    head = _fill(F.avg_pool2d(x, 5, 1, 2) > 0.08)
    k = max(3, int(strip * s) | 1)
    return (-F.max_pool2d(-head.float(), k, 1, k // 2)) > 0.5


def _selected(transform):
    """``transform(sub, *args)`` of a batch becomes ``f(x, use, *args)``: applied, on a copy of ``x``, to the images
    where ``use`` is True, and nothing at all (not even a random draw) when it is nowhere True."""
    @functools.wraps(transform)
    def apply(x: torch.Tensor, use: torch.Tensor, *args) -> torch.Tensor:
        if not use.any():
            return x
        use = use.to(x.device)
        x = x.clone()
        x[use] = transform(x[use], *args)
        return x
    return apply


@_selected
def skull_strip(sub: torch.Tensor) -> torch.Tensor:
    """Zero outside the brain (BraTS-style skull-stripped inputs). Called as ``skull_strip(x, use)``."""
    strip = 0.06 + 0.06 * torch.rand(1).item()  # skull and scalp: 6-12% of the side
    return sub * F.avg_pool2d(brain_mask(sub, strip).float(), 3, 1, 1)


def geometric(x: torch.Tensor, generator: torch.Generator, max_rotate: float = 15.0,
              scale: tuple[float, float] = (0.85, 1.15), max_shift: float = 0.08,
              zoom: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Random flip, rotation, scale and shift of an N x C x S x S batch (values in [0, 1], zero padding).
    ``zoom`` (N,) multiplies each image's scale (>1 enlarges)."""
    n = x.shape[0]
    rand = torch.rand(n, 4, generator=generator)
    angle = (rand[:, 0] * 2 - 1) * math.radians(max_rotate)
    s = scale[0] + rand[:, 1] * (scale[1] - scale[0])
    if zoom is not None:
        s = s * zoom
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2] = (rand[:, 2] * 2 - 1) * max_shift * 2
    theta[:, 1, 2] = (rand[:, 3] * 2 - 1) * max_shift * 2
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@_selected
def invert_tissue(sub: torch.Tensor) -> torch.Tensor:
    """Invert brightness inside the head (T1 <-> T2-like contrast), background kept black. ``(x, use)``."""
    inside = _fill(F.avg_pool2d(sub, 5, 1, 2) > 0.12).float()
    return inside * (1.05 - sub).clamp(0, 1)


@_selected
def ghosting(sub: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Ghosts along the phase-encoding axis: every k-th k-space line attenuated (TorchIO's RandomGhosting idea).
    ``(x, use, generator)``."""
    k = torch.fft.fftshift(torch.fft.fft2(sub), dim=(-2, -1))
    every = int(torch.randint(2, 6, (1,), generator=generator))
    strength = 0.1 + 0.3 * float(torch.rand(1, generator=generator))
    rows = torch.ones(sub.shape[-2])
    rows[::every] = 1 - strength
    c = sub.shape[-2] // 2
    rows[c - 4:c + 5] = 1.0  # keep the centre of k-space: the image itself
    rows = rows.to(sub.device)
    along_rows = float(torch.rand(1, generator=generator)) < 0.5 or sub.shape[-1] != sub.shape[-2]
    k = k * (rows.view(1, 1, -1, 1) if along_rows else rows.view(1, 1, 1, -1))
    return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))).abs().clamp(0, 1)


@_selected
def motion(sub: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Patient motion during the scan: part of k-space taken from a slightly moved copy of the slice.
    ``(x, use, generator)``."""
    moved = geometric(sub, generator, max_rotate=4.0, scale=(0.98, 1.02), max_shift=0.02)
    k, km = torch.fft.fft2(sub), torch.fft.fft2(moved)
    h = sub.shape[-2]
    freq = torch.fft.fftfreq(h, device=sub.device).abs().view(1, 1, -1, 1)
    cut = 0.05 + 0.2 * float(torch.rand(1, generator=generator))
    k = torch.where(freq > cut, km, k)  # outer k-space lines acquired after the movement
    return torch.fft.ifft2(k).abs().clamp(0, 1)


@_selected
def low_resolution(sub: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Acquired at 1/1.5 to 1/3 of the resolution (thick slices, small matrix), then interpolated back.
    ``(x, use, generator)``."""
    s = sub.shape[-1]
    f = 1.5 + 1.5 * float(torch.rand(1, generator=generator))
    small = F.interpolate(sub, size=max(8, int(s / f)), mode="area")
    return F.interpolate(small, size=s, mode="bilinear", align_corners=False).clamp(0, 1)


@_selected
def film(sub: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A photographed film: lifted (grey) background, lower contrast, a glare gradient, vignetting.
    ``(x, use, generator)``."""
    n, _, h, w = sub.shape
    r = torch.rand(n, 5, generator=generator).to(sub.device)
    base = (0.05 + 0.2 * r[:, 0]).view(n, 1, 1, 1)
    contrast = (0.6 + 0.35 * r[:, 1]).view(n, 1, 1, 1)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h, device=sub.device), torch.linspace(-1, 1, w, device=sub.device),
                            indexing="ij")
    angle = r[:, 2].view(n, 1, 1) * 2 * math.pi
    glare = (0.15 * r[:, 3]).view(n, 1, 1) * (torch.cos(angle) * xx + torch.sin(angle) * yy)
    vignette = 1 - 0.25 * r[:, 4].view(n, 1, 1) * (xx ** 2 + yy ** 2) / 2
    return ((base + contrast * sub + glare.unsqueeze(1)) * vignette.unsqueeze(1)).clamp(0, 1)


def _rescale(y: torch.Tensor) -> torch.Tensor:
    """Back into [0, 1]: an image the artefact lifted above 1 is scaled down by its maximum, not clipped."""
    peak = y.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
    return (y / peak).clamp(0, 1)


def _legendre(t: torch.Tensor, degree: int) -> torch.Tensor:
    """Legendre polynomials P_0..P_degree at points t: (degree + 1) x len(t)."""
    p = [torch.ones_like(t), t]
    for k in range(1, degree):
        p.append(((2 * k + 1) * t * p[k] - k * p[k - 1]) / (k + 1))
    return torch.stack(p[:degree + 1])


@_selected
def bias_field(sub: torch.Tensor, generator: torch.Generator, degree: int = 3,
               coeff_range: tuple[float, float] = (0.05, 0.3)) -> torch.Tensor:
    """A smooth multiplicative intensity field (coil inhomogeneity): MONAI's RandBiasField model, x * exp(sum of
    c_ij P_i(row) P_j(col) over j <= i <= degree), with c ~ U(coeff_range) drawn per image. ``(x, use, generator)``."""
    n, _, h, w = sub.shape
    rows, cols = torch.tril_indices(degree + 1, degree + 1)
    c = coeff_range[0] + (coeff_range[1] - coeff_range[0]) * torch.rand(n, len(rows), generator=generator)
    p_row = _legendre(torch.linspace(-1, 1, h, device=sub.device), degree)[rows]
    p_col = _legendre(torch.linspace(-1, 1, w, device=sub.device), degree)[cols]
    field = torch.einsum("nk,kh,kw->nhw", c.to(sub.device), p_row, p_col)
    return _rescale(sub * field.exp().unsqueeze(1))


@_selected
def gibbs_ringing(sub: torch.Tensor, generator: torch.Generator,
                  alpha: tuple[float, float] = (0.2, 0.7)) -> torch.Tensor:
    """Truncated k-space (ringing at edges): MONAI's GibbsNoise, k-space kept within a radius of (1 - alpha) x
    the half-diagonal, alpha ~ U(alpha) drawn per image. ``(x, use, generator)``."""
    n, _, h, w = sub.shape
    a = alpha[0] + (alpha[1] - alpha[0]) * torch.rand(n, generator=generator)
    radius = ((1 - a) * max(h, w) * math.sqrt(2) / 2).to(sub.device).view(n, 1, 1, 1)
    dy = (torch.arange(h, device=sub.device) - (h - 1) / 2) ** 2
    dx = (torch.arange(w, device=sub.device) - (w - 1) / 2) ** 2
    keep = (dy[:, None] + dx[None, :]).sqrt() <= radius
    k = torch.fft.fftshift(torch.fft.fft2(sub), dim=(-2, -1)) * keep
    return _rescale(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))).real)


@_selected
def rician_noise(sub: torch.Tensor, generator: torch.Generator, std: float = 0.04) -> torch.Tensor:
    """Magnitude-image noise: MONAI's RandRicianNoise, sqrt((x + n1)^2 + n2^2) with n1, n2 ~ N(0, s) and
    s ~ U(0, std) drawn per image. ``(x, use, generator)``."""
    s = (std * torch.rand(len(sub), generator=generator)).to(sub.device).view(-1, 1, 1, 1)
    n1, n2 = _randn(sub.shape, generator, sub.device) * s, _randn(sub.shape, generator, sub.device) * s
    return _rescale(torch.sqrt((sub + n1) ** 2 + n2 ** 2))


def augment(x: torch.Tensor, generator: torch.Generator, intensity: bool = True, curve_p: float = 0.3,
            mask: Optional[torch.Tensor] = None, mri: bool = False, strip_p: float = 0.15,
            artefact_p: float = 0.15, film_p: float = 0.05):
    """The full training augmentation of an N x 1 x S x S batch in [0, 1]: augment_geometry, then
    augment_appearance.

    ``mask`` (N x 1 x S x S, tumour masks) gets the same geometry; with a mask the return is (x, mask).
    ``mri`` adds the sequence, artefact and input-kind augmentations (skull stripping with probability
    ``strip_p``, each artefact with ``artefact_p``, film looks with ``film_p``)."""
    x, mask, _ = augment_geometry(x, generator, mask=mask, mri=mri, strip_p=strip_p)
    x = augment_appearance(x, generator, intensity, curve_p, mri=mri, artefact_p=artefact_p, film_p=film_p)
    return (x, mask) if mask is not None else x


def augment_geometry(x: torch.Tensor, generator: torch.Generator, mask: Optional[torch.Tensor] = None,
                     mri: bool = False, strip_p: float = 0.15):
    """The first half of ``augment``: skull stripping (with ``mri``), then flip, rotation, scale and shift (the
    mask too). Returns (x, mask or None, which images were stripped). Its output is the 'weak' view a teacher
    reads during distillation: the anatomy moved, the tissue contrast as acquired."""
    n = x.shape[0]
    zoom = None
    stripped = torch.zeros(n, dtype=torch.bool)
    if mri:
        stripped = torch.rand(n, generator=generator) < strip_p
        x = skull_strip(x, stripped)
        # the head crop frames a stripped brain as it framed the head: about 1/(1 - 2 * 0.08) larger
        zoom = torch.where(stripped, 1.15 + 0.1 * torch.rand(n, generator=generator), torch.ones(n))
    if mask is not None:
        both = geometric(torch.cat([x, mask.float()], 1), generator, zoom=zoom)
        x, mask = both[:, :1], both[:, 1:]
    else:
        x = geometric(x, generator, zoom=zoom)
    return x, mask, stripped


def augment_appearance(x: torch.Tensor, generator: torch.Generator, intensity: bool = True, curve_p: float = 0.3,
                       mri: bool = False, artefact_p: float = 0.15, film_p: float = 0.05) -> torch.Tensor:
    """The second half of ``augment``: tissue-contrast curves, inversion and photometric changes (``intensity``),
    then (with ``mri``) MRI artefacts and film looks."""
    n = x.shape[0]
    if intensity:
        x = intensity_curve(x, generator, p=curve_p)
        if mri:
            x = invert_tissue(x, torch.rand(n, generator=generator) < 0.1)
        x = photometric(x, generator)
    if mri:
        roll = lambda: torch.rand(n, generator=generator) < artefact_p  # noqa: E731
        x = bias_field(x, roll(), generator)
        x = ghosting(x, roll(), generator)
        x = motion(x, roll(), generator)
        x = low_resolution(x, roll(), generator)
        x = gibbs_ringing(x, roll(), generator)
        x = rician_noise(x, roll(), generator)
        x = film(x, torch.rand(n, generator=generator) < film_p, generator)
    return x


def save_augmentation_grid(path: str, out: str, size: int = 224, n: int = 15, seed: int = 0) -> None:
    """Save the prepared image and n training augmentations of it as one PNG grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .decode import read_image
    from .preprocess import prepare

    img, _ = prepare(read_image(path), size)
    base = torch.from_numpy(img).float().div(255).view(1, 1, size, size).repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    aug = augment(base, g, mri=True, strip_p=0.3, artefact_p=0.2, film_p=0.1).squeeze(1).numpy()
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


def strip_view(x01: torch.Tensor) -> torch.Tensor:
    """Every slice skull-stripped (the view of BraTS-style inputs), for fitting and checking the MRI detector."""
    return skull_strip(x01, torch.ones(len(x01), dtype=torch.bool))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """python -m brain_tumor.augment FILE [--out grid.png]: a slice and 15 of its training augmentations."""
    import argparse
    import sys

    from .config import HelpFormatter
    from .decode import ImageReadError

    parser = argparse.ArgumentParser(prog="python -m brain_tumor.augment", description=main.__doc__.split(": ")[1],
                                     formatter_class=HelpFormatter)
    parser.add_argument("file", help="an image or DICOM slice")
    parser.add_argument("--out", default="augmentations.png", help="where the grid is written")
    parser.add_argument("--img-size", type=int, default=224, help="the prepared square's side")
    args = parser.parse_args(argv)
    try:
        save_augmentation_grid(args.file, args.out, args.img_size)
    except (ImageReadError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
