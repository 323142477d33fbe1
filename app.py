"""Gradio app: drag in a brain MRI slice, see the model's answer and the heat map of what drove it.

    python app.py                                   # bundled model, http://127.0.0.1:7860
    python app.py --model user/brain-tumor@v1       # a Hub model (or a local model folder)
    python app.py --share --port 8080               # public share link (needs a network)
    BRAIN_TUMOR_MODEL=runs/x python app.py          # the model from the environment

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured. All logic lives in the brain_tumor package:
decoding (read_image), preprocessing and heat maps (Predictor), overlays (explain.overlay). This
file wires them to components. The model is loaded once, at import; ``demo`` is what Spaces runs.
"""
from __future__ import annotations

import argparse
import atexit
import html
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

# Uploads live in a private folder (mode 0700) that is removed at exit, unless the user chose one.
if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="brain-tumor-app-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home with medical images around
TEMP_DIR = os.environ["GRADIO_TEMP_DIR"]

import gradio as gr  # noqa: E402  (after GRADIO_TEMP_DIR is set)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from brain_tumor.config import MAX_FILE_BYTES, HelpFormatter  # noqa: E402
from brain_tumor.decode import dicom_frame_count, ImageReadError, read_frames, read_image  # noqa: E402
from brain_tumor.explain import HEAT_FLOOR, LIBRARY_METHODS, METHOD_LABELS, ablation_is_closed_form, overlay  # noqa: E402
from brain_tumor.hub import model_card  # noqa: E402
from brain_tumor.inference import Prediction, Predictor, most_suspicious  # noqa: E402
from brain_tumor.model import ModelLoadError  # noqa: E402
from brain_tumor.report import write_report  # noqa: E402
from brain_tumor.volume import is_volume, read_volume  # noqa: E402
from brain_tumor.verdict import ANSWERED, DISCLAIMER  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted((HERE / "examples").glob("*.jpg"))
PREDICTED = "predicted"
DEFAULT_OPACITY = 0.45
NOT_ASSESSED = "not assessed: this does not look like a brain MRI"  # the label shown when no answer is given
DELETE_CACHE = (300, 600)  # every 5 minutes, delete output images older than 10 minutes


def heatmap_methods(predictor: Predictor) -> list[str]:
    """The menu's heat-map methods: all of pytorch-grad-cam's, but AblationCAM only where it is one pass (the
    served layer is the last stage); elsewhere it takes minutes a slice on a CPU."""
    fast = ablation_is_closed_form(predictor.model, predictor.config.cam_layer)
    return [m for m in LIBRARY_METHODS if m != "ablationcam" or fast]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the brain MRI tumour classifier as a Gradio app.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model folder or Hub id user/name[@revision] (default: $BRAIN_TUMOR_MODEL, else model/)")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs a network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- what is shown

def summary(pred: Prediction, predictor: Predictor) -> str:
    """The answer in words (verdict.decide, as the CLI and the report say it), the tumour probability, and
    what the heat map shows."""
    decision = pred.decision
    if decision.status == ANSWERED:
        lines = [f"**Answer: {decision.headline}** (confidence {pred.confidence:.1%}; uncertainty "
                 f"{pred.uncertainty:.2f} on a 0-1 scale)."]
    else:
        lines = [f"**{decision.headline}.** {decision.detail}"]
    if predictor.config.no_tumor_indices and pred.looks_like_mri:
        p = pred.tumor_probability
        words = "very likely" if p >= 0.95 else "likely" if p >= 0.5 else "unlikely" if p > 0.05 else "very unlikely"
        lines.append(f"The model puts the probability of a tumour at **{p:.1%}**: a tumour is {words}.")
    if pred.heatmap is not None:
        lines.append(f"Heat map: {METHOD_LABELS.get(pred.method, pred.method)} for "
                     f"*{pred.display(pred.heatmap_class)}*: where the evidence for that class lies, red strongest. "
                     "It shows what drove the network, not an outline of a tumour." + heatmap_quality(predictor))
    lines.append(f"_{DISCLAIMER}_")
    return "\n\n".join(lines)


