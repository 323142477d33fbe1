"""Volumes: NIfTI and DICOM series to radiological axial slices; windowing; hostile archives; compressed DICOM."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from brain_tumor.decode import ImageReadError, read_image
from brain_tumor.volume import MAX_SERIES_FILES, is_volume, read_dicom_series, read_volume
from conftest import dicom_dataset


def phantom() -> np.ndarray:
    """A head-like box in RAS voxels (x: toward the patient's right, y: anterior, z: superior) with a bright
    marker at the right-anterior-superior corner."""
    d = np.zeros((40, 50, 30), np.float32)
    d[5:35, 5:45, :] = np.linspace(50, 150, 30)[None, None, :]  # tissue, a little brighter superiorly
    d[26:34, 36:44, 25:28] = 400  # over 0.5% of the voxels: above the window's top
    return d


def marker(vol) -> np.ndarray:
    where = np.argwhere(vol.slices >= 250)
    return where.min(0), where.max(0)


def check_radiological(vol, d):
    """Slice 0 inferior; anterior at the top; the patient's right on the image's left."""
    assert vol.slices.shape == (d.shape[2], d.shape[1], d.shape[0]) and vol.slices.dtype == np.uint8
    lo, hi = marker(vol)
    assert lo[0] >= 25 and hi[0] <= 27  # superior slices
    assert hi[1] < 14 and hi[2] < 14  # top (anterior), left (patient's right)


def write_series(folder: Path, d: np.ndarray, shuffle: bool = True, spacing=(1.0, 1.0, 2.0)) -> list[Path]:
    """An axial MR series (LPS, rows toward posterior, columns toward the patient's left) of RAS volume d, as
    16-bit slices with a rescale; files named so that name order is not slice order."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    paths = []
    order = np.random.default_rng(1).permutation(d.shape[2]) if shuffle else range(d.shape[2])
    for n, k in enumerate(order):
        plane = d[::-1, ::-1, k].T  # pixel (r, c): LPS x = c (left), y = r (posterior)
        ds = dicom_dataset("SECRET^PATIENT", "SECRET-ID")
        ds.SeriesInstanceUID = series
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, float(k) * spacing[2]]
        ds.InstanceNumber = int(n)  # deliberately not the slice order
        ds.PixelData = np.round((plane + 10) / 0.5).astype(np.uint16).tobytes()
        path = folder / f"IM{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_nifti_in_any_storage_orientation_gives_the_same_radiological_slices(tmp_path):
    nib = pytest.importorskip("nibabel")
    d = phantom()
    nib.save(nib.Nifti1Image(d, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "ras.nii.gz")
    nib.save(nib.Nifti1Image(d[::-1, ::-1].copy(), np.diag([-1.0, -1.0, 2.0, 1.0])), tmp_path / "lps.nii")
    # stored with axes permuted (sagittal planes first): the affine says so
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = 1.0
    perm[2, 0] = 2.0
    perm[3, 3] = 1.0
    nib.save(nib.Nifti1Image(d.transpose(2, 1, 0).copy(), perm), tmp_path / "zyx.nii")
    vols = [read_volume(tmp_path / n) for n in ("ras.nii.gz", "lps.nii", "zyx.nii")]
    check_radiological(vols[0], d)
    assert all((v.slices == vols[0].slices).all() for v in vols[1:])
    assert vols[0].spacing[0] == pytest.approx(2.0)


def test_dicom_series_is_sorted_by_position_and_matches_the_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    d = phantom()
    paths = write_series(tmp_path / "series", d)
    nib.save(nib.Nifti1Image(d, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "ref.nii")
    ref = read_volume(tmp_path / "ref.nii")
    from_files = read_volume(sorted(paths))
    check_radiological(from_files, d)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in paths:
            z.write(p, f"study/{p.name}")
        z.writestr("study/DICOMDIR.txt", "not an image")
        z.writestr("__MACOSX/._IM0000.dcm", b"junk")
    from_zip = read_volume(archive)
    assert (from_zip.slices == from_files.slices).all()
    assert any("skipped" in n for n in from_zip.notes)
    # the same anatomy as the NIfTI; the window differs (the series has none: both use percentiles) by rounding
    assert np.abs(from_zip.slices.astype(int) - ref.slices).max() <= 1


def test_z_scored_float_volume_gives_a_viewable_slice(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    d = np.zeros((60, 60, 20), np.float32)  # background exactly 0, brain z-scored around it
    d[10:50, 10:50] = rng.normal(0, 1, (40, 40, 20))
    nib.save(nib.Nifti1Image(d, np.eye(4)), tmp_path / "z.nii.gz")
    vol = read_volume(tmp_path / "z.nii.gz")
    mid = vol.slices[10]
    assert mid[0, 0] == 0  # background black, not mid-gray
    brain = mid[15:45, 15:45]
    assert brain.std() > 30 and 80 < brain.mean() < 180  # contrast spread over the range


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "not a readable zip"),
    (None, "no single-frame DICOM images"),
])
def test_bad_archives_get_a_reason(tmp_path, content, message):
    path = tmp_path / "x.zip"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=message):
        read_volume(path)


