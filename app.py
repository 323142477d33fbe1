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
from typing import Any, Optional

# Uploads live in a private folder (mode 0700) that is removed at exit, unless the user chose one.
if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="brain-tumor-app-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home with medical images around
TEMP_DIR = os.environ["GRADIO_TEMP_DIR"]

import gradio as gr  # noqa: E402  (after GRADIO_TEMP_DIR is set)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from brain_tumor.config import MAX_FILE_BYTES  # noqa: E402
from brain_tumor.data import ImageReadError, dicom_frame_count, read_image  # noqa: E402
from brain_tumor.explain import LIBRARY_METHODS, METHOD_LABELS, overlay  # noqa: E402
from brain_tumor.hub import model_card  # noqa: E402
from brain_tumor.inference import Prediction, Predictor  # noqa: E402
from brain_tumor.model import ModelLoadError  # noqa: E402

HERE = Path(__file__).resolve().parent
EXAMPLES = sorted((HERE / "examples").glob("*.jpg"))
METHODS = [m for m in LIBRARY_METHODS if m != "ablationcam"]  # AblationCAM takes minutes on a CPU
PREDICTED = "predicted"
DEFAULT_OPACITY = 0.45
DISCLAIMER = "Research demo, not a diagnostic device. It must not be used to make clinical decisions."
NOT_ASSESSED = "not assessed: this does not look like a brain MRI"  # the label shown when no answer is given
DELETE_CACHE = (300, 600)  # every 5 minutes, delete output images older than 10 minutes


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the brain MRI tumour classifier as a Gradio app.")
    parser.add_argument("--model", default=None,
                        help="model folder or Hub id user/name[@revision] (default: $BRAIN_TUMOR_MODEL, else model/)")
    parser.add_argument("--share", action="store_true", help="ask Gradio for a public share link (needs a network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- what is shown

def summary(pred: Prediction, predictor: Predictor) -> str:
    """The answer in words: verdict, tumour probability, and what the heat map is."""
    if not pred.looks_like_mri:
        lines = [f"**{pred.verdict}.** No class is assessed for this image."]
    elif pred.needs_review:
        lines = [f"**{pred.verdict}.** Confidence {pred.confidence:.1%} is below the model's threshold of "
                 f"{predictor.config.abstain_below:.0%}."]
    else:
        lines = [f"**Answer: {pred.label}** (confidence {pred.confidence:.1%}; uncertainty {pred.uncertainty:.2f} "
                 "on a 0-1 scale)."]
    if predictor.config.no_tumor_indices and pred.looks_like_mri:
        p = pred.tumor_probability
        words = "very likely" if p >= 0.95 else "likely" if p >= 0.5 else "unlikely" if p > 0.05 else "very unlikely"
        lines.append(f"The model puts the probability of a tumour at **{p:.1%}**: a tumour is {words}.")
    if pred.heatmap is not None:
        lines.append(f"Heat map: {METHOD_LABELS.get(pred.method, pred.method)} for *{pred.heatmap_class}*. "
                     "It shows what drove the network, not an outline of a tumour." + heatmap_quality(predictor))
    lines.append(f"_{DISCLAIMER}_")
    return "\n\n".join(lines)


def heatmap_quality(predictor: Predictor) -> str:
    """One line on how good the default maps measured (config.metrics['heatmaps']), or nothing."""
    h = (predictor.config.metrics or {}).get("heatmaps") or {}
    if "pointing_game" not in h:
        return ""
    return (f" Measured on {h.get('n_boxes', '?')} tumour slices with boxes, the default map's peak fell inside the "
            f"tumour box {h['pointing_game']:.0%} of the time, and {h.get('heat_in_head', 0):.0%} of its heat lay "
            "inside the head.")


def card_markdown(predictor: Predictor) -> str:
    """The model card (hub.model_card) without its front matter, headings one level down, source first."""
    config = predictor.config
    text = re.sub(r"\A---\n.*?\n---\n", "", model_card(config), flags=re.S)
    text = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)
    head = (f"**Model:** `{predictor.source}` · version {config.version} · classes: {', '.join(predictor.classes)} · "
            f"input {config.img_size} px")
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


def _decode(path: str, frame: Optional[float], state: Optional[dict]) -> tuple[Any, dict]:
    """The slice to classify, and the state that lets the session re-pick a frame after the upload is gone.

    Raises ImageReadError (a reason a person can act on)."""
    if os.path.exists(path):
        try:
            frames = dicom_frame_count(path)
            index = None if frames == 1 else min(max(int(frame or 0), 0), frames - 1)
            data = Path(path).read_bytes() if frames > 1 else None  # kept in memory only to re-pick a slice
            gray = read_image(path, frame=index)
        finally:
            _discard(path)
        return gray, {"source": path, "frames": frames, "frame": index, "data": data, "gray": gray}
    if state and state.get("source") == path:  # the same upload, already decoded and deleted
        frames = state["frames"]
        index = None if frames == 1 else min(max(int(frame or 0), 0), frames - 1)
        if index != state["frame"]:
            state = {**state, "frame": index, "gray": read_image(state["data"], frame=index)}
        return state["gray"], state
    raise ImageReadError("the uploaded file is no longer available (uploads are deleted once read); upload it again")