def heatmap_quality(predictor: Predictor) -> str:
    """One line on how good the default maps measured (config.metrics['heatmaps']), set by set where the figures
    say which sets (their overall pointing game is the mean over the sets, not a share of all the slices), or
    nothing."""
    h = (predictor.config.metrics or {}).get("heatmaps") or {}
    if "pointing_game" not in h:
        return ""
    sets = [(Path(name).name, row) for name, row in (h.get("by_source") or {}).items()
            if isinstance(row, dict) and isinstance(row.get("pointing_game"), (int, float))]
    parts = [f"{row['pointing_game']:.0%} of {row.get('n_boxes', '?')} {name} slices" for name, row in sets]
    where = (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0] if parts
             else f"{h['pointing_game']:.0%} of {h.get('n_boxes', '?')} slices")
    return (f" Measured against tumour boxes, the default map's peak fell inside the box on {where}, and "
            f"{h.get('heat_in_head', 0):.0%} of its heat lay inside the head.")


def card_markdown(predictor: Predictor) -> str:
    """The model card (hub.model_card) without its front matter, headings one level down, source first."""
    config = predictor.config
    text = re.sub(r"\A---\n.*?\n---\n", "", model_card(config), flags=re.S)
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)
    head = (f"**Model:** `{predictor.source}` · version {config.version} · "
            f"classes: {', '.join(predictor.classes)} · input {config.img_size} px")
    if not config.metrics:
        head += "\n\n_This model was published without validation figures._"
    return f"{head}\n\n{text}"


def render(image: np.ndarray, kind: str) -> str:
    """Encode an output image ourselves, into Gradio's cache folder (served in place, deleted with the cache).

    Gradio's own encoder writes PNG at zlib level 6: 50-140 ms per 512 px image on a laptop CPU, several
    times the model's whole answer. The heat-map overlay is a colour rendering: JPEG, quality 92, no chroma
    subsampling (~1 ms). The model's view is the scan itself: lossless PNG of its one gray channel at zlib
    level 1 (~5 ms)."""
    folder = Path(TEMP_DIR) / "renders"
    folder.mkdir(mode=0o700, exist_ok=True)
    if kind == "overlay":
        path = folder / f"{uuid.uuid4().hex}-heatmap.jpg"
        Image.fromarray(image).save(path, "JPEG", quality=92, subsampling=0)
    else:
        path = folder / f"{uuid.uuid4().hex}-view.png"
        Image.fromarray(image if image.ndim == 2 else image[..., 0]).save(path, "PNG", compress_level=1)
    return str(path)


# ------------------------------------------------------------------------------------------------ uploads

def _is_example(path: str) -> bool:
    size = os.path.getsize(path)
    return any(size == p.stat().st_size and Path(path).read_bytes() == p.read_bytes() for p in EXAMPLES)


def _discard(path: str) -> None:
    """Delete an upload from Gradio's cache once decoded, so that nothing lingers there. A copy of a bundled
    example stays: it is no one's data, and another session may be reading the same cached copy."""
    real = os.path.realpath(path)
    if not real.startswith(os.path.realpath(TEMP_DIR) + os.sep) or _is_example(real):
        return
    try:
        os.remove(real)
        os.rmdir(os.path.dirname(real))  # the per-upload folder, when nothing else shares it
    except OSError:
        pass


def _pick(frame: Optional[float], frames: int, volume: bool) -> Optional[int]:
    """The slice to show: ``frame`` clamped, or the middle one; None for a single-frame file (not a volume)."""
    if frames == 1:
        return 0 if volume else None
    return frames // 2 if frame is None else min(max(int(frame), 0), frames - 1)


