"""Hostile and awkward inputs, each built here: read_image returns an H x W uint8 slice or raises
ImageReadError with a short message, and the predict CLI reports each failure in place and answers the rest."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from brain_tumor import decode, predict
from brain_tumor.config import MAX_FILE_BYTES, MAX_PIXELS
from brain_tumor.decode import ImageReadError, read_image
from brain_tumor.inference import Predictor
from conftest import ROOT, dicom_dataset, synthetic_slice

SECRETS = ("Secretname", "Jane", "PID-7741-SECRET", "19010203")  # DICOM patient fields: never echoed


# ------------------------------------------------------------------------------------------------ builders

def slice_(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth synthetic head (JPEG-friendly), resized to h x w."""
    return cv2.resize(synthetic_slice(seed, 96), (w, h), interpolation=cv2.INTER_LINEAR)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def blank_png(side: int, depth: int = 1, color_type: int = 0) -> bytes:
    """A valid all-zero side x side PNG made by hand: a few hundred KB however many pixels it claims."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + (side * depth * channels + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row * 250) for _ in range(side // 250)) + z.compress(row * (side % 250)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def bomb_png() -> bytes:
    """30000 x 30000 1-bit: ~100 KB on disk, 900 megapixels decoded."""
    return blank_png(30000)


def corrupt_huffman(jpeg: bytes) -> bytes:
    """Set a DHT segment's 16 code-length counts to 255: more codes than any table can hold."""
    k = jpeg.index(b"\xff\xc4")
    out = bytearray(jpeg)
    out[k + 5:k + 21] = b"\xff" * 16
    return bytes(out)


def bad_ihdr_crc(png: bytes) -> bytes:
    out = bytearray(png)
    out[29] ^= 0xFF  # IHDR: 8 signature + 4 length + 4 type + 13 data, then its CRC
    return bytes(out)


def bad_idat_crc(png: bytes) -> bytes:
    k = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[k - 4:k])
    out = bytearray(png)
    out[k + 4 + length] ^= 0xFF
    return bytes(out)


def dicom(pixels, photometric: str = "MONOCHROME2", bits_stored: int | None = None, signed: bool = False,
          window=None, rescale=None, syntax=None, pixel_data: bytes | None = None, sop=None,
          bits_allocated: int | None = None) -> bytes:
    """A DICOM file with recognisable patient fields; ``pixels`` None gives a structured report."""
    from pydicom.uid import BasicTextSRStorage, MRImageStorage

    sop = sop or (MRImageStorage if pixels is not None else BasicTextSRStorage)
    ds = dicom_dataset("Secretname^Jane", "PID-7741-SECRET", sop=sop, syntax=syntax,
                       modality="MR" if pixels is not None else "SR")
    ds.PatientBirthDate = "19010203"
    if pixels is None:
        ds.ValueType, ds.ContentSequence = "CONTAINER", []
    else:
        arr = np.asarray(pixels)
        ds.Rows, ds.Columns = arr.shape[-2:]
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated = bits_allocated or arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.PixelData = arr.tobytes() if pixel_data is None else pixel_data
        if pixel_data is not None:
            ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def jpeg_dicom(img: np.ndarray) -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    return dicom(img, syntax=JPEGBaseline8Bit,
                 pixel_data=encapsulate([encode(Image.fromarray(img), "JPEG", quality=95)]))


def jpeg_ls_dicom(img: np.ndarray) -> bytes:
    """JPEG-LS whose stream is broken (pylibjpeg-libjpeg decodes real JPEG-LS: tests/test_volume.py)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    return dicom(img, syntax=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64 + b"\xff\xd9"]))


def mpeg2_dicom(img: np.ndarray) -> bytes:
    """MPEG-2 video: a transfer syntax no installed decoder handles."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    return dicom(img, syntax=MPEG2MPML, pixel_data=encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64]))


