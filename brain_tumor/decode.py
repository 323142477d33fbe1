"""Decoding scan files to an 8-bit grayscale slice: JPEG/PNG/BMP/TIFF/WebP/GIF and DICOM (compressed too).

``read_image`` is the only door: a path or bytes in, H x W uint8 out, or an ImageReadError whose message a
person can act on (missing, empty, too large, decompression bomb, corrupt, unsupported, DICOM without pixels or
without a decoder). It needs no torch. DICOM: modality LUT, VOI window or LUT, MONOCHROME1 inverted, one frame
of a multi-frame file.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from .config import MAX_FILE_BYTES, MAX_PIXELS, MAX_SLICES

PathLike = Union[str, os.PathLike]

MAX_SIDE = math.isqrt(MAX_PIXELS)  # the square an image is padded to stays within MAX_PIXELS


class ImageReadError(ValueError):
    """An input that cannot be used as a scan, with a reason a person can act on."""

def _looks_like_dicom(head: bytes, suffix: str) -> bool:
    """The DICM mark after the preamble, a DICOM name, or (a file written without preamble) a first tag of group
    0002 or 0008 with a small element number: no image format starts so."""
    return (head[128:132] == b"DICM" or suffix in (".dcm", ".dicom")
            or (head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"))


PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")  # the last two: parametric maps (ADC)


def has_pixels(ds) -> bool:
    return any(k in ds for k in PIXEL_KEYWORDS)


def read_image(source: Union[PathLike, bytes], frame: Optional[int] = None,
               max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """Decode a file (or its bytes) to an 8-bit grayscale slice, H x W uint8.

    Images: JPEG, PNG, BMP, TIFF, WebP, GIF (first frame), any Pillow mode (16-bit, RGBA, palette, CMYK),
    EXIF orientation applied. DICOM: modality LUT, window centre/width or VOI LUT, MONOCHROME1 inverted;
    ``frame`` picks a slice of a multi-frame file (default: the middle one).
    Raises ImageReadError with a plain reason for anything else.
    """
    return _decode(*read_bytes(source, max_bytes), frame)


def _decode(data: bytes, name: str, frame: Optional[int] = None) -> np.ndarray:
    """read_image on bytes already read (``name`` for its suffix)."""
    suffix = Path(name).suffix.lower()
    if _looks_like_dicom(data[:132], suffix):
        return _read_dicom(data, frame)
    try:
        return _read_pillow(data, frame)
    except ImageReadError as e:
        if suffix in OTHER_FORMATS and str(e) == NOT_SUPPORTED:  # a volume format we do not read: say which
            raise ImageReadError(f"{OTHER_FORMATS[suffix]} files are not read: convert the volume to NIfTI "
                                 "(.nii.gz), e.g. with nibabel") from None
        raise


NOT_SUPPORTED = "not a supported image or DICOM file"
OTHER_FORMATS = {".mgz": "FreeSurfer MGH", ".mgh": "FreeSurfer MGH", ".hdr": "Analyze (.hdr/.img)",
                 ".img": "Analyze (.hdr/.img)", ".mnc": "MINC", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
                 ".mhd": "MetaImage", ".par": "Philips PAR/REC", ".rec": "Philips PAR/REC"}  # volumes named, not guessed


def read_bytes(source: Union[PathLike, bytes], max_bytes: int) -> tuple[bytes, str]:
    """(the bytes, the file's name) of a path or bytes, refused with a reason when missing, empty or too large."""
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
                             else NOT_SUPPORTED) from None
    except Image.DecompressionBombError:  # Pillow's own check, at twice its MAX_IMAGE_PIXELS
        raise ImageReadError(f"image too large (limit {MAX_PIXELS // 1_000_000} megapixels); "
                             "possibly a decompression bomb") from None
    except Exception as e:  # Pillow raises many kinds on corrupt headers
        raise ImageReadError(f"cannot open image: {short_reason(e)}") from None
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
        raise ImageReadError(f"corrupt or truncated image: {short_reason(e)}") from None


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


