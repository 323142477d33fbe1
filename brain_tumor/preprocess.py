"""The one preprocessing path, from a decoded slice to the network's input: head crop, square, resize, normalise.

Training, evaluation, the CLI and the app all call ``prepare`` (blank a white page or film frame around the slice,
crop to the head, pad to a square, resize) and
``to_tensor`` / ``normalise`` (grayscale on three channels, mean/std, channels-last). Cropping to the head
removes the image size and the border, the shortcuts that fooled the original project. The crop's numbers are
data: a checkpoint's config carries them and ``preprocessing_settings`` reads them back (today's defaults,
config.PREPROCESSING, where an older checkpoint has none).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from .config import IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING

@dataclass(frozen=True)
class Crop:
    """Square crop of the original image (may extend past its edges, where it is zero-padded)."""

    x0: int
    y0: int
    side: int
    height: int  # original image size
    width: int


def bright_margins(gray: np.ndarray, level: float = 128.0, tol: float = 6.0,
                   share: float = 0.8) -> tuple[int, int, int, int]:
    """Rows (top, bottom) and columns (left, right) of a bright, uniform margin around the image: the white page
    or film frame of a slice copied from a paper, a report or a screenshot. A margin line is one whose median is at
    least ``level`` and at least ``share`` of whose pixels lie within ``tol`` of it (so a label or a letter written
    on the page does not end the margin); at most a third of each side is taken. Lines are read from the edge
    inwards until one is not margin (one line for most slices)."""
    h, w = gray.shape

    def run(line, limit: int) -> int:
        n = 0
        while n < limit:
            values = line(n).astype(np.float32)
            middle = float(np.median(values))
            if middle < level or np.mean(np.abs(values - middle) <= tol) < share:
                break
            n += 1
        return n

    return (run(lambda i: gray[i], h // 3), run(lambda i: gray[h - 1 - i], h // 3),
            run(lambda i: gray[:, i], w // 3), run(lambda i: gray[:, w - 1 - i], w // 3))


def blank_frame(gray: np.ndarray) -> np.ndarray:
    """The slice with its bright uniform margin (``bright_margins``) set to black, as an MRI's background is; the
    same array when it has none."""
    top, bottom, left, right = bright_margins(gray)
    if not (top or bottom or left or right):
        return gray
    out = gray.copy()
    h, w = gray.shape
    out[:top], out[h - bottom:], out[:, :left], out[:, w - right:] = 0, 0, 0, 0
    return out


def head_mask(gray: np.ndarray, otsu_fraction: float = PREPROCESSING["crop_otsu_fraction"],
              min_threshold: float = PREPROCESSING["crop_min_threshold"],
              min_area: float = PREPROCESSING["crop_min_area"]) -> np.ndarray:
    """Boolean mask of the head: Otsu threshold, largest non-frame component, holes filled.

    Works on the image's own intensities, so it also serves as the reference for 'how much of the
    heat map lies inside the head'. Returns all-True when no plausible head is found.
    """
    h, w = gray.shape
    scale = 256.0 / max(h, w)
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else gray
    blur = cv2.GaussianBlur(blank_frame(small), (5, 5), 0)  # a page or film frame is background, not head
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thresh = max(float(min_threshold), float(otsu_fraction) * otsu)
    binary = (blur > thresh).astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    sh, sw = binary.shape
    best, best_area = 0, 0
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        frame_like = bw >= 0.97 * sw and bh >= 0.97 * sh and area < 0.5 * bw * bh
        if not frame_like and area > best_area:
            best, best_area = i, area
    if best == 0 or best_area < float(min_area) * sh * sw:
        return np.ones((h, w), dtype=bool)
    comp = (labels == best).astype(np.uint8)
    # fill holes: flood the background from outside the component
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(comp)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    if filled.shape != (h, w):
        filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST)
    return filled.astype(bool)


def head_crop(gray: np.ndarray, margin: float = PREPROCESSING["crop_margin"], **mask_settings) -> Crop:
    """The square around the head, with a small margin; the whole image (padded square) if no head is found."""
    h, w = gray.shape
    mask = head_mask(gray, **mask_settings)
    ys, xs = np.nonzero(mask)
    if mask.all() or len(xs) == 0:
        x0, x1, y0, y1 = 0, w, 0, h
    else:
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(side, 1)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return Crop(int(round(cx - side / 2)), int(round(cy - side / 2)), side, h, w)


def apply_crop(gray: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """Cut the crop out of the image (zero outside it) and resize to size x size."""
    h, w = gray.shape
    canvas = np.zeros((crop.side, crop.side), dtype=np.uint8)
    sx0, sy0 = max(crop.x0, 0), max(crop.y0, 0)
    sx1, sy1 = min(crop.x0 + crop.side, w), min(crop.y0 + crop.side, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - crop.y0:sy1 - crop.y0, sx0 - crop.x0:sx1 - crop.x0] = gray[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if crop.side > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interp)


def preprocessing_settings(given: Optional[dict] = None) -> dict[str, float]:
    """The head crop's settings from a checkpoint's ``preprocessing`` block: its numbers where it has them, today's
    defaults (config.PREPROCESSING) for the rest; other keys (the words describing each step) are ignored.
    Raises ValueError for a value out of range."""
    out = dict(PREPROCESSING)
    for key, value in (given or {}).items():
        if key in PREPROCESSING:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"preprocessing {key} must be a number, got {str(value)[:20]}")
            out[key] = float(value)
    limits = {"crop_margin": (0.0, 1.0), "crop_otsu_fraction": (0.0, 2.0), "crop_min_threshold": (0.0, 255.0),
              "crop_min_area": (0.0, 1.0)}
    for key, (lo, hi) in limits.items():
        if not lo <= out[key] <= hi:
            raise ValueError(f"preprocessing {key} must be in [{lo}, {hi}], got {out[key]}")
    return out


def prepare(gray: np.ndarray, size: int, settings: Optional[dict] = None) -> tuple[np.ndarray, Crop]:
    """The one preprocessing path: crop to the head, pad square, resize. Returns (size x size uint8, crop).

    ``settings``: a checkpoint's ``preprocessing`` block (preprocessing_settings fills in what it lacks)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"prepare expects an H x W uint8 slice, got {gray.dtype} {gray.shape}")
    s = preprocessing_settings(settings)
    gray = blank_frame(gray)
    crop = head_crop(gray, s["crop_margin"], otsu_fraction=s["crop_otsu_fraction"],
                     min_threshold=s["crop_min_threshold"], min_area=s["crop_min_area"])
    return apply_crop(gray, crop, size), crop