# ------------------------------------------------------------------------------------------------ the app

def build_demo(predictor: Predictor) -> gr.Blocks:
    """The Blocks app for one loaded model. Labels come from the model's config, never from this file."""

    def predict(scan: Optional[dict], frame: float = 0, method: str = predictor.config.cam_method,
                target: str = PREDICTED,
                opacity: float = DEFAULT_OPACITY, state: Optional[dict] = None):
        """Classify one MRI slice; returns class confidences, heat-map overlay, model's view, summary."""
        if not scan:
            return None, None, None, "", None
        try:
            gray, state = _decode(scan["path"], frame, state)
            [pred] = predictor.predict([gray], heatmaps=True, method=method,
                                       target=None if target in (None, "", PREDICTED) else target)
        except (ImageReadError, ValueError) as e:
            raise gr.Error(html.escape(f"Could not use this file: {e}"), print_exception=False) from None
        view = predictor.view(gray, pred.crop)
        state = {**state, "view": view, "heat": pred.heatmap}
        # a withheld answer shows no class as the answer: the label carries none of the model's classes
        answer = pred.probabilities if pred.looks_like_mri else NOT_ASSESSED
        return (answer, render(overlay(view, pred.heatmap, opacity), "overlay"), render(view, "view"),
                summary(pred, predictor), state)

    def reblend(state: Optional[dict], opacity: float):
        if not state or state.get("view") is None:
            return gr.skip()
        return render(overlay(state["view"], state["heat"], opacity), "overlay")

    def frame_slider(scan: Optional[dict]):
        frames = 1
        if scan:
            try:
                frames = dicom_frame_count(scan["path"])
            except ImageReadError:
                pass  # predict reports it
        return gr.update(visible=frames > 1, maximum=max(frames - 1, 1), value=frames // 2 if frames > 1 else 0)

    with gr.Blocks(title="Brain MRI tumour classifier", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# Brain MRI tumour classifier\nDrop one MRI slice (JPEG, PNG, BMP, TIFF, WebP or DICOM): "
                    "the model's answer, and a heat map of the regions that drove it. "
                    f"**{DISCLAIMER}**")
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                scan = gr.File(label="MRI slice (JPEG, PNG, BMP, TIFF, WebP, DICOM)", type="filepath", elem_id="scan")
                frame = gr.Slider(0, 1, value=0, step=1, label="Slice (multi-frame DICOM)", visible=False)
                method = gr.Dropdown([(METHOD_LABELS[m], m) for m in METHODS], value=predictor.config.cam_method,
                                     label="Explanation method")
                target = gr.Dropdown([("the predicted class", PREDICTED)] + predictor.classes, value=PREDICTED,
                                     label="Class to explain")
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heat-map opacity", elem_id="opacity")
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=[scan], label="Examples (click one)",
                            example_labels=[p.stem.replace("_", " ") for p in EXAMPLES], cache_examples=False,
                            examples_per_page=len(EXAMPLES) or 10)
            with gr.Column(scale=2):
                with gr.Row():
                    view = gr.Image(label="The scan as the model saw it", type="filepath", interactive=False,
                                    elem_id="view")
                    heat = gr.Image(label="Heat map", type="filepath", interactive=False, elem_id="overlay")
                answer = gr.Markdown(label="Summary", elem_id="summary")
                label = gr.Label(label="Confidence per class", num_top_classes=len(predictor.classes),
                                 elem_id="confidences")
        with gr.Accordion("Model card", open=False):
            gr.Markdown(card_markdown(predictor))

        model_io = dict(fn=predict, inputs=[scan, frame, method, target, opacity, state],
                        outputs=[label, heat, view, answer, state], preprocess=False,
                        concurrency_limit=1, concurrency_id="model")
        # preprocess=False: the handler gets the upload's FileData (Gradio has already checked that it lies in
        # the upload folder); gr.File(type="filepath").preprocess would leave an empty temp file per call.
        scan.change(frame_slider, [scan], [frame], preprocess=False, api_visibility="private",
                    show_progress="hidden").then(api_name="predict", **model_io)
        gr.on([frame.release, method.input, target.input], api_visibility="private", **model_io)
        opacity.change(reblend, [state, opacity], [heat], api_visibility="private", show_progress="hidden",
                       concurrency_limit=None)
    return demo


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
    launch(demo, share=_ARGS.share, port=_ARGS.port, prevent_thread_lock=True)
    if _ARGS.share and not demo.share_url:
        print("\nNo public share link: it needs a connection to gradio.live, which failed here. "
              f"The app is still served locally at {demo.local_url}", file=sys.stderr)
    # Not demo.block_thread(): on Ctrl-C it closes only the HTTP server, which then waits 5 s on the clients'
    # open heartbeat streams. Blocks.close ends those and the queue first (exit 1.8 s after Ctrl-C here, was 6.7 s).
    try:
        while demo.is_running:
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("Stopping the app ...", file=sys.stderr)
    finally:
        demo.close()