@pytest.mark.slow
def test_zip_bomb_and_too_many_members_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i in range(10):
            z.writestr(f"{i}.dcm", b"\0" * (60 << 20))  # 600 MB of zeros, a few hundred kB zipped
    with pytest.raises(ImageReadError, match="unpacks to more than|too large"):
        read_volume(bomb)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(MAX_SERIES_FILES + 1):
            z.writestr(f"{i}.dcm", b"x")
    with pytest.raises(ImageReadError, match="holds"):
        read_volume(many)


def test_hostile_nifti_headers_are_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    good = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), good)
    raw = bytearray(good.read_bytes())
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(bytes(raw[:400]))
    huge = tmp_path / "huge.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 4000))
    hdr.set_data_dtype(np.int16)
    huge.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1024)
    for path, message in [(truncated, "corrupt or truncated|not a readable"), (huge, "too large"),
                          (tmp_path / "missing.nii", "not found")]:
        with pytest.raises(ImageReadError, match=message):
            read_volume(path)
    text = tmp_path / "fake.nii.gz"
    text.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(ImageReadError):
        read_volume(text)


def test_is_volume_by_name():
    assert is_volume("a/b.nii.gz") and is_volume("B.NII") and is_volume("s.zip")
    assert not is_volume("slice.dcm") and not is_volume("x.png")


def test_series_with_mixed_sizes_is_refused(tmp_path):
    d = phantom()
    paths = write_series(tmp_path / "a", d[:, :, :3], shuffle=False)
    other = write_series(tmp_path / "b", d[:30, :30, :2], shuffle=False)
    import pydicom

    ds = pydicom.dcmread(other[0])
    ds.SeriesInstanceUID = pydicom.dcmread(paths[0]).SeriesInstanceUID
    ds.save_as(other[0])
    files = [(p.name, p.read_bytes()) for p in paths + [other[0]]]
    with pytest.raises(ImageReadError, match="differ in size"):
        read_dicom_series(files)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_dicom_decodes_like_the_uncompressed_file(name):
    """RLE, JPEG 2000 and JPEG-LS (pydicom's own test files, lossless copies of MR_small.dcm) decode through the
    pylibjpeg plugins to the same slice."""
    from pydicom.data import get_testdata_file

    reference = read_image(get_testdata_file("MR_small.dcm"))
    got = read_image(get_testdata_file(name))
    assert got.shape == reference.shape and (got == reference).all()


def test_series_with_partial_or_broken_headers_is_read_or_refused(tmp_path):
    """A localizer without position among positioned slices, './' member names, a slice without Rows, absurd
    positions: read in instance order or refused with a reason, never a traceback."""
    import pydicom

    d = phantom()
    paths = write_series(tmp_path / "s", d[:, :, :6], shuffle=False)
    partial = []
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        if i % 2:
            del ds.ImagePositionPatient, ds.ImageOrientationPatient
        partial.append((f"./{p.name}", _bytes(ds)))
    vol = read_dicom_series(partial)
    assert len(vol) == 6 and any("instance number" in n for n in vol.notes)
    archive = tmp_path / "dotted.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in partial:
            z.writestr(name, data)
    assert len(read_volume(archive)) == 6  # './' names are read, not taken for hidden files
    no_rows = pydicom.dcmread(paths[0])
    del no_rows.Rows
    far = [pydicom.dcmread(p) for p in paths]
    for k, ds in enumerate(far):
        ds.ImagePositionPatient = [0.0, 0.0, (-1) ** k * 1e308]
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as z:
        for name, data in [(p.name, p.read_bytes()) for p in paths[1:]] + [("x.dcm", _bytes(no_rows))]:
            z.writestr(name, data)
    with pytest.raises(ImageReadError, match="no valid size"):
        read_volume(tmp_path / "bad.zip")
    vol = read_dicom_series([(f"{k}.dcm", _bytes(ds)) for k, ds in enumerate(far)])
    assert len(vol) == 6 and any("unusable" in n for n in vol.notes)


