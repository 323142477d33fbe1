"""Volumes: NIfTI files and DICOM series read as axial slices in radiological orientation, windowed to 8 bits.

    >>> vol = read_volume("scan.nii.gz")        # or a .zip of one DICOM series, or a list of .dcm files
    >>> vol.slices.shape                        # K x H x W uint8; slice 0 is the most inferior
    >>> predictor.predict(list(vol.slices))     # one answer per axial slice

Orientation comes from the file's own geometry, never from file names or storage order: the NIfTI affine, or
DICOM Image Position / Image Orientation (Patient), slices sorted by their position along the slice normal.
The volume is turned to the nearest RAS axes (no resampling) and each axial slice is shown as radiologists
read it: anterior up, the patient's right on the image's left. The window is set once for the whole volume
(the DICOM window of the series when it has one, else the 0.5-99.5 percentiles of the voxels that are not
background), so slices compare, and z-scored research volumes, float or 16-bit, all give a viewable image.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from .config import MAX_FILE_BYTES, MAX_SLICES
from .decode import MAX_SIDE, ImageReadError, check_decoder, first_number, has_pixels, read_bytes, short_reason

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zip")
MAX_VOXELS = 48_000_000  # refuse volumes whose header claims more (memory: 4 bytes a voxel while windowing)
MAX_SERIES_FILES = 2048  # DICOM files in one series, or members of one zip
MAX_UNZIPPED_BYTES = 8 * MAX_FILE_BYTES  # a zip's members together, uncompressed (zip bombs)
MAX_PADDED = 4 * MAX_VOXELS  # slices x (longest side)^2: each slice is padded to a square before it is answered
MAX_ASPECT = 8.0  # pixel spacing ratios beyond this are not a scan's: such a volume is shown as stored

PathLike = Union[str, Path]


@dataclass
class Volume:
    """Axial slices, K x H x W uint8: slice 0 the most inferior, anterior up, the patient's right on the left."""

    slices: np.ndarray
    name: str = ""
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm: between slices, rows, columns
    notes: list[str] = field(default_factory=list)  # what a user should know (a series picked, geometry missing)

    def __len__(self) -> int:
        return len(self.slices)


def is_volume(path: PathLike) -> bool:
    """A file read as a volume, by name: ``.nii``, ``.nii.gz`` or ``.zip`` (one DICOM series)."""
    name = str(path).lower()
    return name.endswith(VOLUME_SUFFIXES)


def read_volume(source: Union[PathLike, Sequence[PathLike]], max_bytes: int = MAX_FILE_BYTES) -> Volume:
    """Read a NIfTI file, a zip of one DICOM series, or a list of DICOM files (one series) as axial slices.

    Raises ImageReadError with a plain reason for anything that is not such a volume."""
    try:
        if not isinstance(source, (str, Path)):
            files = [(Path(p).name, read_bytes(p, max_bytes)[0]) for p in source]
            return read_dicom_series(files, name=f"{len(files)} DICOM files")
        path = Path(source)
        lower = path.name.lower()
        if lower.endswith(".zip"):
            return read_dicom_series(_unzip(path, max_bytes), name=path.name)
        if lower.endswith((".nii", ".nii.gz")):
            return read_nifti(path, max_bytes)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError("not enough memory to read this volume") from None
    except Exception as e:  # a malformed header or geometry that slipped past the checks: refused, never a crash
        raise ImageReadError(f"not a readable volume ({short_reason(e)})") from None
    raise ImageReadError(f"not a volume file (expected .nii, .nii.gz or a .zip of a DICOM series): {path.name}")


def _too_costly(k: int, h: int, w: int) -> Optional[str]:
    """Why k axial slices of h x w would cost far more than a scan's to answer (each is padded to a square): too
    many slices, a side longer than a slice may have, or long thin slices; None when they would not."""
    if k > MAX_SLICES:
        return f"the volume has {k:,} slices (limit {MAX_SLICES:,}): not a scan"
    if max(h, w) > MAX_SIDE:
        return f"the volume's slices are {w} x {h} pixels (limit {MAX_SIDE} a side): not a scan"
    if k * max(h, w) ** 2 > MAX_PADDED:
        return f"{k:,} slices of {w} x {h} pixels: too long and thin to be a scan's"
    return None


# ------------------------------------------------------------------------------------------------ NIfTI

