"""Reading scans (JPEG/PNG/TIFF/... and DICOM), the one preprocessing path, dataset layouts and leakage-aware splits.

Every consumer -- training, evaluation, the CLI and the app -- goes through ``read_image`` and
``prepare``: decode to an 8-bit grayscale slice, crop to the head, pad to a square, resize.
Cropping to the head removes the image size and the border, the shortcuts that fooled the
original project; grayscale removes the colour cast of photographed films.

Dataset: Kaggle "Brain Tumor MRI Dataset" (Masoud Nickparvar, CC0 1.0), a merge of figshare
(Cheng et al.), SARTAJ and Br35H. Leakage warning: it is full of near-duplicate slices (the same
slice re-saved, neighbouring slices of one patient), so a per-image random split overstates
accuracy. ``near_duplicate_groups`` + ``grouped_split`` keep every group on one side.

    python -m brain_tumor.data DIR                       # counts, sizes, modes, shortcut flags, duplicates
    python -m brain_tumor.data download NAME DIR         # fetch a public data set (brain_tumor.download)
"""
from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from .config import (DICOM_SUFFIXES, IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, MAX_FILE_BYTES, MAX_PIXELS,
                     PREPROCESSING, canonical_class)

PathLike = Union[str, os.PathLike]


MAX_SIDE = math.isqrt(MAX_PIXELS)  # the square an image is padded to stays within MAX_PIXELS


class ImageReadError(ValueError):
    """An input that cannot be used as a scan, with a reason a person can act on."""


# --------------------------------------------------------------------------------------------- decoding

def _looks_like_dicom(head: bytes, suffix: str) -> bool:
    return head[128:132] == b"DICM" or suffix in (".dcm", ".dicom")


