"""The one-page PDF report of one slice's answer: the scan, the heat map with its legend, every class's
probability, the verdict with its uncertainty and warnings, the model, the time, the input's file name and
the research-use disclaimer.

It is drawn from the prediction and the decoded pixels only: no DICOM header field (patient name, ID, birth
date, ...) ever reaches it. Used by the app's "Download report" button and ``/report`` endpoint and by
``python -m brain_tumor.predict PATH --report DIR``.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import re
import textwrap
from pathlib import Path
from typing import BinaryIO, Optional, Union

import numpy as np

from .explain import HEAT_FLOOR, METHOD_LABELS, overlay
from .inference import Prediction
from .verdict import ANSWERED, DISCLAIMER, NOT_ASSESSED

A4 = (8.27, 11.69)  # inches, portrait


def safe_name(name: Optional[str]) -> str:
    """The input's file name as the report prints it: the last path part, control characters and undecodable
    bytes replaced, at most 80 characters."""
    if not name:
        return "(unnamed upload)"
    base = re.split(r"[\\/]", str(name))[-1] or str(name)
    base = base.encode("utf-8", "replace").decode("utf-8")
    base = "".join(ch if ch.isprintable() else "?" for ch in base)
    return base if len(base) <= 80 else base[:38] + "..." + base[-39:]


def model_name(source: str) -> str:
    """A Hub id (``user/name@rev``) as it is; a local model folder by its own name (no user's directories)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(source))
    return f"local folder '{safe_name(text)}'" if os.path.isabs(text) or os.path.exists(text) else text[:120]


def write_report(pred: Prediction, view: np.ndarray, target: Union[str, os.PathLike, BinaryIO], *,
                 file_name: Optional[str], model: str, version: str = "", when: Optional[dt.datetime] = None,
                 opacity: float = 0.45, slice_index: Optional[int] = None) -> None:
    """Draw the report of ``pred`` (made with a heat map or without) on ``view`` (the model's view of the slice
    at display size, Predictor.view) and write it to ``target`` as a one-page PDF."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    when = when or dt.datetime.now().astimezone()
    decision = pred.decision
    fig = Figure(figsize=A4)
    fig.text(0.06, 0.955, "Brain MRI tumour classifier — report", fontsize=17, weight="bold")
    meta = [f"Input: {safe_name(file_name)}" + (f"   (axial slice {slice_index}, 0 = most inferior)"
                                                 if slice_index is not None else ""),
            f"Date: {when.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}",
            f"Model: {model_name(model)}" + (f"   version {version}" if version else "")]
    for i, line in enumerate(meta):
        fig.text(0.06, 0.925 - 0.02 * i, line, fontsize=9.5)

    colour = {ANSWERED: "#1b5e20", NOT_ASSESSED: "#b71c1c"}.get(decision.status, "#e65100")
    fig.text(0.06, 0.845, decision.headline[0].upper() + decision.headline[1:], fontsize=15, weight="bold",
             color=colour, wrap=True)
    lines = [decision.detail]
    if pred.looks_like_mri:
        lines.append(f"Probability of a tumour: {pred.tumor_probability:.1%}.   Uncertainty {pred.uncertainty:.2f} "
                     "on a 0-1 scale (normalised entropy of the probabilities).")
    if decision.needs_review:
        lines.append("NEEDS REVIEW: this answer must be read by a qualified person before any use.")
    y = 0.815
    for line in lines:
        for part in textwrap.wrap(line, 105):
            fig.text(0.06, y, part, fontsize=9.5, color="#b71c1c" if line.startswith("NEEDS") else "black")
            y -= 0.018

    top = y - 0.01
    ax = fig.add_axes([0.06, top - 0.34, 0.42, 0.33])
    ax.imshow(view, cmap="gray", vmin=0, vmax=255)
    ax.set_title("The scan as the model saw it", fontsize=10)
    ax.axis("off")
    ax = fig.add_axes([0.52, top - 0.34, 0.42, 0.33])
    if pred.heatmap is not None:
        ax.imshow(overlay(view, pred.heatmap, opacity))
        ax.set_title(f"{METHOD_LABELS.get(pred.method, pred.method)} for '{pred.display(pred.heatmap_class)}'",
                     fontsize=10)
        bar = fig.add_axes([0.55, top - 0.365, 0.36, 0.012])
        jet = colormaps["jet"](np.linspace(0, 1, 256))
        jet[: int(256 * HEAT_FLOOR)] = (0.85, 0.85, 0.85, 1.0)  # not drawn: the scan shows through
        bar.imshow(np.linspace(0, 1, 256)[None], aspect="auto", cmap=ListedColormap(jet), extent=(0, 1, 0, 1))
        bar.set_yticks([])
        bar.set_xticks([0, HEAT_FLOOR, 0.5, 1.0], ["0", f"{HEAT_FLOOR:.0%}\n(not drawn below)", "50%", "peak"],
                       fontsize=7.5)
        bar.set_title("heat, relative to the slice's peak (red: strongest evidence)", fontsize=7.5)
    else:
        ax.text(0.5, 0.5, "no heat map", ha="center", va="center", fontsize=10)
    ax.axis("off")

    ax = fig.add_axes([0.25, top - 0.62, 0.6, 0.16])
    names = [pred.display(c) for c in pred.probabilities]
    values = [100 * v for v in pred.probabilities.values()]
    bars = ax.barh(names[::-1], values[::-1], color="#9e9e9e" if not pred.looks_like_mri else "#1565c0")
    for b, v in zip(bars, values[::-1]):
        ax.text(min(v + 1.5, 88), b.get_y() + b.get_height() / 2, f"{v:.1f}%", va="center", fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("calibrated probability (%)", fontsize=9)
    ax.set_title("Every class's probability" + ("" if pred.looks_like_mri else " (not assessed: not a diagnosis)"),
                 fontsize=10)
    ax.tick_params(labelsize=9)

    notes = ("The heat map shows which regions drove the network's answer; it is not an outline of a tumour. "
             "The model reads one 2-D slice at a time, without the patient's history or other sequences.")
    y = top - 0.68
    for part in textwrap.wrap(notes, 110):
        fig.text(0.06, y, part, fontsize=8.5, color="#424242")
        y -= 0.016
    fig.text(0.06, 0.045, DISCLAIMER, fontsize=10, weight="bold", color="#b71c1c")
    fig.text(0.06, 0.028, "For research use only. No DICOM header field (patient name, ID, dates) is read into "
                          "this report.", fontsize=8, color="#424242")
    metadata = {"Title": "Brain MRI tumour classifier report", "Creator": "brain_tumor", "Subject": DISCLAIMER}
    if isinstance(target, (str, os.PathLike)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="pdf", metadata=metadata)


def report_bytes(pred: Prediction, view: np.ndarray, **kwargs) -> bytes:
    """The report as PDF bytes (see write_report)."""
    buffer = io.BytesIO()
    write_report(pred, view, buffer, **kwargs)
    return buffer.getvalue()