def first_frame_gif() -> bytes:
    frames = [Image.fromarray(np.full((30, 40), v, np.uint8)) for v in (40, 200, 120)]
    for im, x in zip(frames, (5, 15, 25)):
        im.paste(255, (x, 5, x + 8, 25))
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def two_page_tiff() -> bytes:
    return encode(Image.fromarray(slice_(20, 30)), "TIFF", save_all=True,
                  append_images=[Image.fromarray(slice_(40, 10, seed=1))])


def exif_rotated_jpeg(img: np.ndarray, orientation: int = 6) -> bytes:
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def rgba_half_transparent() -> bytes:
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., :3] = 255  # white, but fully transparent on the left: must come out black, not white
    rgba[:, 24:, :3], rgba[:, 24:, 3] = 120, 255
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def la_half_transparent() -> bytes:
    la = np.zeros((32, 48, 2), np.uint8)
    la[..., 0] = 255
    la[:, 24:, 0], la[:, 24:, 1] = 120, 255
    return encode(Image.fromarray(la, "LA"), "PNG")


def palette_transparent() -> bytes:
    im = Image.fromarray(np.where(np.arange(48)[None, :] < 24, 0, 1).repeat(32, 0).astype(np.uint8), "P")
    im.putpalette([255, 255, 255, 120, 120, 120] + [0] * 762)
    return encode(im, "PNG", transparency=0)


def cmyk_jpeg(img: np.ndarray) -> bytes:
    return encode(Image.fromarray(img).convert("CMYK"), "JPEG", quality=95)


def png16(img: np.ndarray) -> bytes:
    return encode(Image.fromarray((img.astype(np.uint16) * 8 + 1000)), "PNG")


def tiff16(img: np.ndarray) -> bytes:
    return encode(Image.fromarray((img.astype(np.uint16) * 8 + 1000)), "TIFF")


def huge_jpeg() -> bytes:
    return cv2.imencode(".jpg", cv2.resize(synthetic_slice(3, 96), (4000, 4000), interpolation=cv2.INTER_LINEAR))[1].tobytes()


def png(img: np.ndarray) -> bytes:
    return encode(Image.fromarray(img), "PNG")


def jpeg(img: np.ndarray) -> bytes:
    return encode(Image.fromarray(img), "JPEG", quality=90)


# Bad inputs: (file name, builder, a fragment the message must contain).
BAD = {
    "empty": ("empty.png", lambda: b"", "empty"),
    "random_bytes": ("noise.bin", lambda: np.random.default_rng(0).bytes(4096), "not a supported"),
    "text_named_png": ("notes.png", lambda: b"patient notes, not an image\n" * 20, "not a supported"),
    "truncated_jpeg": ("cut.jpg", lambda: jpeg(slice_())[:600], "truncated"),
    "truncated_png": ("cut.png", lambda: png(slice_())[:300], "truncated"),
    "corrupt_huffman": ("huff.jpg", lambda: corrupt_huffman(jpeg(slice_())), "corrupt"),
    "png_bad_header_crc": ("crc.png", lambda: bad_ihdr_crc(png(slice_())), "PNG"),
    "bomb": ("bomb.png", bomb_png, "too large"),
    "needle": ("needle.png", lambda: png(np.zeros((2, 20000), np.uint8)), "too large"),  # padded square: 400 MP
    "dicom_report": ("report.dcm", lambda: dicom(None), "no pixel data"),
    "dicom_truncated": ("cut.dcm", lambda: dicom(np.zeros((64, 64), np.uint16) + 7)[:2000], "truncated"),
    "dicom_jpeg_ls_broken": ("jls.dcm", lambda: jpeg_ls_dicom(slice_()), "corrupt"),
    "dicom_mpeg2": ("mpeg2.dcm", lambda: mpeg2_dicom(slice_()), "MPEG2"),
}

