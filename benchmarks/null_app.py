"""app.py with no work behind its /predict API: the floor any app can reach through gradio_client.

app.py's own Blocks (app.build_demo: the same components, settings and event wiring) given a predict function
that does nothing: each call deletes the upload, as app.py does once decoded, and returns two images made once
at start, encoded as app.py encodes its own (a 512 px JPEG overlay, a 512 px grayscale PNG view). No decoding,
model call or rendering per request; the model is loaded once at import, as app.py does, for its labels and card.
What a client measures against it is HTTP, Gradio's queue and the client's own work, so a /predict round trip to
the real app cannot be shorter (benchmarks/app.py times both in one run).

    python -m benchmarks.null_app                  # http://127.0.0.1:7860 (GRADIO_SERVER_PORT honoured)
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

import app

SIZE = 512  # app.py's display size
CLASSES = [app.predictor.config.display(c) for c in app.predictor.classes]  # the label's keys, as app.py's


def fixed_outputs() -> tuple[str, str]:
    """An overlay and a view rendered by app.render from a bundled example (so that they weigh what real ones
    do), made once."""
    view = np.asarray(Image.open(app.EXAMPLES[0]).convert("L").resize((SIZE, SIZE), Image.BILINEAR))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    heat = np.exp(-(((yy - 200) ** 2 + (xx - 300) ** 2) / (2 * 60.0 ** 2)))
    colour = np.stack([heat, np.sin(np.pi * heat), 1 - heat], -1) * 255
    blend = (0.55 * view[..., None] + 0.45 * colour).astype(np.uint8)
    return app.render(blend, "overlay"), app.render(view, "view")


OVERLAY, VIEW = fixed_outputs()
PROBABILITIES = dict(zip(CLASSES, [0.91] + [0.09 / (len(CLASSES) - 1)] * (len(CLASSES) - 1)))


def predict(scan, frame=0, method=None, target=None, opacity=None, state=None):
    """app.py's predict, answered with nothing done: the upload deleted, the fixed outputs returned."""
    if not scan:
        return None, None, None, "", None
    try:
        os.remove(scan["path"])  # nothing piles up in the cache
    except OSError:
        pass
    return PROBABILITIES, OVERLAY, VIEW, "**Answer: glioma** (no model: null app)", {"source": scan["path"]}


demo = app.build_demo(app.predictor, predict_fn=predict)
demo.delete_cache = None  # the fixed outputs are served for the whole run

if __name__ == "__main__":
    app.launch(demo)
