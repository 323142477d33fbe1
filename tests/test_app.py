"""The Gradio app, served in-process on a free port with the tiny model and called with gradio_client."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx
from gradio_client import handle_file
import numpy as np
import pytest
from PIL import Image

from brain_tumor.config import MAX_FILE_BYTES
from brain_tumor.decode import read_image
from brain_tumor.inference import Predictor
from brain_tumor.model import create_model, save_model
from conftest import dicom_dataset

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
SECRET = "Doe^Jane-SECRET-4711"  # a patient name that must never come back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    """app.py imported with the tiny model (the bundled model/ may not exist)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAIN_TUMOR_MODEL", str(tiny_model_dir))
        import app as module
    return module


@pytest.fixture(scope="module")
def url(app):
    _, local_url, _ = app.launch(app.demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield local_url
    app.demo.close()


@pytest.fixture(scope="module")
def client(url, tmp_path_factory):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def ask(client, path, **kwargs):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/predict", **kwargs)


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def write_dicom(path: Path, frames: list[np.ndarray], photometric: str = "MONOCHROME2", preamble: bool = True) -> Path:
    """16-bit MR DICOM (12 bits stored) whose window maps the pixels back to the given 8-bit slices exactly."""
    ds = dicom_dataset(SECRET, "SECRET-ID-4711")
    ds.Rows, ds.Columns = frames[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2040.5, 4081  # [0, 4080] -> [0, 255]
    values = np.stack(frames).astype(np.uint16) * 16
    if photometric == "MONOCHROME1":
        values = 4080 - values
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = (values if len(frames) > 1 else values[0]).tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def uploads_left(app) -> list[str]:
    return sorted(str(p.relative_to(app.TEMP_DIR)) for p in Path(app.TEMP_DIR).rglob("*") if p.is_file())


# ----------------------------------------------------------------------------------------------- the tests

def test_import_does_not_launch_and_uses_a_private_temp_dir(app):
    from gradio.utils import get_upload_folder

    assert not app.demo.is_running  # first test of the module: no server fixture has run yet
    assert Path(get_upload_folder()) == Path(app.TEMP_DIR)
    assert Path(app.TEMP_DIR).stat().st_mode & 0o077 == 0  # private to this user
    assert app.demo.delete_cache == app.DELETE_CACHE


def test_labels_and_card_come_from_the_model_config(app, tmp_path):
    import gradio as gr

    folder = save_model(create_model(["no", "yes"], init="scratch", img_size=64).eval(), tmp_path / "two")
    predictor = Predictor(str(folder))
    demo = app.build_demo(predictor)
    dropdowns = {b.label: b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)}
    assert [v for _, v in dropdowns["Class to explain"].choices] == ["predicted", "no", "yes"]
    assert {"gradcam", "gradcam++", "eigencam"} <= {v for _, v in dropdowns["Explanation method"].choices}
    card = app.card_markdown(predictor)
    assert str(folder) in card and "Intended use" in card and "not a diagnostic device" in card
    assert "without validation figures" in card  # an untrained model has no metrics: said, not crashed


def test_ablation_cam_is_offered_only_where_it_takes_one_pass(app, tmp_path):
    import gradio as gr

    folder = save_model(create_model(["no", "yes"], init="scratch", img_size=64).eval(), tmp_path / "m")
    predictor = Predictor(str(folder))
    assert predictor.config.cam_layer == "layer4"
    assert "ablationcam" in app.heatmap_methods(predictor)
    [pred] = predictor.predict([read_image(EXAMPLES[0])], heatmaps=True, method="ablationcam")
    assert pred.method == "ablationcam" and pred.heatmap.shape == (64, 64) and pred.heatmap.max() > 0.5
    predictor.config.cam_layer = "layer3:0.75+layer4"  # layer3's AblationCAM: a forward pass per channel
    methods = app.heatmap_methods(predictor)
    assert "ablationcam" not in methods and {"gradcam", "gradcam++", "eigencam"} <= set(methods)
    demo = app.build_demo(predictor)
    menu = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Explanation method")
    assert [v for _, v in menu.choices] == methods


def test_heat_map_quality_is_told_set_by_set(app, tiny_model_dir):
    predictor = Predictor(str(tiny_model_dir))
    assert app.heatmap_quality(predictor) == ""  # no figures: nothing claimed
    predictor.config.metrics = {"heatmaps": {
        "n_boxes": 381, "pointing_game": 0.67, "heat_in_head": 0.994,  # the mean over the sets, not of all slices
        "by_source": {"../data/lgg-segmentation": {"pointing_game": 0.841, "n_boxes": 321},
                      "../data/tumor-boxes-sample": {"pointing_game": 0.5, "n_boxes": 60}}}}
    line = app.heatmap_quality(predictor)
    assert "84% of 321 lgg-segmentation slices and 50% of 60 tumor-boxes-sample slices" in line
    assert "67%" not in line and "99% of its heat" in line
    del predictor.config.metrics["heatmaps"]["by_source"]  # an older config: the overall figure alone
    assert "67% of 381 slices" in app.heatmap_quality(predictor)


def test_summary_says_uncertain_and_not_mri_in_words(app):
    pred = app.predictor.predict([read_image(EXAMPLES[0])], heatmaps=True)[0]
    assert f"**Answer: {pred.display(pred.label)}**" in app.summary(pred, app.predictor)
    pred.needs_review = True
    assert "uncertain — needs review" in app.summary(pred, app.predictor)
    pred.looks_like_mri = False
    text = app.summary(pred, app.predictor)
    assert "does not look like a brain MRI" in text and "probability of a tumour" not in text


@pytest.mark.slow
def test_every_example_gives_the_cli_answer(app, client, tiny_model_dir):
    out = subprocess.run([sys.executable, "-m", "brain_tumor.predict", "--json", "--model", str(tiny_model_dir),
                          *map(str, EXAMPLES)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    cli = {Path(r["path"]).name: r for r in json.loads(out.stdout)}
    for path in EXAMPLES:
        label, overlay_png, view_png, summary = ask(client, path)
        shown = app.predictor.config.display  # the app names classes by their display names ("no tumour")
        assert label["label"] == shown(cli[path.name]["label"]), path.name
        got = confidences(label)
        assert got.keys() == {shown(c) for c in cli[path.name]["probabilities"]}
        for c, p in cli[path.name]["probabilities"].items():
            assert got[shown(c)] == pytest.approx(p, abs=1e-5), (path.name, c)
        overlay = np.asarray(Image.open(overlay_png))
        view = np.asarray(Image.open(view_png))
        assert overlay.shape == (512, 512, 3) and overlay.dtype == np.uint8
        assert view.shape[:2] == (512, 512)
        gray = read_image(path)
        [pred] = app.predictor.predict([gray])
        assert np.array_equal(view, app.predictor.view(gray, pred.crop))  # the scan is shown losslessly
        assert f"probability of a tumour at **{cli[path.name]['tumor_probability']:.1%}" in summary
        assert "not a diagnostic device" in summary


def test_a_client_given_one_ssl_context_gets_the_same_answer(url, client, tmp_path):
    """A client given its own SSL context (ssl_verify=SSLContext, as a user behind a private CA builds one) answers
    alike."""
    import ssl

    from gradio_client import Client

    fast = Client(url, verbose=False, download_files=str(tmp_path), ssl_verify=ssl.create_default_context())
    path = EXAMPLES[0]
    label, overlay_jpg, _, summary = ask(fast, path)
    ref_label, ref_overlay, _, ref_summary = ask(client, path)
    assert confidences(label) == confidences(ref_label) and summary == ref_summary
    assert np.array_equal(np.asarray(Image.open(overlay_jpg)), np.asarray(Image.open(ref_overlay)))


def test_the_benchmarks_null_app_serves_the_same_predict_api(app, tmp_path):
    """benchmarks/null_app.py is the floor of /predict round trips only if its API is app.py's: same components in,
    same out, same outputs' formats and sizes."""
    import importlib

    null = importlib.import_module("benchmarks.null_app")

    def predict_io(demo):
        [fn] = [f for f in demo.fns.values() if f.api_name == "predict"]
        return [type(c).__name__ for c in fn.inputs], [type(c).__name__ for c in fn.outputs], fn.preprocess

    assert predict_io(null.demo) == predict_io(app.demo)
    upload = tmp_path / "scan.jpg"
    upload.write_bytes(EXAMPLES[0].read_bytes())
    [fn] = [f for f in null.demo.fns.values() if f.api_name == "predict"]
    label, overlay_jpg, view_png, summary, _ = fn.fn({"path": str(upload)})
    assert set(label) == set(null.CLASSES) and "null app" in summary
    assert not upload.exists()  # the upload is dropped, as app.py drops it once decoded
    overlay, view = Image.open(overlay_jpg), Image.open(view_png)
    assert (overlay.format, overlay.size, overlay.mode) == ("JPEG", (512, 512), "RGB")
    assert (view.format, view.size, view.mode) == ("PNG", (512, 512), "L")


def test_dicom_monochrome1_and_2_give_the_answer_of_the_same_pixels(client, tmp_path):
    gray = read_image(EXAMPLES[0])
    reference = confidences(ask(client, EXAMPLES[0])[0])
    files = [write_dicom(tmp_path / "mono2.dcm", [gray]),
             write_dicom(tmp_path / "mono1.dcm", [gray], "MONOCHROME1"),
             write_dicom(tmp_path / "no_extension", [gray])]  # DICOM recognised by its preamble
    for f in files:
        assert read_image(f).tolist() == gray.tolist()  # the window undoes the 16-bit scaling exactly
        label, _, _, summary = ask(client, f)
        assert confidences(label) == pytest.approx(reference, abs=1e-6), f.name
        assert "SECRET" not in json.dumps(label) + summary


def test_multiframe_dicom_frame_is_selectable(client, tmp_path):
    grays = [read_image(p) for p in EXAMPLES[:3]]
    multi = write_dicom(tmp_path / "series.dcm", grays)
    for k in (0, 2):
        expected = confidences(ask(client, EXAMPLES[k])[0])
        assert confidences(ask(client, multi, frame=k)[0]) == pytest.approx(expected, abs=1e-6)


def test_a_session_re_picks_a_slice_after_its_upload_is_deleted(app, tmp_path):
    from brain_tumor.decode import ImageReadError

    grays = [read_image(p) for p in EXAMPLES[:3]]
    upload = Path(app.TEMP_DIR, "upload-test", "series.dcm")
    upload.parent.mkdir()
    write_dicom(upload, grays)
    gray, state = app._decode(str(upload), 1, None)
    assert not upload.exists() and np.array_equal(gray, grays[1])
    gray, state = app._decode(str(upload), 2, state)  # the slider moved: decoded from the session's copy
    assert np.array_equal(gray, grays[2]) and state["frame"] == 2
    with pytest.raises(ImageReadError, match="no longer available"):
        app._decode(str(upload), 0, None)  # another session cannot read it
    assert all(np.array_equal(a, b) for a, b in zip(app._slices(state), grays, strict=True))  # "scan all"


def test_scan_all_refuses_more_frames_than_are_answered_together(app, monkeypatch):
    import gradio as gr
    from brain_tumor import decode

    upload = Path(app.TEMP_DIR, "frames-test", "series.dcm")
    upload.parent.mkdir()
    write_dicom(upload, [read_image(p) for p in EXAMPLES[:3]])
    _, state = app._decode(str(upload), 0, None)
    monkeypatch.setattr(decode, "MAX_SLICES", 2)
    fns = {d.fn.__name__: d.fn for d in app.build_demo(app.predictor).fns.values()}
    with pytest.raises(gr.Error, match="3 frames"):
        fns["scan_all"](state)


@pytest.mark.parametrize("name,content,reason", [
    ("noise.png", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a supported image"),
    ("notes.png", b"this is text, not a scan\n", "not a supported image"),
    ("empty.png", b"", "empty file"),
])
def test_bad_files_give_a_message_and_the_app_keeps_serving(client, tmp_path, name, content, reason):
    from gradio_client.exceptions import AppError

    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(AppError, match=reason):
        ask(client, bad)
    assert ask(client, EXAMPLES[0])[0]["label"]


def test_dicom_without_pixels_and_unknown_class_are_refused(client, tmp_path):
    from gradio_client.exceptions import AppError

    report = write_dicom(tmp_path / "report.dcm", [np.zeros((8, 8), np.uint8)])
    import pydicom

    ds = pydicom.dcmread(report)
    del ds.PixelData
    ds.save_as(report)
    with pytest.raises(AppError, match="no pixel data") as e:
        ask(client, report)
    assert "SECRET" not in str(e.value)
    with pytest.raises(AppError):
        ask(client, EXAMPLES[0], target="astrocytoma")


def test_too_large_upload_is_refused(url, client, tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks first
        ask(client, big)
    with open(big, "rb") as f:  # the server refuses it too (what a browser meets)
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", f)}, timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert ask(client, EXAMPLES[1])[0]["label"]


@pytest.mark.slow
def test_concurrent_requests_give_the_results_of_sequential_ones(app, url, client, tmp_path):
    from gradio_client import Client

    images = list(EXAMPLES)
    for p in EXAMPLES[:4]:  # 4 more, all different: mirrored examples
        mirrored = tmp_path / f"mirrored_{p.stem}.png"
        Image.fromarray(read_image(p)[:, ::-1].copy()).save(mirrored)
        images.append(mirrored)
    methods = ["gradcam", "gradcam++", "eigencam"]
    jobs = [(img, methods[i % 3]) for i, img in enumerate(images)]  # 12 requests

    def answer(c, img, method):
        label, overlay_png, _, _ = ask(c, img, method=method)
        return confidences(label), np.asarray(Image.open(overlay_png))

    sequential = [answer(client, img, m) for img, m in jobs]
    concurrent: list = [None] * len(jobs)
    errors: list = []

    def worker(w: int) -> None:
        try:
            c = Client(url, verbose=False, download_files=str(tmp_path / f"dl{w}"))
            for i in range(w, len(jobs), 4):
                concurrent[i] = answer(c, *jobs[i])
        except Exception as e:  # reported below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for (img, m), (p_seq, map_seq), (p_con, map_con) in zip(jobs, sequential, concurrent):
        assert p_con == p_seq, (img.name, m)
        assert np.array_equal(map_con, map_seq), (img.name, m)


def test_uploads_do_not_linger_in_the_temp_dir(app, client, tmp_path):
    private = tmp_path / "patient_scan_0001.png"
    Image.fromarray(read_image(EXAMPLES[2])).save(private)
    dicom = write_dicom(tmp_path / "patient_scan_0002.dcm", [read_image(EXAMPLES[3])])
    ask(client, private)
    ask(client, dicom)
    left = uploads_left(app)
    assert not [f for f in left if "patient_scan" in f], left
    assert not [f for f in left if Path(app.TEMP_DIR, f).stat().st_size == 0], left  # no empty temp files


@contextlib.contextmanager
def app_process(model_dir, tmp_path, poll: float):
    """``python app.py`` on a free port, started and waited for until its page first answers (polled every
    ``poll`` s, 90 s at most): yields (process, port, that page's bytes); killed on the way out if still running."""
    port = free_port()
    env = {**os.environ, "BRAIN_TUMOR_MODEL": str(model_dir), "GRADIO_TEMP_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.read() if r.status == 200 else b""
                    break
            except OSError:
                time.sleep(poll)
        else:
            pytest.fail(f"app.py did not serve on port {port}: {proc.stdout.read() if proc.poll() is not None else ''}")
        yield proc, port, page
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_python_app_py_serves_on_the_given_port(tiny_model_dir, tmp_path):
    with app_process(tiny_model_dir, tmp_path, poll=0.5) as (proc, port, page):
        assert b"Brain MRI tumour classifier" in page
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)  # holds a heartbeat stream open
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the app closes itself (heartbeats, queue, server), exit code 0
        out, _ = proc.communicate(timeout=60)
        client.close()
        assert proc.returncode == 0, out
        assert "Closing server running on port" in out  # Blocks.close ran, not only the HTTP server's close


@pytest.mark.slow
def test_ctrl_c_as_soon_as_the_page_answers_stops_the_app_cleanly(tiny_model_dir, tmp_path):
    """The server answers before launch() has returned: a Ctrl-C in that window used to escape the clean shutdown
    (the process died of the signal, or hung on the server's thread). Sent the moment the page first answers."""
    with app_process(tiny_model_dir, tmp_path, poll=0.02) as (proc, _, _):
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Stopping the app" in out, out


@pytest.mark.slow
def test_python_app_py_reports_a_missing_model(tmp_path):
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "app.py", "--model", str(tmp_path / "nowhere")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "model not found" in out.stderr


def test_a_withheld_answer_shows_no_class(app, monkeypatch):
    """Not a brain MRI: the label output names none of the model's classes, and the JSON says needs review."""
    pred = app.predictor.predict([read_image(EXAMPLES[0])], heatmaps=True)[0]
    pred.looks_like_mri = False
    assert pred.to_json()["needs_review"] is True
    monkeypatch.setattr(app.Predictor, "predict", lambda self, *a, **k: [pred])
    demo = app.build_demo(app.predictor)
    fn = next(d.fn for d in demo.fns.values() if d.api_name == "predict")
    label, *_ = fn({"path": str(EXAMPLES[0])})
    assert label == app.NOT_ASSESSED and label not in app.predictor.classes


def test_report_endpoint_returns_a_one_page_pdf_without_patient_fields(client, tmp_path):
    from pypdf import PdfReader

    dicom = write_dicom(tmp_path / "case.dcm", [read_image(EXAMPLES[0])])
    label, *_ = ask(client, dicom)
    pdf = client.predict(handle_file(str(dicom)), api_name="/report")
    reader = PdfReader(pdf)
    text = reader.pages[0].extract_text()
    assert len(reader.pages) == 1 and Path(pdf).name == "report-case.pdf"
    assert "case.dcm" in text and "not a diagnostic device" in text and "SECRET" not in text
    assert label["label"] in text  # the answer the app showed, in the same words


def test_a_volume_is_answered_slice_by_slice_and_scanned_whole(app, client, tmp_path):
    nib = pytest.importorskip("nibabel")
    grays = [read_image(p) for p in EXAMPLES[:5]]
    side = min(min(g.shape) for g in grays)
    # RAS voxels whose radiological axial slices are the examples (cropped to one size)
    vol = np.stack([g[:side, :side][::-1, ::-1].T for g in grays], -1).astype(np.float32)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    label, _, _, text = ask(client, path, frame=3)
    assert "Slice 3 of 5" in text and label["label"]

    demo = app.build_demo(app.predictor)
    fns = {d.fn.__name__: d.fn for d in demo.fns.values()}
    upload = Path(app.TEMP_DIR, "volume-test", "head.nii.gz")
    upload.parent.mkdir()
    upload.write_bytes(path.read_bytes())
    slider, _, button, plot, state = fns["preview"]({"path": str(upload)}, None)
    assert slider["visible"] and slider["maximum"] == 4 and button["visible"] and plot["visible"]
    assert not upload.exists()

    class Progress:  # gr.Progress outside a request: pass the iterable through
        def tqdm(self, it, **_):
            return it

    fig, moved = fns["scan_all"](state, progress=Progress())
    expected = [p.tumor_probability for p in app.predictor.predict(list(state["volume"]))]
    assert moved["value"] == int(np.argmax(expected))
    assert len(fig.axes[0].lines[0].get_ydata()) == 5


def test_loose_dicom_files_become_one_series_in_the_session(app, tmp_path):
    from test_volume import write_series

    d = np.zeros((40, 40, 4), np.float32)
    d[5:35, 5:35] = 100
    folder = Path(app.TEMP_DIR, "series-test")
    paths = write_series(folder, d)
    demo = app.build_demo(app.predictor)
    fns = {f.fn.__name__: f.fn for f in demo.fns.values()}
    cleared, slider, _, button, _, state = fns["series_preview"]([{"path": str(p)} for p in paths], None)
    assert cleared is None and slider["maximum"] == 3 and state["frames"] == 4 and button["visible"]
    assert not any(p.exists() for p in paths)  # the uploads are dropped once read
    label, _, _, text, state = fns["predict"](None, 1, state=state)  # the slider, no file in the scan box
    assert "Slice 1 of 4" in text and label
    assert fns["report"](None, 1, state=state).endswith(".pdf")