# Good inputs: (file name, builder, expected H x W).
GOOD = {
    "tiny_1x1": ("one.png", lambda: png(np.full((1, 1), 90, np.uint8)), (1, 1)),
    "tiny_3x500": ("strip.png", lambda: png(slice_(3, 500)), (3, 500)),
    "huge_4000": ("huge.jpg", huge_jpeg, (4000, 4000)),
    "png_idat_bad_crc": ("idatcrc.png", lambda: bad_idat_crc(png(slice_())), (64, 64)),  # Pillow skips IDAT CRCs
    "png16": ("g16.png", lambda: png16(slice_()), (64, 64)),
    "tiff16": ("g16.tif", lambda: tiff16(slice_()), (64, 64)),
    "rgba": ("rgba.png", rgba_half_transparent, (32, 48)),
    "la": ("la.png", la_half_transparent, (32, 48)),
    "palette": ("pal.png", palette_transparent, (32, 48)),
    "cmyk_jpeg": ("cmyk.jpg", lambda: cmyk_jpeg(slice_()), (64, 64)),
    "exif_rotated": ("rot.jpg", lambda: exif_rotated_jpeg(slice_(30, 50)), (50, 30)),
    "gif": ("anim.gif", first_frame_gif, (30, 40)),
    "tiff_pages": ("pages.tif", two_page_tiff, (20, 30)),
    "dicom_mono2": ("m2.dcm", lambda: dicom(slice_().astype(np.uint16) * 16, bits_stored=12), (64, 64)),
    "dicom_jpeg": ("jpeg.dcm", lambda: jpeg_dicom(slice_()), (64, 64)),
    "dicom_no_suffix": ("IM0001", lambda: dicom(slice_()), (64, 64)),
}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_short_message(message: str) -> None:
    assert message and len(message) <= 200 and "\n" not in message and "Traceback" not in message, message
    assert not any(s in message for s in SECRETS), message


# ------------------------------------------------------------------------------------------- read_image

@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_a_short_message(tmp_path, case):
    name, build, fragment = BAD[case]
    path = write(tmp_path, name, build())
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert time.perf_counter() - start < 1.0
    assert_short_message(str(info.value))
    assert fragment.lower() in str(info.value).lower()


@pytest.mark.parametrize("case", sorted(GOOD))
def test_awkward_but_valid_input_decodes(tmp_path, case):
    name, build, shape = GOOD[case]
    out = read_image(write(tmp_path, name, build()))
    assert out.dtype == np.uint8 and out.shape == shape