def uncrop(heat: np.ndarray, crop: Crop) -> np.ndarray:
    """Map a map computed on the prepared square back onto the original H x W image (zero outside the crop)."""
    out = np.zeros((crop.height, crop.width), dtype=np.float32)
    big = cv2.resize(heat.astype(np.float32), (crop.side, crop.side), interpolation=cv2.INTER_LINEAR)
    sx0, sy0 = max(crop.x0, 0), max(crop.y0, 0)
    sx1, sy1 = min(crop.x0 + crop.side, crop.width), min(crop.y0 + crop.side, crop.height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = big[sy0 - crop.y0:sy1 - crop.y0, sx0 - crop.x0:sx1 - crop.x0]
    return out


def normalise(x01, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """N x 1 x S x S (or N x 3) float tensor in [0, 1] -> N x 3 x S x S normalised by mean/std, channels-last: the
    network's input. The last step of the one preprocessing path (to_tensor), and of training's augmented batches."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    return ((x01.expand(-1, 3, -1, -1) - m) / s).contiguous(memory_format=torch.channels_last)


def to_tensor(batch: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
    """N x S x S uint8 (or S x S) -> N x 3 x S x S float tensor, normalised, channels-last."""
    import torch

    arr = np.asarray(batch)
    if arr.ndim == 2:
        arr = arr[None]
    return normalise(torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0).unsqueeze(1), mean, std)


def thumbnail(gray: np.ndarray, size: int = 32) -> np.ndarray:
    """Small float thumbnail used to find near-duplicate slices."""
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