def _volume_state(source: str, vol, frame: Optional[float] = None, **extra) -> dict:
    """A session's state for a volume (NIfTI, a zipped or loose DICOM series), kept decoded as axial slices."""
    index = _pick(frame, len(vol), volume=True)
    return {"source": source, "frames": len(vol), "frame": index, "volume": vol.slices, "notes": vol.notes,
            "gray": vol.slices[index], **extra}


def _decode(path: str, frame: Optional[float], state: Optional[dict]) -> tuple[Any, dict]:
    """The slice to classify, and the state that lets the session re-pick a slice after the upload is gone.

    A volume (NIfTI, zipped DICOM series) is kept decoded in the state, 8-bit, as axial slices; a multi-frame
    DICOM file is kept as its bytes. Raises ImageReadError (a reason a person can act on)."""
    if os.path.exists(path):
        try:
            if is_volume(path):
                state = _volume_state(path, read_volume(path), frame)
                return state["gray"], state
            frames = dicom_frame_count(path)
            index = _pick(frame, frames, volume=False)
            data = Path(path).read_bytes() if frames > 1 else None  # kept in memory only to re-pick a slice
            gray = read_image(path, frame=index)
        finally:
            _discard(path)
        return gray, {"source": path, "frames": frames, "frame": index, "data": data, "gray": gray}
    if state and state.get("source") == path:  # the same upload, already decoded and deleted
        if state.get("error"):
            raise ImageReadError(state["error"])
        volume = state.get("volume")
        index = _pick(frame, state["frames"], volume=volume is not None)
        if index != state["frame"]:
            gray = volume[index] if volume is not None else read_image(state["data"], frame=index)
            state = {**state, "frame": index, "gray": gray}
        return state["gray"], state
    raise ImageReadError("the uploaded file is no longer available (uploads are deleted once read); upload it again")


def _slice_controls(state: dict) -> tuple:
    """Updates of the slice slider, the scan-all button and the per-slice plot for the upload in ``state``."""
    frames = state.get("frames", 1)
    kind = "Slice (0 = most inferior" if state.get("volume") is not None else "Frame (multi-frame DICOM"
    slider = gr.update(visible=frames > 1, maximum=max(frames - 1, 1), value=state["frame"] or 0,
                       label=f"{kind}, of {frames})")
    return slider, gr.update(visible=frames > 1), gr.update(visible=frames > 1, value=None)


def _series_scan(state: Optional[dict]) -> Optional[dict]:
    """For a session whose scan is a DICOM series of loose files: a stand-in upload that _decode finds in the state."""
    if state and state.get("series"):
        return {"path": state["source"], "orig_name": state.get("name", "DICOM series")}
    return None


def _slices(state: dict):
    """Every slice of the upload in the state, in order (volume slices, or a multi-frame DICOM's frames)."""
    if state.get("volume") is not None:
        yield from state["volume"]
    elif state.get("data") is not None:
        yield from read_frames(state["data"])
    else:
        yield state["gray"]