def decode_in_fresh_process(path: Path) -> tuple[str, float, float]:
    """read_image(path) in a new interpreter: (outcome, seconds, growth of its peak resident memory in bytes)."""
    code = ("import resource, sys, time, types\n"
            "sys.modules['brain_tumor'] = types.ModuleType('brain_tumor')  # skip the package's torch import\n"
            "sys.modules['brain_tumor'].__path__ = ['brain_tumor']\n"
            "from brain_tumor.decode import read_image, ImageReadError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; t = time.perf_counter()\n"
            "try:\n    print('decoded', read_image(sys.argv[1]).shape)\n"
            "except ImageReadError as e:\n    print('refused', e)\n"
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
    outcome, numbers = run.stdout.strip().splitlines()
    seconds, grown_kb = map(float, numbers.split())
    return outcome, seconds, grown_kb * 1024


def test_decompression_bomb_is_refused_quickly_without_decoding(tmp_path):
    outcome, seconds, grown = decode_in_fresh_process(write(tmp_path, "bomb.png", bomb_png()))
    assert outcome.startswith("refused") and "too large" in outcome
    assert seconds < 0.5 and grown < 50e6  # the decoded image would be 900 MB


def test_large_images_decode_in_a_few_bytes_a_pixel(tmp_path):
    """A 16-megapixel RGBA PNG (the costliest mode): at the pixel limit the same rate stays under 1 GB."""
    outcome, seconds, grown = decode_in_fresh_process(write(tmp_path, "rgba.png", blank_png(4000, 8, 6)))
    assert outcome == "decoded (4000, 4000)"
    assert grown / 4000 ** 2 * MAX_PIXELS < 1e9, f"{grown / 4000 ** 2:.1f} bytes a pixel"


def test_large_legitimate_image_is_read_in_full(tmp_path):
    big = cv2.resize(synthetic_slice(3, 96), (4000, 4000), interpolation=cv2.INTER_NEAREST)
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    out = read_image(path)
    assert out.shape == (4000, 4000) and np.array_equal(out, big)


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(path)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(png(slice_()), max_bytes=100)


def test_sixteen_bit_images_use_the_full_range_in_order():
    img = slice_()
    for data in (png16(img), tiff16(img)):
        out = read_image(data)
        assert out.min() == 0 and out.max() == 255
        lo, hi = img.min(), img.max()
        expected = np.round((img.astype(float) - lo) * 255 / (hi - lo))
        assert np.abs(out - expected).max() <= 1


def test_transparency_is_composited_on_black():
    for data in (rgba_half_transparent(), la_half_transparent(), palette_transparent()):
        out = read_image(data)
        assert (out[:, :24] == 0).all() and (np.abs(out[:, 24:].astype(int) - 120) <= 1).all()


def test_cmyk_jpeg_keeps_the_picture():
    img = slice_()
    out = read_image(cmyk_jpeg(img))
    assert np.abs(out.astype(int) - img).mean() < 6


def test_exif_orientation_is_applied():
    img = slice_(30, 50)
    out = read_image(exif_rotated_jpeg(img, orientation=6))  # 6: displayed rotated 90 degrees clockwise
    assert out.shape == (50, 30)
    assert np.abs(out.astype(int) - np.rot90(img, -1)).mean() < 4


def test_animated_gif_first_frame_and_tiff_pages():
    gif = read_image(first_frame_gif())
    assert abs(int(np.median(gif)) - 40) <= 2 and gif[10, 8] == 255 and gif[10, 18] != 255
    tiff = two_page_tiff()
    assert read_image(tiff).shape == (20, 30) and read_image(tiff, frame=1).shape == (40, 10)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(tiff, frame=2)


# ------------------------------------------------------------------------------------------------ DICOM

def test_dicom_monochrome1_is_the_inverse_of_monochrome2():
    raw = slice_().astype(np.uint16) * 16
    m2 = read_image(dicom(raw, "MONOCHROME2", bits_stored=12))
    m1 = read_image(dicom(raw, "MONOCHROME1", bits_stored=12))
    assert m2.max() == 255 and np.array_equal(m1, 255 - m2)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_dicom_bit_depths_span_the_display_range(bits):
    img = slice_()
    dtype = np.uint8 if bits == 8 else np.uint16
    raw = (img.astype(np.float64) / 255 * (2 ** bits - 1)).round().astype(dtype)
    out = read_image(dicom(raw, bits_stored=bits))
    lo, hi = raw.min(), raw.max()
    assert np.abs(out - np.round((raw.astype(float) - lo) * 255 / (hi - lo))).max() <= 1


def test_dicom_signed_pixels_rescale_and_window():
    raw = np.tile(np.arange(472, 600, 2, dtype=np.int16), (8, 1))  # HU = 2 * raw - 1024: -80 .. 174
    plain = read_image(dicom(raw, signed=True, rescale=(2, -1024)))  # no window: the full range
    assert plain[0, 0] == 0 and plain[0, -1] == 255 and (np.diff(plain[0].astype(int)) >= 0).all()
    windowed = read_image(dicom(raw, signed=True, rescale=(2, -1024), window=(40, 80)))  # 0 .. 79 HU
    hu = 2 * raw[0].astype(int) - 1024
    assert (windowed[0][hu <= 0] == 0).all() and (windowed[0][hu >= 80] == 255).all()
    assert windowed[0][hu == 40][0] in range(126, 132)
    negative = read_image(dicom(np.array([[-500, 0], [500, 1000]], np.int16), signed=True))
    assert negative.tolist() == [[0, 85], [170, 255]]


def test_dicom_multi_frame_picks_a_slice():
    frames = np.zeros((5, 32, 48), np.uint16)
    for k in range(5):
        frames[k, 10:20, 8 * k:8 * k + 6] = 1000  # frame k: a bright bar at x = 8k
    data = dicom(frames)
    assert read_image(data)[15].argmax() == 16  # default: the middle frame
    assert read_image(data, frame=0)[15].argmax() == 0 and read_image(data, frame=4)[15].argmax() == 32
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(data, frame=5)


def test_every_frame_at_once_is_each_frame_alone_and_too_many_are_refused(monkeypatch, tmp_path):
    frames = np.zeros((5, 32, 48), np.uint16)
    for k in range(5):
        frames[k, 10:20, 8 * k:8 * k + 6] = 1000 + 500 * k
    data = dicom(frames)
    every = decode.read_frames(data)  # the CLI's and the app's "all frames": the file parsed once
    assert len(every) == 5 and all(np.array_equal(f, read_image(data, frame=k)) for k, f in enumerate(every))
    monkeypatch.setattr(decode, "MAX_SLICES", 4)
    with pytest.raises(ImageReadError, match="5 frames"):
        decode.read_frames(data)
    png = cv2.imencode(".png", np.full((20, 30), 90, np.uint8))[1].tobytes()
    assert [f.shape for f in decode.read_frames(png)] == [(20, 30)]  # another image: its one picture
    (tmp_path / "brain.mgz").write_bytes(b"\x00" * 300)
    with pytest.raises(ImageReadError, match="FreeSurfer MGH"):  # a volume format named, by its file name
        decode.read_frames(tmp_path / "brain.mgz")


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_dicom_colour_comes_out_as_its_luminance(photometric):
    """pydicom hands back RGB whatever the photometric interpretation: converting again would garble it."""
    import pydicom
    from pydicom.pixels import convert_color_space

    img = slice_()
    rgb = np.stack([img, img, img], -1)
    ds = pydicom.dcmread(io.BytesIO(dicom(img)))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.PixelData = (rgb if photometric == "RGB" else convert_color_space(rgb, "RGB", photometric)).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    lo, hi = img.min(), img.max()
    assert np.abs(read_image(buf.getvalue()) - np.round((img.astype(float) - lo) * 255 / (hi - lo))).max() <= 1


def test_dicom_jpeg_baseline_decodes():
    img = slice_()
    out = read_image(jpeg_dicom(img))
    assert np.abs(out.astype(int) - img.astype(int) * 255 / img.max()).mean() < 4


def test_dicom_unsupported_syntax_names_it():
    with pytest.raises(ImageReadError) as info:
        read_image(mpeg2_dicom(slice_()))
    assert "not supported" in str(info.value) and "MPEG2" in str(info.value)
    assert_short_message(str(info.value))


def test_dicom_errors_never_show_patient_fields(caplog):
    cases = [dicom(None), dicom(slice_())[:1500], dicom(slice_())[:-100], jpeg_ls_dicom(slice_()),
             mpeg2_dicom(slice_()), dicom(slice_(), window=(40, 80)).replace(b"40", b"xy"), dicom(slice_()).replace(b"19010203", b"1901BAD3")]
    caplog.set_level("DEBUG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data in cases:
            try:
                read_image(data)
            except ImageReadError as e:
                assert_short_message(str(e))
    assert not any(s in str(w.message) for w in caught for s in SECRETS)
    assert not any(s in caplog.text for s in SECRETS)  # pydicom logs through the logging module


# -------------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def hostile_batch(tmp_path_factory):
    """Every bad case, each followed by a good one, in one folder-free list of paths."""
    root = tmp_path_factory.mktemp("hostile")
    bad = [write(root, name, build()) for name, build, _ in BAD.values()]
    good = [write(root, name, build()) for name, build, _ in GOOD.values()]
    paths = []
    for i, b in enumerate(bad):
        paths += [b, good[i % len(good)]]
    paths += good[len(bad):]
    return paths, set(map(str, bad))


def run_cli(capsys, *args) -> tuple[int, list[dict], str]:
    code = predict.main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out), out + err


def test_cli_reports_each_bad_file_in_place_and_answers_the_rest(hostile_batch, tiny_model_dir, capsys):
    paths, bad = hostile_batch
    code, records, text = run_cli(capsys, *paths, "--model", tiny_model_dir, "--batch-size", "4")
    assert code == 2
    assert [r["path"] for r in records] == [str(p) for p in paths]
    for r in records:
        if r["path"] in bad:
            assert set(r) == {"path", "error"}
            assert_short_message(r["error"])
        else:
            assert "error" not in r, r
            assert r["label"] in r["probabilities"] and abs(sum(r["probabilities"].values()) - 1) < 1e-4
    assert not any(s in text for s in SECRETS) and "Traceback" not in text


def test_cli_exit_zero_when_all_good_and_answers_match_alone(hostile_batch, tiny_model_dir, capsys):
    paths, bad = hostile_batch
    good = [p for p in paths if str(p) not in bad][:4]
    code, together, _ = run_cli(capsys, *good, "--model", tiny_model_dir)
    assert code == 0
    code, alone, _ = run_cli(capsys, good[2], "--model", tiny_model_dir)
    assert code == 0 and alone[0]["probabilities"] == pytest.approx(together[2]["probabilities"], abs=1e-5)


def test_cli_oversize_file_and_missing_file(tmp_path, tiny_model_dir, capsys):
    huge = tmp_path / "huge.dcm"
    with open(huge, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    ok = write(tmp_path, "ok.png", png(slice_()))
    code, records, _ = run_cli(capsys, huge, tmp_path / "missing.png", ok, "--model", tiny_model_dir)
    assert code == 2
    assert "too large" in records[0]["error"] and "not found" in records[1]["error"] and "label" in records[2]


def test_cli_hostile_names_keep_heat_maps_inside_their_folder(tmp_path, tiny_model_dir, capsys):
    folder = tmp_path / "a b" / "ünï 脳"
    folder.mkdir(parents=True)
    scan = write(folder, "scan ü 1.png", png(slice_()))
    other = tmp_path / "other"
    other.mkdir()
    twin = write(other, "scan ü 1.png", png(slice_(seed=5)))  # same name, different scan
    maps = tmp_path / "maps"
    dotted = tmp_path / "a b" / ".." / "a b" / "ünï 脳" / "scan ü 1.png"
    code, records, _ = run_cli(capsys, dotted, twin, "--model", tiny_model_dir, "--heatmaps", maps)
    assert code == 0 and records[0]["path"] == str(dotted)
    written = [Path(r["heatmap"]) for r in records]
    assert len(set(written)) == 2  # two inputs, two maps: one must not overwrite the other
    for target, source in zip(written, (scan, twin)):
        assert target.resolve().is_relative_to(maps.resolve())
        assert np.load(target).shape == read_image(source).shape
    assert predict.heatmap_path(maps, Path("../../../etc/x.png")).resolve().is_relative_to(maps.resolve())


def test_cli_table_survives_undecodable_file_names(tmp_path, tiny_model_dir, capsys):
    name = os.fsdecode(b"scan-\xff\xfe.png")  # not UTF-8: a lone surrogate in Python
    try:
        path = write(tmp_path, name, png(slice_()))
    except (OSError, UnicodeEncodeError):
        pytest.skip("file system refuses non-UTF-8 names")
    assert predict.main([str(path), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "scan-" in out


def test_dicom_float_pixels_and_a_file_without_preamble_decode(tmp_path):
    """Parametric maps (ADC) store Float Pixel Data; some writers leave out the 128-byte preamble and the name."""
    import io

    import pydicom

    ramp = np.tile(np.linspace(0.0, 3e-3, 32, dtype=np.float32), (16, 1))  # ADC-like values, mm^2/s
    ds = pydicom.dcmread(io.BytesIO(dicom(np.zeros((16, 32), np.uint16))))
    del ds.PixelData
    ds.BitsAllocated, ds.FloatPixelData = 32, ramp.tobytes()
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    gray = read_image(buf.getvalue())
    assert gray.shape == (16, 32) and gray[8, 0] < 10 and gray[8, -1] > 245  # the ramp, low to high
    bare = dicom(slice_())[132:]  # without the preamble and DICM mark: the file meta group comes first
    nameless = write(tmp_path, "IM0001", bare)  # a folder of a scanner's export: no suffix
    assert (read_image(nameless) == read_image(dicom(slice_()))).all()


def test_cli_answers_each_frame_of_a_multi_frame_file_and_names_it(tmp_path, tiny_model_dir, capsys):
    frames = np.zeros((3, 32, 48), np.uint16)
    for k in range(3):
        frames[k, 10:20, 8 * k:8 * k + 6] = 1000
    path = write(tmp_path, "multi.dcm", dicom(frames))
    code, records, _ = run_cli(capsys, path, "--model", tiny_model_dir)
    assert code == 0 and [(r["frame"], r["frames"]) for r in records] == [(0, 3), (1, 3), (2, 3)]
    alone = [Predictor(tiny_model_dir).predict([read_image(path, frame=k)])[0] for k in range(3)]
    assert [r["probabilities"] for r in records] == [pytest.approx(a.probabilities, abs=1e-5) for a in alone]
    assert predict.main([str(path), "--model", str(tiny_model_dir), "--slices", "best", "--heatmaps",
                         str(tmp_path / "maps")]) == 0
    assert [p.name for p in (tmp_path / "maps").iterdir()][0].startswith("multi_frame")
    table = capsys.readouterr().out
    assert re.search(r"multi\.dcm \[frame [0-2] of 3\]", table) and table.count("multi.dcm") == 1


def test_cli_table_shows_write_failures_volume_slices_and_notes(tmp_path, tiny_model_dir, capsys):
    nib = pytest.importorskip("nibabel")
    vol = np.zeros((40, 1, 30), np.float32)  # one coronal plane: a note says so
    vol[5:35, 0, 5:25] = 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "plane.nii")
    blocker = write(tmp_path, "reports", b"a file where the folder should be")
    ok = write(tmp_path, "ok.png", png(slice_()))
    code = predict.main([str(ok), str(tmp_path / "plane.nii"), "--model", str(tiny_model_dir), "--report", str(blocker)])
    out = capsys.readouterr().out
    assert code == 2  # the answers are given; the reports could not be written, and the table says so
    assert out.count(f"error: could not write {blocker}") == 2 and f"{blocker} is a file, not a folder" in out
    assert "plane.nii [slice 0 of 1]" in out and "note: " in out and "coronal plane" in out
    with pytest.raises(SystemExit):
        predict.main([str(ok), "--model", str(tiny_model_dir), "--threads", "-1"])
    assert "--threads" in capsys.readouterr().err


def test_python_api_refuses_empty_arrays_with_a_message(tiny_model_dir, tmp_path):
    predictor = Predictor(tiny_model_dir)
    volume = write(tmp_path, "series.zip", b"PK")
    result = predictor.predict_files([volume, write(tmp_path, "ok.png", png(slice_()))])
    assert isinstance(result[0], ImageReadError) and "is a volume" in str(result[0]) and result[1].label
    for bad in (np.zeros((0, 0), np.uint8), np.zeros((4, 4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="H x W grayscale"):
            predictor.predict([bad])
    with pytest.raises(ValueError, match="batch_size"):
        predictor.predict([slice_()], batch_size=0)


def test_volume_formats_we_do_not_read_are_named(tmp_path):
    for name, words in [("brain.mgz", "FreeSurfer MGH"), ("scan.hdr", "Analyze"), ("t1.mnc", "MINC")]:
        with pytest.raises(ImageReadError, match=f"{words}.*convert the volume to NIfTI"):
            read_image(write(tmp_path, name, os.urandom(400)))
    assert read_image(write(tmp_path, "picture.img", png(slice_()))).shape == (64, 64)  # a real image is still read