def read_nifti(path: PathLike, max_bytes: int = MAX_FILE_BYTES) -> Volume:
    import nibabel as nib

    data, name = read_bytes(path, max_bytes)  # size and existence checked, as for slices
    raw = _gunzip(data) if data[:2] == b"\x1f\x8b" else data
    image, error = None, None
    with _quiet("nibabel.global"):  # trying NIfTI-1 on a NIfTI-2 file logs its header's "errors" to stderr
        for kind in (nib.Nifti1Image, nib.Nifti2Image):
            try:
                image = kind.from_bytes(raw)
                break
            except Exception as e:  # nibabel raises many kinds on a file that is not its format
                error = e
    if image is None:
        raise ImageReadError(f"not a readable NIfTI file ({short_reason(error)})")
    shape = tuple(int(s) for s in image.shape)
    notes = []
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) < 3 or min(shape[:3]) < 1:
        raise ImageReadError(f"NIfTI image has shape {shape}: not a volume")
    if math.prod(shape[:3]) > MAX_VOXELS:
        raise ImageReadError(f"volume too large: {shape[0]}x{shape[1]}x{shape[2]} voxels (limit {MAX_VOXELS:,})")
    if len(image.shape) > 3 and min(image.shape[3:]) < 1:
        raise ImageReadError(f"NIfTI image has shape {tuple(image.shape)}: no volume in it")
    dtype = image.get_data_dtype()
    if dtype.names:  # RGB24 / RGBA32 voxels
        raise ImageReadError("NIfTI image with colour (RGB) voxels: not an MRI volume this model reads")
    try:
        proxy = image.dataobj
        values = np.asarray(proxy[(slice(None),) * 3 + (0,) * (len(image.shape) - 3)] if len(image.shape) > 3
                            else proxy)
        if np.iscomplexobj(values):  # complex MR data: its magnitude is the image
            values = np.abs(values)
            notes.append("complex voxels: their magnitude is shown")
        values = values.astype(np.float32, copy=False)
    except Exception as e:
        raise ImageReadError(f"corrupt or truncated NIfTI data ({short_reason(e)})") from None
    if len(image.shape) > 3:
        notes.append(f"a {len(image.shape)}-D image: its first 3-D volume is shown")
    values = values.reshape(shape[:3])
    affine = image.affine
    if affine is None or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        affine = np.eye(4)
        notes.append("the file has no usable orientation: slices are shown as stored")
    return _from_ras(values, affine, name, notes)


@contextlib.contextmanager
def _quiet(name: str):
    """Logger ``name`` silenced for the block."""
    logger = logging.getLogger(name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


def _gunzip(data: bytes) -> bytes:
    """Decompress a .gz in memory, refusing more than a volume may hold (gzip bombs)."""
    import zlib

    limit = MAX_VOXELS * 8 + (1 << 20)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit)
    except zlib.error:
        raise ImageReadError("corrupt .gz file") from None
    if d.unconsumed_tail:
        raise ImageReadError(f"volume too large once decompressed (limit {limit / 1e6:.0f} MB)")
    return out


# ------------------------------------------------------------------------------------------------ DICOM