def probability_plot(probabilities: list[float], best: int):
    """Tumour probability per slice, the most suspicious one marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 2.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(probabilities)), probabilities, color="#1565c0", lw=1.5)
    ax.scatter([best], [probabilities[best]], color="#b71c1c", zorder=3, label=f"slice {best}")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("axial slice (0 = most inferior)")
    ax.set_ylabel("P(tumour)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


LEGEND = f"""<div style="font-size:0.85em">
<div style="height:12px;border-radius:3px;background:linear-gradient(to right, rgba(0,0,0,0) 0%,
rgba(0,0,0,0) {int(HEAT_FLOOR * 100)}%,
#0000ff {int(HEAT_FLOOR * 100)}%, #00ffff 45%, #ffff00 65%, #ff0000 85%, #800000 100%);border:1px solid #999"></div>
<div style="display:flex;justify-content:space-between"><span>0</span><span>{HEAT_FLOOR:.0%} (below: not drawn)</span>
<span>peak of this slice</span></div>
Heat shows where the evidence for the explained class lies, relative to this slice's strongest (red); heat under
{HEAT_FLOOR:.0%} of the peak is left transparent so the scan shows through. It is not an outline of a tumour.</div>"""


# ------------------------------------------------------------------------------------------------ the app

def build_demo(predictor: Predictor, predict_fn: Optional[Callable] = None) -> gr.Blocks:
    """The Blocks app for one loaded model. Labels come from the model's config, never from this file.

    ``predict_fn`` answers /predict and the slice, method and class controls in place of the model's ``predict``
    (same arguments and outputs); benchmarks/null_app.py passes one that does no work."""

    def answer(scan: dict, frame, method, target, state):
        """(decoded slice, prediction with heat map, state) for the upload; gr.Error with a reason otherwise."""
        try:
            gray, state = _decode(scan["path"], frame, state)
            [pred] = predictor.predict([gray], heatmaps=True, method=method,
                                       target=None if target in (None, "", PREDICTED) else target)
        except (ImageReadError, ValueError) as e:
            raise gr.Error(html.escape(f"Could not use this file: {e}"), print_exception=False) from None
        return gray, pred, state

    def predict(scan: Optional[dict], frame: float = 0, method: str = predictor.config.cam_method,
                target: str = PREDICTED,
                opacity: float = DEFAULT_OPACITY, state: Optional[dict] = None):
        """Classify one MRI slice; returns class confidences, heat-map overlay, model's view, summary."""
        scan = scan or _series_scan(state)
        if not scan:
            return None, None, None, "", None
        gray, pred, state = answer(scan, frame, method, target, state)
        view = predictor.view(gray, pred.crop)
        state = {**state, "view": view, "heat": pred.heatmap}
        # a withheld answer shows no class as the answer: the label carries none of the model's classes
        label = ({predictor.config.display(c): p for c, p in pred.probabilities.items()} if pred.looks_like_mri
                 else NOT_ASSESSED)
        text = summary(pred, predictor)
        if state.get("frames", 1) > 1:
            text = f"Slice {state['frame']} of {state['frames']} (0 = most inferior).\n\n" + text
        if state.get("notes"):
            text += "\n\n" + " ".join(f"Note: {html.escape(n)}." for n in state["notes"])
        return label, render(overlay(view, pred.heatmap, opacity), "overlay"), render(view, "view"), text, state

    def report(scan: Optional[dict], frame: float = 0, method: str = predictor.config.cam_method,
               target: str = PREDICTED, opacity: float = DEFAULT_OPACITY, state: Optional[dict] = None):
        """The one-page PDF report of the answer /predict gives for the same inputs."""
        scan = scan or _series_scan(state)
        if not scan:
            raise gr.Error("Upload a scan first: the report is of its answer.", print_exception=False)
        gray, pred, state = answer(scan, frame, method, target, state)
        name = scan.get("orig_name") or Path(scan["path"]).name
        folder = Path(TEMP_DIR) / "renders" / uuid.uuid4().hex
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", Path(str(name)).name)[:60].rsplit(".", 1)[0] or "scan"
        path = folder / f"report-{stem}.pdf"
        write_report(pred, predictor.view(gray, pred.crop), path, file_name=str(name), model=predictor.source,
                     version=predictor.config.version, opacity=opacity,
                     slice_index=state.get("frame") if state.get("frames", 1) > 1 else None)
        return str(path)

    def reblend(state: Optional[dict], opacity: float):
        if not state or state.get("view") is None:
            return gr.skip()
        return render(overlay(state["view"], state["heat"], opacity), "overlay")

    def preview(scan: Optional[dict], state: Optional[dict]):
        """On upload: decode once, show the scan at once, and set up the slice slider for volumes."""
        hidden = gr.update(visible=False)
        if not scan and state and state.get("series"):  # the file box was cleared for a series: keep it
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        if not scan:
            return gr.update(visible=False, value=0), None, hidden, hidden, state
        try:
            gray, state = _decode(scan["path"], None, state)
        except ImageReadError as e:  # the upload is gone: predict reports the reason from the state
            return gr.update(visible=False, value=0), None, hidden, hidden, {"source": scan["path"], "error": str(e)}
        slider, button, plot = _slice_controls(state)
        return slider, render(_fit(gray), "view"), button, plot, state

    def series_preview(files: Optional[list], state: Optional[dict]):
        """Several DICOM files dropped together: read as one series (sorted by position), shown like a volume."""
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        paths = [f["path"] if isinstance(f, dict) else str(f) for f in files]
        try:
            vol = read_volume(paths)
        except ImageReadError as e:
            raise gr.Error(html.escape(f"Could not use these files as one DICOM series: {e}"),
                           print_exception=False) from None
        finally:
            for p in paths:
                _discard(p)
        state = _volume_state(f"series:{uuid.uuid4().hex}", vol, series=True, name=vol.name)
        slider, button, plot = _slice_controls(state)
        return None, slider, render(_fit(state["gray"]), "view"), button, plot, state

    def scan_all(state: Optional[dict], progress=gr.Progress()):
        """Every slice through the model in batches: the tumour probability per slice, and the slider moved to the
        most suspicious one (which the chained predict then explains)."""
        if not state or state.get("frames", 1) < 2:
            raise gr.Error("Scan all slices needs a volume or a multi-frame DICOM file.", print_exception=False)
        try:
            slices, preds = list(_slices(state)), []
        except ImageReadError as e:  # a frame that does not decode, or more frames than are answered together
            raise gr.Error(html.escape(f"Could not scan this file: {e}"), print_exception=False) from None
        batch = 16
        for start in progress.tqdm(range(0, len(slices), batch), desc="scanning slices", unit="batch"):
            preds += predictor.predict(slices[start:start + batch], batch_size=batch)
        best = most_suspicious(preds)
        return probability_plot([p.tumor_probability for p in preds], best), gr.update(value=best)

    with gr.Blocks(title="Brain MRI tumour classifier", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# Brain MRI tumour classifier\nDrop one MRI slice (JPEG, PNG, BMP, TIFF, WebP or DICOM) or a "
                    "volume (NIfTI `.nii`/`.nii.gz`, or a `.zip` of one DICOM series): the model's answer, and a "
                    f"heat map of the regions that drove it. **{DISCLAIMER}**")
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                scan = gr.File(label="MRI slice or volume (JPEG, PNG, BMP, TIFF, WebP, DICOM, NIfTI, zipped DICOM "
                                     "series)", type="filepath", elem_id="scan")
                with gr.Accordion("…or a DICOM series as loose files", open=False):
                    series = gr.File(label="Drop all the .dcm files of one series", file_count="multiple",
                                     type="filepath", elem_id="series")
                frame = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                scan_button = gr.Button("Scan all slices", visible=False, elem_id="scan-all")
                method = gr.Dropdown([(METHOD_LABELS[m], m) for m in heatmap_methods(predictor)],
                                     value=predictor.config.cam_method,
                                     label="Explanation method")
                target = gr.Dropdown([("the predicted class", PREDICTED)] +
                                     [(predictor.config.display(c), c) for c in predictor.classes], value=PREDICTED,
                                     label="Class to explain")
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heat-map opacity", elem_id="opacity")
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=[scan], label="Examples (click one)",
                            example_labels=[p.stem.replace("_", " ") for p in EXAMPLES], cache_examples=False,
                            examples_per_page=len(EXAMPLES) or 10)
            with gr.Column(scale=2):
                with gr.Row():
                    view = gr.Image(label="The scan as the model saw it", type="filepath", interactive=False,
                                    elem_id="view")
                    with gr.Column():
                        heat = gr.Image(label="Heat map", type="filepath", interactive=False, elem_id="overlay")
                        gr.HTML(LEGEND, elem_id="legend")
                answer_text = gr.Markdown(label="Summary", elem_id="summary")
                label = gr.Label(label="Confidence per class", num_top_classes=len(predictor.classes),
                                 elem_id="confidences")
                plot = gr.Plot(label="Tumour probability per slice", elem_id="slice-plot", visible=False)
                with gr.Row():
                    report_button = gr.Button("Download report (PDF)", elem_id="report-button")
                    report_file = gr.File(label="Report", interactive=False, elem_id="report", height=70)
        with gr.Accordion("Model card", open=False):
            gr.Markdown(card_markdown(predictor))

        inputs = [scan, frame, method, target, opacity, state]
        model_io = dict(fn=predict_fn or predict, inputs=inputs, outputs=[label, heat, view, answer_text, state],
                        preprocess=False, concurrency_limit=1, concurrency_id="model")
        # preprocess=False: the handler gets the upload's FileData (Gradio has already checked that it lies in
        # the upload folder); gr.File(type="filepath").preprocess would leave an empty temp file per call.
        scan.change(preview, [scan, state], [frame, view, scan_button, plot, state], preprocess=False,
                    api_visibility="private", show_progress="hidden").then(api_name="predict", **model_io)
        gr.on([frame.release, method.input, target.input], api_visibility="private", **model_io)
        series.upload(series_preview, [series, state], [scan, frame, view, scan_button, plot, state], preprocess=False,
                      api_visibility="private", show_progress="minimal").then(api_visibility="private", **model_io)
        scan_button.click(scan_all, [state], [plot, frame], api_visibility="private", concurrency_limit=1,
                          concurrency_id="model").then(api_visibility="private", **model_io)
        report_button.click(report, inputs, [report_file], preprocess=False, api_name="report",
                            concurrency_limit=1, concurrency_id="model")
        opacity.change(reblend, [state, opacity], [heat], api_visibility="private", show_progress="hidden",
                       concurrency_limit=None)
    return demo


