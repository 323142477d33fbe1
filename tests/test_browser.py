"""The app in a real browser: Playwright driving Debian's Chromium (`apt-get install chromium`).

Model: $BRAIN_TUMOR_MODEL, else the bundled model/, else the tiny untrained one. The screenshot goes to
the test's tmp folder; set BRAIN_TUMOR_SCREENSHOT=docs/screenshot.png to refresh the README's.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from brain_tumor.decode import read_image
from brain_tumor.inference import Predictor

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = ROOT / "examples" / "glioma_1.jpg"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed at /usr/bin/chromium "
                                "(apt-get install chromium); Playwright's own browser download is not used")]


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """(url, predictor, calls): the app for the chosen model, with a count of model calls."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAIN_TUMOR_MODEL", str(tiny_model_dir))
        import app
    bundled = ROOT / "model" / "model.safetensors"
    predictor = Predictor(os.environ.get("BRAIN_TUMOR_MODEL") or (str(bundled.parent) if bundled.exists()
                                                                  else str(tiny_model_dir)))
    calls = []
    original = predictor.predict
    predictor.predict = lambda *a, **k: calls.append(1) or original(*a, **k)
    demo = app.build_demo(predictor)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = app.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield url, predictor, calls
    demo.close()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(60_000)
        page.requested = []
        page.on("request", lambda r: page.requested.append(r.url))
        yield page
        browser.close()


def test_upload_shows_label_and_heat_map(served, page, tmp_path):
    from playwright.sync_api import expect

    url, predictor, calls = served
    expected = predictor.predict([read_image(EXAMPLE)])[0]
    page.goto(url)
    page.locator("#scan input[type=file]").set_input_files(str(EXAMPLE))

    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible()
    expect(page.locator("#view img")).to_be_visible()
    expect(page.locator("#confidences")).to_contain_text(predictor.config.display(expected.label))
    expect(page.locator("#summary")).to_contain_text("probability of a tumour")
    width = overlay.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width == 512

    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("BRAIN_TUMOR_SCREENSHOT"):
        _save_small(shot, Path(os.environ["BRAIN_TUMOR_SCREENSHOT"]))

    # opacity re-blends the last heat map in the page: no model call
    before, n_calls = overlay.get_attribute("src"), len(calls)
    page.locator("#opacity input[type=range]").fill("0.9")
    expect(overlay).not_to_have_attribute("src", before)
    assert len(calls) == n_calls
    assert [u for u in page.requested if not u.startswith(url)] == []  # nothing fetched from elsewhere


def test_unreadable_file_shows_a_message_and_the_page_keeps_working(served, page, tmp_path):
    from playwright.sync_api import expect

    bad = tmp_path / "not_a_scan.png"
    bad.write_text("hello")
    page.goto(served[0])
    page.locator("#scan input[type=file]").set_input_files(str(bad))
    expect(page.get_by_text("not a supported image or DICOM file")).to_be_visible()
    page.get_by_text("glioma 2").click()  # an example, one click
    expect(page.locator("#overlay img")).to_be_visible()


def _save_small(shot: Path, target: Path) -> None:
    """A palette PNG: a fraction of the size, no visible loss for a UI screenshot."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    Image.open(shot).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def test_volume_scan_all_slices_and_report(served, page, tmp_path):
    """A NIfTI volume: the slice slider appears, 'Scan all slices' plots every slice and jumps to the most
    suspicious one, and 'Download report' gives a PDF link."""
    import numpy as np
    from playwright.sync_api import expect

    nib = pytest.importorskip("nibabel")
    grays = [read_image(p) for p in sorted((ROOT / "examples").glob("*.jpg"))[:4]]
    side = min(min(g.shape) for g in grays)
    vol = np.stack([g[:side, :side][::-1, ::-1].T for g in grays], -1).astype(np.float32)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    url, predictor, _ = served
    page.goto(url)
    page.locator("#scan input[type=file]").set_input_files(str(path))
    expect(page.locator("#slice")).to_be_visible()
    expect(page.locator("#summary")).to_contain_text("of 4 (0 = most inferior)")
    page.locator("#scan-all").click()
    expect(page.locator("#slice-plot")).to_be_visible()
    best = int(np.argmax([p.tumor_probability for p in predictor.predict([s for s in read_volume_slices(path)])]))
    expect(page.locator("#summary")).to_contain_text(f"Slice {best} of 4")
    page.locator("#report-button").click()
    expect(page.locator("#report")).to_contain_text("report-head.nii")  # Gradio shows the name and ".pdf" apart
    expect(page.locator("#report")).to_contain_text(".pdf")


def read_volume_slices(path):
    from brain_tumor.volume import read_volume

    return read_volume(path).slices


def test_loose_dicom_files_are_read_as_one_series(served, page, tmp_path):
    """Several .dcm files of one series dropped together: sorted by position, shown with the slice slider."""
    import numpy as np
    from playwright.sync_api import expect

    from test_volume import write_series

    d = np.zeros((48, 48, 5), np.float32)
    d[8:40, 8:40] = np.linspace(60, 160, 5)
    paths = write_series(tmp_path / "series", d)
    page.goto(served[0])
    page.get_by_text("…or a DICOM series as loose files").click()
    page.locator("#series input[type=file]").set_input_files([str(p) for p in paths])
    expect(page.locator("#slice")).to_be_visible()
    expect(page.locator("#summary")).to_contain_text("Slice 2 of 5 (0 = most inferior)")
    expect(page.locator("#overlay img")).to_be_visible()