def _unzip(path: Path, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a zip, in memory (nothing is extracted to disk, so member names cannot reach outside)."""
    data, _ = read_bytes(path, max_bytes)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not _hidden(m.filename)]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ImageReadError(f"not a readable zip file ({short_reason(e)})") from None
    if not members:
        raise ImageReadError("the zip file holds no files")
    if len(members) > MAX_SERIES_FILES:
        raise ImageReadError(f"the zip file holds {len(members)} files (limit {MAX_SERIES_FILES})")
    if sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
        raise ImageReadError(f"the zip file unpacks to more than {MAX_UNZIPPED_BYTES / 1e6:.0f} MB")
    files, total = [], 0
    for m in members:
        if m.flag_bits & 0x1:
            raise ImageReadError("the zip file is encrypted")
        try:
            with archive.open(m) as f:
                content = f.read(max_bytes + 1)  # the stream stops at the declared size; a lying header cannot grow it
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, EOFError) as e:
            raise ImageReadError(f"corrupt zip member {Path(m.filename).name!r} ({short_reason(e)})") from None
        total += len(content)
        if len(content) > max_bytes or total > MAX_UNZIPPED_BYTES:
            raise ImageReadError(f"the zip file unpacks to more than {MAX_UNZIPPED_BYTES / 1e6:.0f} MB")
        files.append((m.filename, content))
    return files


def _hidden(name: str) -> bool:
    return any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX"
               for part in name.replace("\\", "/").split("/"))


def read_dicom_series(files: Sequence[tuple[str, bytes]], name: str = "") -> Volume:
    """One DICOM series from (name, bytes) pairs: slices sorted by position along the slice normal, and turned
    to radiological axial view from Image Orientation / Position (Patient)."""
    import pydicom
    from pydicom.pixels import pixel_array

    slices, skipped = [], 0
    for fname, data in files:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            ok = has_pixels(ds) and int(getattr(ds, "NumberOfFrames", 1) or 1) == 1
        except Exception:
            ok = False
        if not ok:
            skipped += 1  # DICOMDIR, reports, text files, multi-frame objects: not slices of this series
            continue
        slices.append((fname, ds))
    if not slices:
        raise ImageReadError("no single-frame DICOM images found: a series is a .zip (or a set) of .dcm slices")
    notes = []
    series: dict[str, list] = {}
    for item in slices:
        series.setdefault(str(item[1].get("SeriesInstanceUID", "")), []).append(item)
    if len(series) > 1:
        uid, slices = max(series.items(), key=lambda kv: len(kv[1]))
        notes.append(f"{len(series)} series found: the largest ({len(slices)} slices) is shown")
    if skipped:
        notes.append(f"{skipped} file(s) that are not single-frame DICOM images were skipped")
    try:
        shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in slices}
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError("a slice of the series has no valid size (Rows, Columns)") from None
    if len(shapes) > 1:
        raise ImageReadError(f"the series' slices differ in size ({sorted(shapes)[:3]}): not one volume")
    rows, cols = shapes.pop()
    if rows * cols * len(slices) > MAX_VOXELS:
        raise ImageReadError(f"volume too large: {len(slices)} slices of {rows}x{cols} (limit {MAX_VOXELS:,} voxels)")

    geometry = [_geometry(ds) for _, ds in slices]
    if all(g is not None for g in geometry):
        normal = np.cross(geometry[0][0][:3], geometry[0][0][3:])
        order = np.argsort([float(np.dot(g[1], normal)) for g in geometry], kind="stable")
    else:
        order = np.argsort([int(first_number(ds.get("InstanceNumber")) or 0) for _, ds in slices], kind="stable")
        notes.append("the slices carry no position/orientation: ordered by instance number, shown as stored")
    slices = [slices[i] for i in order]
    geometry = [geometry[i] for i in order]

    planes = []
    for fname, ds in slices:
        check_decoder(ds)
        try:
            arr = np.asarray(pixel_array(ds), dtype=np.float32)
        except Exception as e:
            raise ImageReadError(f"corrupt DICOM pixel data in {Path(fname).name!r} ({short_reason(e)})") from None
        if arr.ndim != 2:
            raise ImageReadError(f"{Path(fname).name!r} is not a grayscale slice (pixel array {arr.shape})")
        slope, intercept = first_number(ds.get("RescaleSlope")), first_number(ds.get("RescaleIntercept"))
        if slope is not None and intercept is not None and math.isfinite(slope) and math.isfinite(intercept):
            arr = arr * slope + intercept
        planes.append(arr)
    values = np.stack(planes, -1).transpose(1, 0, 2)  # (column, row, slice): voxel i, j, k
    first = slices[0][1]
    window = None
    center, width = first_number(first.get("WindowCenter")), first_number(first.get("WindowWidth"))
    if center is not None and width is not None and math.isfinite(center) and 1 < width < math.inf:
        window = (center - width / 2, center + width / 2)
    invert = str(first.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1"

    if all(g is not None for g in geometry):
        cosines, _, (row_mm, col_mm) = geometry[0]
        lps = np.eye(4)
        lps[:3, 0] = cosines[:3] * col_mm  # along a row: the column index grows
        lps[:3, 1] = cosines[3:] * row_mm
        if len(geometry) > 1:
            with np.errstate(all="ignore"):
                lps[:3, 2] = (geometry[-1][1] - geometry[0][1]) / (len(geometry) - 1)
        else:
            lps[:3, 2] = np.cross(cosines[:3], cosines[3:]) * float(first_number(first.get("SliceThickness")) or 1.0)
        lps[:3, 3] = geometry[0][1]
        with np.errstate(all="ignore"):
            affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS to NIfTI's RAS
            usable = np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) >= 1e-9
        if not usable:  # every slice at one position, or positions beyond any scanner's
            affine = np.eye(4)
            notes.append("the slices' positions are unusable (all one, or not finite): shown as stored")
    else:
        affine = None
    return _from_ras(values, affine, name, notes, window=window, invert=invert)


def _geometry(ds) -> Optional[tuple[np.ndarray, np.ndarray, tuple[float, float]]]:
    """(row and column direction cosines, position, (row, column) spacing in mm), or None where missing."""
    try:
        cosines = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        spacing = ds.get("PixelSpacing") or [1.0, 1.0]
        row_mm, col_mm = float(spacing[0]), float(spacing[1])
    except Exception:
        return None
    if cosines.shape != (6,) or position.shape != (3,) or not (np.isfinite(cosines).all() and np.isfinite(position).all()):
        return None
    if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm) and math.isfinite(col_mm)):
        row_mm = col_mm = 1.0
    return cosines, position, (row_mm, col_mm)


# ------------------------------------------------------------------------------------- orientation, window

def _from_ras(values: np.ndarray, affine: Optional[np.ndarray], name: str, notes: list[str],
              window: Optional[tuple[float, float]] = None, invert: bool = False) -> Volume:
    """Voxels (i, j, k) with an affine to RAS mm -> axial slices, radiological view, windowed to uint8."""
    from nibabel.orientations import apply_orientation, io_orientation

    zooms = np.ones(3)
    if affine is not None:
        ornt = io_orientation(affine)
        values = apply_orientation(values, ornt)  # axes now R, A, S (flips and transposes, no resampling)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))[np.argsort(ornt[:, 0])]
    if affine is None:  # no geometry: each stored plane as it is
        slices = np.ascontiguousarray(values.transpose(2, 1, 0))
    elif values.shape[0] == 1 < min(values.shape[1:]):  # one sagittal plane, not a stack of 1-pixel-wide slices:
        slices = np.ascontiguousarray(values[0].T[None, ::-1, ::-1])  # superior up, anterior on the left
        zooms = np.array([zooms[1], zooms[2], zooms[0]])  # (columns, rows, between) as below
        notes.append("a single sagittal plane: shown as one slice")
    elif values.shape[1] == 1 < min(values.shape[0], values.shape[2]):  # one coronal plane
        slices = np.ascontiguousarray(values[:, 0].T[None, ::-1, ::-1])  # superior up, the patient's right on the left
        zooms = np.array([zooms[0], zooms[2], zooms[1]])
        notes.append("a single coronal plane: shown as one slice")
    else:  # values[x, y, z]: x grows toward the patient's right, y anterior, z superior. Radiological view:
        # rows from anterior (top) to posterior, columns from the patient's right (image left) to left
        slices = np.ascontiguousarray(values.transpose(2, 1, 0)[:, ::-1, ::-1])
    too_costly = _too_costly(*slices.shape)
    if too_costly:
        raise ImageReadError(too_costly)
    out = _window(slices, window)
    if invert:
        out = 255 - out
    col_mm, row_mm, slice_mm = (float(z) if z > 0 else 1.0 for z in zooms)
    if abs(row_mm / col_mm - 1) > 0.05:  # non-square pixels: shown at their physical aspect
        height = max(1, int(round(out.shape[1] * row_mm / col_mm)))
        if not 1 / MAX_ASPECT <= row_mm / col_mm <= MAX_ASPECT:
            notes.append(f"implausible pixel spacing ({row_mm:g} x {col_mm:g} mm): shown as stored")
        elif height * out.shape[2] * len(out) > MAX_VOXELS or _too_costly(len(out), height, out.shape[2]):
            notes.append(f"non-square pixels ({row_mm:g} x {col_mm:g} mm) shown as stored: stretching them to "
                         f"their physical aspect would make the volume too large")
        else:
            out = np.stack([cv2.resize(s, (out.shape[2], height), interpolation=cv2.INTER_LINEAR) for s in out])
    return Volume(out, name=name, spacing=(slice_mm, row_mm, col_mm), notes=notes)


def _window(values: np.ndarray, window: Optional[tuple[float, float]] = None) -> np.ndarray:
    """One 8-bit window for the whole volume: the given one, or the 0.5-99.5 percentiles of the voxels that are
    not background (the most common value when it fills a fifth of the volume: zero, or the z-scored air)."""
    values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    background = None
    rng = np.random.default_rng(0)
    sample = values.ravel()[rng.integers(0, values.size, min(values.size, 1_000_000))]
    levels, counts = np.unique(sample, return_counts=True)
    if len(levels) and counts.max() >= 0.2 * len(sample):
        background = float(levels[counts.argmax()])
    if window is None:
        fore = sample if background is None else sample[sample != background]
        if fore.size == 0:
            fore = sample
        lo, hi = (float(v) for v in np.percentile(fore, [0.5, 99.5]))
        if hi <= lo:
            lo, hi = float(fore.min()), float(fore.max())
        if hi <= lo:  # one level besides the background (a mask, a label map): the full range, nothing blanked
            lo, hi, background = float(sample.min()), float(sample.max()), None
    else:
        lo, hi = window
    out = np.zeros(values.shape, np.uint8)
    if hi > lo:
        scale = 255.0 / (hi - lo)
        for k in range(len(values)):  # slice by slice: no float64 copy of the volume
            out[k] = np.clip((values[k] - lo) * scale, 0, 255).round().astype(np.uint8)
    if background is not None and window is None:
        out[values == background] = 0
    return out