def _fit(gray: np.ndarray, size: int = 512) -> np.ndarray:
    """The decoded slice scaled to fit a size x size box (the preview, before the model's own view arrives)."""
    h, w = gray.shape
    scale = size / max(h, w)
    if scale >= 1:
        return gray
    fitted = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(fitted, Image.BILINEAR))


def launch(demo: gr.Blocks, share: bool = False, port: Optional[int] = None, **kwargs):
    """Start the server (max upload size, no run history kept in the browser); returns Gradio's launch tuple."""
    return demo.launch(share=share, server_port=port, max_file_size=MAX_FILE_BYTES, run_history=False, **kwargs)


_ARGS = parse_args() if __name__ == "__main__" else None
try:
    predictor = Predictor(_ARGS.model if _ARGS else None)
except ModelLoadError as e:
    if _ARGS is None:
        raise
    sys.exit(f"error: {e}")
demo = build_demo(predictor)

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean exit, so the private temp dir is removed
    # Ctrl-C (SIGINT) stops the app cleanly even where it was started with SIGINT ignored (a shell's background job
    # inherits that, and Python then raises no KeyboardInterrupt: the app could not be stopped but by a kill).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Not demo.block_thread(): on Ctrl-C it closes only the HTTP server, which then waits 5 s on the clients'
    # open heartbeat streams. Blocks.close ends those and the queue first (exit 1.8 s after Ctrl-C here, was 6.7 s).
    # launch() is inside the try: the server serves before launch returns, and a Ctrl-C in that window would
    # otherwise leave the server's thread running, and the process with it.
    try:
        launch(demo, share=_ARGS.share, port=_ARGS.port, prevent_thread_lock=True)
        if _ARGS.share and not demo.share_url:
            print("\nNo public share link: it needs a connection to gradio.live, which failed here. "
                  f"The app is still served locally at {demo.local_url}", file=sys.stderr)
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("Stopping the app ...", file=sys.stderr)
    finally:
        demo.close()