def short_reason(e: Exception) -> str:
    """A decoder's exception as one short line for a person (its first line, at most 120 characters)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:120]


def _read_dicom(data: bytes, frame: Optional[int]) -> np.ndarray:
    ds, n_frames = _open_dicom(data)
    return _dicom_frame(ds, n_frames, frame)


def read_frames(source: Union[PathLike, bytes]) -> list[np.ndarray]:
    """Every frame of a multi-frame DICOM file, in order, each as ``read_image(source, frame=k)`` gives it; the file
    is parsed once, not once a frame. Another image is its one picture. More than MAX_SLICES frames are refused."""
    data, name = read_bytes(source, MAX_FILE_BYTES)
    if not _looks_like_dicom(data[:132], Path(name).suffix.lower()):
        return [_decode(data, name)]  # (its name too: read_image names the volume formats it does not read)
    ds, n_frames = _open_dicom(data)
    if n_frames > MAX_SLICES:
        raise ImageReadError(f"the DICOM file has {n_frames:,} frames (limit {MAX_SLICES:,})")
    return [_dicom_frame(ds, n_frames, k) for k in range(n_frames)]


def _open_dicom(data: bytes):
    """The parsed dataset and its frame count, refused (ImageReadError) if no installed decoder can show it."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom can raise almost anything on a damaged file
        raise ImageReadError(f"corrupt or truncated DICOM file ({type(e).__name__})") from None
    if not has_pixels(ds):
        raise ImageReadError("DICOM file has no image (no pixel data): it may be a report or other non-image object")
    check_decoder(ds)
    try:
        rows, cols, n_frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:
        raise ImageReadError(f"corrupt DICOM image header ({type(e).__name__})") from None
    _check_pixels(cols, rows)  # before decoding: a compressed frame is allocated whole
    return ds, n_frames


def _dicom_frame(ds, n_frames: int, frame: Optional[int]) -> np.ndarray:
    """Frame ``frame`` (None: the middle one) of an opened dataset, decoded alone, as 8-bit grayscale."""
    from pydicom.pixels import pixel_array

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


def check_decoder(ds) -> None:
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
    """Number of frames in a DICOM file (1 for single-frame files and for ordinary images). A readable file is
    read only up to its pixel data (the CLI asks this of every DICOM before decoding it)."""
    path = None if isinstance(source, (bytes, bytearray)) else Path(source)
    if path is not None and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
        with open(path, "rb") as f:
            head = f.read(132)
        stream, suffix = path, path.suffix.lower()
    else:  # bytes, or a path read_bytes refuses with its reason (missing, not a file, too large)
        data, name = read_bytes(source, MAX_FILE_BYTES)
        head, stream, suffix = data[:132], io.BytesIO(data), Path(name).suffix.lower()
    if not _looks_like_dicom(head, suffix):
        return 1
    import pydicom
    try:
        ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
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
        raise ImageReadError(f"DICOM pixel data does not match its header ({n_frames} frame(s) of "
                             f"{getattr(ds, 'Rows', '?')} x {getattr(ds, 'Columns', '?')}): decoded as {arr.shape}")
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:  # rescale in float32, in place: a large slice never gets a float64 copy
        values = arr.astype(np.float32)
        slope, intercept = first_number(ds.get("RescaleSlope")), first_number(ds.get("RescaleIntercept"))
        if slope is not None and intercept is not None:
            values *= slope
            values += intercept
    if not np.isfinite(values).all():  # absurd rescale values overflow float32
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    center, width = first_number(getattr(ds, "WindowCenter", None)), first_number(getattr(ds, "WindowWidth", None))
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


def first_number(value) -> Optional[float]:
    """A DICOM value (a number, or its first item when multi-valued) as a float; None when absent or not a number."""
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None