def read_image(source: Union[PathLike, bytes], frame: Optional[int] = None,
               max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Decode a file (or its bytes) to an 8-bit grayscale slice, H x W uint8.

    Images: JPEG, PNG, BMP, TIFF, WebP, GIF (first frame), any Pillow mode (16-bit, RGBA, palette, CMYK),
    EXIF orientation applied. DICOM: modality LUT, window centre/width or VOI LUT, MONOCHROME1 inverted;
    ``frame`` picks a slice of a multi-frame file (default: the middle one).
    Raises ImageReadError with a plain reason for anything else.
    """
    data, name = _read_bytes(source, max_bytes)
    suffix = Path(name).suffix.lower()
    if _looks_like_dicom(data[:132], suffix):
        return _read_dicom(data, frame)
    return _read_pillow(data, frame)


def _read_bytes(source: Union[PathLike, bytes], max_bytes: int) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), ""
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(f"file not found: {path.name}")
        if not path.is_file():
            raise ImageReadError(f"not a file: {path.name}")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageReadError(f"file too large: {size / 1e6:.1f} MB (limit {max_bytes / 1e6:.0f} MB)")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageReadError(f"cannot read file: {e.strerror or e}") from None
        name = path.name
    if len(data) == 0:
        raise ImageReadError("empty file")
    if len(data) > max_bytes:
        raise ImageReadError(f"file too large: {len(data) / 1e6:.1f} MB (limit {max_bytes / 1e6:.0f} MB)")
    return data, name


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to 0..255 by its own range (a flat image becomes zeros).

    Works in blocks of rows so that a large 16-bit or float image never has a float64 copy made whole."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros(arr.shape, dtype=np.uint8)
    if arr.size == 0:
        return out
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return out
    scale = 255.0 / (hi - lo)
    step = max(1, (1 << 20) // max(1, arr[0].size))
    for i in range(0, len(arr), step):
        out[i:i + step] = np.round((arr[i:i + step].astype(np.float64) - lo) * scale)
    return out


_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP"}


def _image_format(head: bytes) -> Optional[str]:
    """The format a file's first bytes announce, to say 'corrupt PNG' rather than 'not an image'."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _SIGNATURES.items() if head.startswith(sig)), None)


def _check_pixels(w: int, h: int) -> None:
    """Refuse before decoding what would cost too much: more than MAX_PIXELS, or a side longer than MAX_SIDE
    (a 1 x 60000 strip is padded to a 60000 x 60000 square by ``prepare``, and its heat map with it)."""
    if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
        raise ImageReadError(f"image too large: {w} x {h} pixels (limit {MAX_PIXELS // 1_000_000} megapixels, "
                             f"{MAX_SIDE} pixels a side); possibly a decompression bomb")
    if w < 1 or h < 1:
        raise ImageReadError("image has no pixels")


def _read_pillow(data: bytes, frame: Optional[int]) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        kind = _image_format(data[:16])
        raise ImageReadError(f"corrupt {kind} file: its header cannot be read" if kind
                             else "not a supported image or DICOM file") from None
    except Image.DecompressionBombError:  # Pillow's own check, at twice its MAX_IMAGE_PIXELS
        raise ImageReadError(f"image too large (limit {MAX_PIXELS // 1_000_000} megapixels); "
                             "possibly a decompression bomb") from None
    except Exception as e:  # Pillow raises many kinds on corrupt headers
        raise ImageReadError(f"cannot open image: {_short(e)}") from None
    _check_pixels(*im.size)
    try:
        if frame:
            n_frames = getattr(im, "n_frames", 1)
            if not 0 <= frame < n_frames:
                raise ImageReadError(f"frame {frame} out of range: the file has {n_frames} frame(s)")
            im.seek(frame)
            _check_pixels(*im.size)  # each page of a TIFF has its own size
        im = ImageOps.exif_transpose(im) or im
        im.load()
        return _pillow_to_gray(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError:
        raise ImageReadError("image too large: possibly a decompression bomb") from None
    except Exception as e:
        raise ImageReadError(f"corrupt or truncated image: {_short(e)}") from None


def _pillow_to_gray(im: Image.Image) -> np.ndarray:
    """Any Pillow mode to H x W uint8; transparency is composited on black (the MRI background).

    Conversions go straight to one 8-bit band, so a large RGBA image costs a few bytes a pixel, not tens."""
    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _to_uint8(np.asarray(im))
    if mode == "LAB":
        return np.asarray(im.getchannel("L"), dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        if mode in ("P", "PA"):
            im = im.convert("LA")
        im = ImageChops.multiply(im.convert("L"), im.getchannel("A"))  # over black: luminance x alpha
    elif mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8).copy()


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _read_dicom(data: bytes, frame: Optional[int]) -> np.ndarray:
    import pydicom
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom can raise almost anything on a damaged file
        raise ImageReadError(f"corrupt or truncated DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds:
        raise ImageReadError("DICOM file has no image (no pixel data): it may be a report or other non-image object")
    _check_decoder(ds)
    try:
        rows, cols, n_frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:
        raise ImageReadError(f"corrupt DICOM image header ({type(e).__name__})") from None
    _check_pixels(cols, rows)  # before decoding: a compressed frame is allocated whole
    index = _frame_index(n_frames, frame)
    try:
        arr = pixel_array(ds, index=index if n_frames > 1 else None)  # only the frame we show is decoded
    except Exception as e:
        raise ImageReadError(f"corrupt or truncated DICOM pixel data ({type(e).__name__})") from None
    try:
        return dicom_to_gray(ds, arr, frame)
    except ImageReadError:
        raise
    except Exception as e:  # header values (LUT, window, colour space) that cannot be applied
        raise ImageReadError(f"DICOM pixel values cannot be displayed ({type(e).__name__})") from None


def _check_decoder(ds) -> None:
    """Refuse, naming it, a transfer syntax no installed decoder handles (e.g. JPEG-LS without pylibjpeg)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if syntax is None:  # a bare dataset without file meta: its pixels are native, encoded as it was read
            implicit, little = ds.original_encoding
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            ds.file_meta.TransferSyntaxUID = syntax
        valid = syntax.is_valid
    except Exception as e:
        raise ImageReadError(f"corrupt DICOM file meta information ({type(e).__name__})") from None
    if not valid:  # never echo it: a damaged length could make it swallow the patient fields that follow
        raise ImageReadError("DICOM transfer syntax UID is invalid")
    try:
        available = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError, TypeError):
        available = False
    if not available:
        name = syntax.name if syntax.name != str(syntax) else "unknown"
        raise ImageReadError(f"DICOM transfer syntax not supported here: {name} ({syntax})")


def _frame_index(n_frames: int, frame: Optional[int]) -> int:
    """The frame to show: ``frame``, or the middle one; an ImageReadError if out of range."""
    index = n_frames // 2 if frame is None else frame
    if not 0 <= index < n_frames:
        raise ImageReadError(f"frame {index} out of range: the DICOM file has {n_frames} frame(s)")
    return index


def dicom_frame_count(source: Union[PathLike, bytes]) -> int:
    """Number of frames in a DICOM file (1 for single-frame files and for ordinary images)."""
    data, name = _read_bytes(source, MAX_FILE_BYTES)
    if not _looks_like_dicom(data[:132], Path(name).suffix.lower()):
        return 1
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        return int(getattr(ds, "NumberOfFrames", 1) or 1)
    except Exception:
        return 1


def dicom_to_gray(ds, arr: np.ndarray, frame: Optional[int] = None) -> np.ndarray:
    """Turn decoded DICOM pixels into an 8-bit display slice: modality LUT, VOI window, MONOCHROME1 inverted.

    ``arr``: all frames (``frame`` picks one, default the middle) or the one frame already decoded.
    Colour pixels are expected as RGB (pydicom converts YBR on decoding)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    color = int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1
    index = _frame_index(n_frames, frame)
    if n_frames > 1 and arr.ndim == (4 if color else 3):
        arr = arr[index]
    if color:
        return cv2.cvtColor(_to_uint8(arr), cv2.COLOR_RGB2GRAY) if arr.ndim == 3 else _to_uint8(arr)
    if arr.ndim != 2:
        raise ImageReadError(f"unexpected DICOM pixel array shape {arr.shape}")
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:  # rescale in float32, in place: a large slice never gets a float64 copy
        values = arr.astype(np.float32)
        slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            values *= slope
            values += intercept
    if not np.isfinite(values).all():  # absurd rescale values overflow float32
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and math.isfinite(center) and 1 < width < math.inf:
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        values -= lo
        values *= 255.0 / (hi - lo)
        np.clip(values, 0.0, 255.0, out=values)
        out = np.rint(values, out=values).astype(np.uint8)
    elif "VOILUTSequence" in ds:
        out = _to_uint8(apply_voi_lut(values, ds))
    else:
        out = _to_uint8(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _first(value) -> Optional[float]:
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------------- the one preprocessing

@dataclass(frozen=True)
class Crop:
    """Square crop of the original image (may extend past its edges, where it is zero-padded)."""

    x0: int
    y0: int
    side: int
    height: int  # original image size
    width: int


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
    blur = cv2.GaussianBlur(small, (5, 5), 0)
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


# ------------------------------------------------------------------------------------------ dataset layouts

@dataclass
class ImageFolder:
    """Images under class folders: paths, integer labels, and the class names (sorted folder names)."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


_SPLIT_NAMES = {"train": ("training", "train"), "test": ("testing", "test"), "val": ("validation", "val", "valid")}


def is_image_file(path: Path) -> bool:
    """Scan files by name: known image suffixes, .dcm, or no suffix (DICOM often has none)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES


def list_images(folder: PathLike) -> list[Path]:
    """Every scan file under a folder, walked recursively, in sorted order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_class_folders(root: PathLike) -> ImageFolder:
    """A root whose sub-folders are classes. Folder names are canonicalised (``glioma_tumor`` -> ``glioma``,
    ``no`` -> ``notumor``, ``yes`` -> ``tumor``) so that class names travel consistently into the checkpoint."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    by_class: dict[str, list[Path]] = {}
    for d in folders:
        files = list_images(d)
        if files:
            by_class.setdefault(canonical_class(d.name), []).extend(files)
    if len(by_class) < 2:
        raise ValueError(f"{root} needs at least two class folders holding images "
                         f"(e.g. glioma/ meningioma/ notumor/ pituitary/, or yes/ no/); found {[d.name for d in folders]}")
    classes = sorted(by_class)
    paths, labels = [], []
    for i, c in enumerate(classes):
        for p in sorted(by_class[c]):
            paths.append(p)
            labels.append(i)
    return ImageFolder(paths, labels, classes)


def find_splits(root: PathLike) -> dict[str, ImageFolder]:
    """Read a dataset root: Kaggle style (``Training/``, ``Testing/``) or a plain root of class folders.

    Returns ``{"train": ..., "test": ...}`` for the first, ``{"train": ...}`` for the second.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder not found: {root}")
    subdirs = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    splits = {}
    for split, names in _SPLIT_NAMES.items():
        for n in names:
            if n in subdirs:
                splits[split] = read_class_folders(subdirs[n])
                break
    if splits:
        if "train" not in splits:
            raise ValueError(f"{root} has {sorted(splits)} split folders but no Training/ folder")
        return splits
    return {"train": read_class_folders(root)}


# --------------------------------------------------------------------------------- near-duplicates and splits

def thumbnail(gray: np.ndarray, size: int = 32) -> np.ndarray:
    """Small float thumbnail used to find near-duplicate slices."""
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


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


# ----------------------------------------------------------------------------------------- batch loading

def load_prepared(paths: Sequence[PathLike], size: int, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[Optional[str]]]:
    """Decode each file once: (N x size x size uint8 prepared slices, N x 1024 thumbnails, errors per file)."""
    from tqdm import tqdm

    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    thumbs = np.zeros((len(paths), 1024), dtype=np.float32)
    errors: list[Optional[str]] = [None] * len(paths)
    for i, p in enumerate(tqdm(paths, desc="decoding", unit="img", disable=not progress, leave=False)):
        try:
            gray = read_image(p)
        except ImageReadError as e:
            errors[i] = str(e)
            continue
        images[i], _ = prepare(gray, size)
        thumbs[i] = thumbnail(gray)
    return images, thumbs, errors


# ------------------------------------------------------------------------------------------- inspection CLI

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


def main(argv: Optional[Iterable[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:  # python -m brain_tumor.data download NAME DIR
        from .download import main as download_main
        return download_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.data", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     epilog="python -m brain_tumor.data download NAME DIR fetches a public data set "
                                            "(see: python -m brain_tumor.data download --help)")
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