def _bytes(ds) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_volumes_that_would_cost_far_more_than_a_scan_are_refused_quickly(tmp_path):
    """Tiny files that unpack to a 200,000-pixel side, two million 1 x 1 slices or a 2000:1 pixel spacing are
    refused or shown as stored, in seconds and without gigabytes."""
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti2Image(np.ones((200_000, 2, 1), np.uint8), np.eye(4)), tmp_path / "line.nii")  # NIfTI-2: long dims
    nib.save(nib.Nifti2Image(np.ones((1, 1, 200_000), np.uint8), np.eye(4)), tmp_path / "dots.nii")
    for name, message in [("line.nii", "limit 8000 a side"), ("dots.nii", "slices \\(limit")]:
        with pytest.raises(ImageReadError, match=message):
            read_volume(tmp_path / name)
    nib.save(nib.Nifti1Image(phantom()[:, :, :2], np.diag([1.0, 2000.0, 1.0, 1.0])), tmp_path / "aspect.nii")
    vol = read_volume(tmp_path / "aspect.nii")
    assert vol.slices.shape == (2, 50, 40) and any("implausible pixel spacing" in n for n in vol.notes)
    nib.save(nib.Nifti1Image(np.ones((40, 1400, 2), np.uint8), np.diag([1.0, 7.0, 1.0, 1.0])), tmp_path / "tall.nii")
    vol = read_volume(tmp_path / "tall.nii")  # a plausible spacing, but stretched it would be 9,800 pixels tall
    assert vol.slices.shape == (2, 1400, 40) and any("would make the volume too large" in n for n in vol.notes)
    assert not any("implausible" in n for n in vol.notes)


def test_single_planes_and_masks_are_shown_as_one_viewable_slice(tmp_path):
    nib = pytest.importorskip("nibabel")
    d = phantom()
    nib.save(nib.Nifti1Image(d[20:21].copy(), np.eye(4)), tmp_path / "sagittal.nii")
    nib.save(nib.Nifti1Image(d[:, 25:26].copy(), np.eye(4)), tmp_path / "coronal.nii")
    sag, cor = read_volume(tmp_path / "sagittal.nii"), read_volume(tmp_path / "coronal.nii")
    assert sag.slices.shape == (1, 30, 50) and "sagittal" in sag.notes[0]  # superior-inferior x anterior-posterior
    assert cor.slices.shape == (1, 30, 40) and "coronal" in cor.notes[0]
    assert sag.slices[0, 0].mean() > sag.slices[0, -1].mean()  # superior (brighter in the phantom) at the top
    mask = (d > 100).astype(np.uint8)  # half the voxels one level, half the other
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    m = read_volume(tmp_path / "mask.nii.gz")
    assert set(np.unique(m.slices)) == {0, 255}


def test_colour_empty_and_complex_nifti_get_a_plain_reason_or_their_magnitude(tmp_path):
    nib = pytest.importorskip("nibabel")
    rgb = np.zeros((8, 8, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 0), np.float32), np.eye(4)), tmp_path / "empty.nii")
    for name, message in [("rgb.nii", "colour \\(RGB\\) voxels"), ("empty.nii", "no volume in it")]:
        with pytest.raises(ImageReadError, match=message):
            read_volume(tmp_path / name)
    d = phantom()
    nib.save(nib.Nifti1Image((1j * d).astype(np.complex64), np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "c.nii")
    nib.save(nib.Nifti1Image(d, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "real.nii")
    c = read_volume(tmp_path / "c.nii")  # purely imaginary: the real part alone would be black
    assert (c.slices == read_volume(tmp_path / "real.nii").slices).all() and "magnitude" in c.notes[0]
