"""A server that does no work behind app.py's /predict API: the floor any app can reach through gradio_client.

Same API as app.py's /predict (inputs: a file, slice, method, class, opacity; outputs: class confidences, a 512 px
JPEG overlay, a 512 px grayscale PNG view, a markdown summary, session state), the same Gradio settings
(preprocess=False, one at a time, outputs already in Gradio's cache folder), but no decoding, model or
rendering: each call deletes the upload and returns two images made once at start. What a client measures
against it is HTTP, Gradio's queue and the client's own work, so a /predict round trip to the real app cannot
be shorter (benchmarks/app.py times both in one run).

    python benchmarks/null_app.py                  # http://127.0.0.1:7860 (GRADIO_SERVER_PORT honoured)
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

if not os.environ.get("GRADIO_TEMP_DIR"):
    os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="null-app-")
    atexit.register(shutil.rmtree, os.environ["GRADIO_TEMP_DIR"], ignore_errors=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after GRADIO_TEMP_DIR is set)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SIZE = 512  # app.py's display size
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def fixed_outputs(folder: str) -> tuple[str, str]:
    """An overlay JPEG and a view PNG as app.py renders them (same size, format and settings, from a bundled example
    so that they weigh what real ones do), made once."""
    example = sorted(EXAMPLES.glob("*.jpg"))[0]
    view = np.asarray(Image.open(example).convert("L").resize((SIZE, SIZE), Image.BILINEAR))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    heat = np.exp(-(((yy - 200) ** 2 + (xx - 300) ** 2) / (2 * 60.0 ** 2)))
    colour = np.stack([heat, np.sin(np.pi * heat), 1 - heat], -1) * 255
    blend = (0.55 * view[..., None] + 0.45 * colour).astype(np.uint8)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    overlay_path, view_path = os.path.join(folder, "heatmap.jpg"), os.path.join(folder, "view.png")
    Image.fromarray(blend).save(overlay_path, "JPEG", quality=92, subsampling=0)
    Image.fromarray(view).save(view_path, "PNG", compress_level=1)
    return overlay_path, view_path


def build_demo() -> gr.Blocks:
    overlay_path, view_path = fixed_outputs(os.path.join(os.environ["GRADIO_TEMP_DIR"], "renders"))
    probabilities = dict(zip(CLASSES, (0.91, 0.05, 0.03, 0.01)))

    def predict(scan, frame=0, method="gradcam", target="predicted", opacity=0.45, state=None):
        if not scan:
            return None, None, None, "", None
        try:
            os.remove(scan["path"])  # as app.py does once decoded: nothing piles up in the cache
        except OSError:
            pass
        summary = "**Answer: glioma** (no model: null app)"
        return probabilities, overlay_path, view_path, summary, {"source": scan["path"]}

    with gr.Blocks(title="null app") as demo:
        state = gr.State(None)
        scan = gr.File(type="filepath")
        frame = gr.Slider(0, 1, value=0, step=1)
        method = gr.Dropdown(["gradcam"], value="gradcam")
        target = gr.Dropdown(["predicted", *CLASSES], value="predicted")
        opacity = gr.Slider(0, 1, value=0.45, step=0.05)
        view = gr.Image(type="filepath", interactive=False)
        heat = gr.Image(type="filepath", interactive=False)
        answer = gr.Markdown()
        label = gr.Label(num_top_classes=len(CLASSES))
        scan.change(predict, [scan, frame, method, target, opacity, state], [label, heat, view, answer, state],
                    preprocess=False, api_name="predict", concurrency_limit=1)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(run_history=False)
    sys.exit(0)
