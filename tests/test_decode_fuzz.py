"""Property test of the decode path: mutated valid files and random bytes give an H x W uint8 slice or an
ImageReadError with a short message -- never another exception, never a hang."""
from __future__ import annotations

import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brain_tumor.decode import ImageReadError, read_image
from test_hostile_inputs import SECRETS, dicom, encode, first_frame_gif, slice_, two_page_tiff
from PIL import Image

SECONDS_PER_INPUT = 2.0
FUZZ = settings(max_examples=45, deadline=None, database=None,  # the time limit is asserted per call below
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_img = slice_(16, 24)
IMAGES = {
    "png": encode(Image.fromarray(_img), "PNG"),
    "png16": encode(Image.fromarray(_img.astype(np.uint16) * 200), "PNG"),
    "jpeg": encode(Image.fromarray(_img), "JPEG", quality=80),
    "gif": first_frame_gif(),
    "tiff": two_page_tiff(),
    "bmp": encode(Image.fromarray(_img), "BMP"),
}
DICOMS = {
    "mono2": dicom(_img.astype(np.uint16) * 16, bits_stored=12, window=(2000, 3000)),
    "signed": dicom(_img.astype(np.int16) - 100, signed=True, rescale=(2, -1024), photometric="MONOCHROME1"),
    "frames": dicom(np.stack([_img, _img[::-1], 255 - _img])),
}


@st.composite
def mutated(draw, seeds: dict[str, bytes]) -> bytes:
    """A seed file with 1-4 bit flips, truncations, insertions or overwrites."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "overwrite")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
    return bytes(data)


def check(data: bytes, frame) -> None:
    start = time.perf_counter()
    try:
        out = read_image(data, frame=frame)
    except ImageReadError as e:
        message = str(e)
        assert message and len(message) <= 200 and "\n" not in message, message
        assert not any(s in message for s in SECRETS), message
    else:
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 2 and min(out.shape) >= 1
    assert time.perf_counter() - start < SECONDS_PER_INPUT


frames = st.one_of(st.none(), st.integers(-1, 3))


@FUZZ
@given(mutated(IMAGES), frames)
def test_mutated_images(data, frame):
    check(data, frame)


@FUZZ
@given(mutated(DICOMS), frames)
def test_mutated_dicom(data, frame):
    check(data, frame)


HEADER_VALUES = {  # image-pixel module values, sane and absurd
    "Rows": st.integers(0, 65535), "Columns": st.integers(0, 65535),
    "BitsAllocated": st.sampled_from([0, 1, 8, 16, 32, 64]), "BitsStored": st.integers(0, 40),
    "HighBit": st.integers(0, 40), "PixelRepresentation": st.integers(0, 2), "SamplesPerPixel": st.integers(0, 4),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "XYZ", ""]),
    "NumberOfFrames": st.sampled_from(["0", "1", "3", "-1", "100000"]),
    "WindowCenter": st.sampled_from(["0", "-1e308", "1e308"]), "WindowWidth": st.sampled_from(["0", "1e-300", "-5"]),
    "RescaleSlope": st.sampled_from(["0", "1e308", "-1"]), "RescaleIntercept": st.sampled_from(["0", "1e308"]),
}


@st.composite
def dicom_headers(draw) -> bytes:
    """The mono2 seed with 1-4 image-pixel attributes set to drawn values (written, not byte-mutated)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(DICOMS["mono2"]))
    for key in draw(st.sets(st.sampled_from(sorted(HEADER_VALUES)), min_size=1, max_size=4)):
        setattr(ds, key, draw(HEADER_VALUES[key]))
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


@settings(FUZZ, max_examples=30)
@given(dicom_headers(), frames)
def test_dicom_header_values(data, frame):
    check(data, frame)


@settings(FUZZ, max_examples=30)
@given(st.binary(max_size=2048), st.booleans())
def test_random_bytes(data, dicom_preamble):
    check(b"\0" * 128 + b"DICM" + data if dicom_preamble else data, None)
