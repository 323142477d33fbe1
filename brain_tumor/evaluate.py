"""Command line: score a model on a labelled folder; figures as a table, JSON and plots.

    python -m brain_tumor.evaluate --data DIR [--data DIR ...] [--split SPLIT_JSON] [--model SOURCE] [--json FILE]

DIR holds class folders, a Training/ folder, or sequence folders of class folders (``flair/glioma/...``); with
several roots (or sequences) the figures are also given per source and sequence. If they name the model's classes (aliases such as ``no``, ``no_tumor``,
``glioma_tumor`` accepted) every class is scored; if they are ``yes``/``no``, tumour vs no tumour is
scored (any tumour class predicted counts as yes). Where a YOLO box file ``NAME.txt`` (``class xc yc w h``,
fractions of the image) stands beside an image, its heat map is scored against the box (pointing game,
share of heat inside the box); on every image, the share of heat inside the head is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

from .config import HelpFormatter
from .decode import ImageReadError
from .preprocess import head_mask
from .datasets import ImageFolder
from .inference import BF16_ANSWER_HELP, Predictor
from .metrics import (classification_report, error_at_coverage, expected_calibration_error, format_group_table,
                      group_reports, json_ready, reliability, risk_coverage, roc_curve, tumor_probability,
                      tumor_scores)
from .model import ModelLoadError
from .predict import file_in_the_way
from .datasets import read_yolo_box  # noqa: F401  (public here too)
from .metrics import box_mask, heat_share, pointing_hit  # noqa: F401  (public here too)


def match_classes(folder: ImageFolder, model_classes: Sequence[str]) -> tuple[str, dict[int, int]]:
    """How to score a labelled folder against a model: ('multiclass', folder->model label map) or ('binary', ...)."""
    classes = set(folder.classes)
    if classes <= set(model_classes):
        return "multiclass", {i: model_classes.index(c) for i, c in enumerate(folder.classes)}
    if classes <= {"tumor", "notumor"}:
        return "binary", {i: int(c == "tumor") for i, c in enumerate(folder.classes)}
    raise ValueError(f"class folders {folder.classes} match neither the model's classes {list(model_classes)} "
                     "nor yes/no (tumor/notumor)")


def read_labelled(data: Union[str, Sequence[str]], split: Optional[str] = None) -> tuple[ImageFolder, list[str]]:
    """The labelled images of one or more roots (any layout datasets.read_root accepts), as an ImageFolder and
    each image's group ('source/sequence'). ``split``: only the validation images that split.json lists."""
    from .datasets import read_roots
    from .splits import previous_sides

    col, _ = read_roots([data] if isinstance(data, str) else list(data))
    if split is not None:
        try:
            sides = previous_sides(col, Path(split))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # unreadable, not JSON, not a split
            raise ValueError(f"cannot read the split file {split}: {e.strerror if isinstance(e, OSError) else e}") from None
        col = col.subset(sides == 1)
        if not len(col):
            raise ValueError(f"none of the images under {data} is in the validation list of {split}")
    classes = col.class_names
    folder = ImageFolder(col.paths, [classes.index(c) for c in col.classes], classes)
    return folder, col.groups()


def evaluate(predictor: Predictor, data: Union[str, Sequence[str]], heatmaps: bool = True, batch_size: int = 32,
             keep_examples: int = 12, split: Optional[str] = None) -> dict[str, Any]:
    """Predict every image under ``data`` (one root or several) and compute all figures, pooled and per
    source/sequence group (see the module docstring)."""
    folder, groups = read_labelled(data, split)
    mode, to_model = match_classes(folder, predictor.classes)
    scores: dict[int, dict[str, float]] = {}

    def score_heatmap(i: int, gray: np.ndarray, pred) -> None:
        if pred.heatmap is not None:
            scores[i] = heatmap_scores(pred.heatmap_on_original(), gray, folder.paths[i].with_suffix(".txt"))

    started = time.time()
    results = predictor.predict_files(folder.paths, heatmaps=heatmaps, batch_size=batch_size,
                                      each=score_heatmap if heatmaps else None)
    seconds = time.time() - started
    ok = [i for i, r in enumerate(results) if not isinstance(r, ImageReadError)]
    errors = [{"path": str(folder.paths[i]), "error": str(results[i])} for i in range(len(results)) if i not in set(ok)]
    if not ok:
        raise ValueError(f"no readable images under {data}")
    probs = np.array([[results[i].probabilities[c] for c in predictor.classes] for i in ok])
    y = np.array([to_model[folder.labels[i]] for i in ok])
    no_tumor = predictor.config.no_tumor_indices
    # the uncalibrated softmax(z) of each slice's raw scores (calibration: softmax(z / T), one T or one per class)
    z = np.array([results[i].logits for i in ok], dtype=np.float64)  # (Predictor.predict keeps them on each answer)
    raw = np.exp(z - z.max(1, keepdims=True))
    raw /= raw.sum(1, keepdims=True)
    if mode == "multiclass":
        figures = classification_report(y, probs, predictor.classes, no_tumor)
        correct = probs.argmax(1) == y
        raw_confidence = raw.max(1)  # (a temperature per class can change the answer: each scored as it stands)
        figures["ece_uncalibrated"] = expected_calibration_error(raw_confidence, raw.argmax(1) == y)
    else:
        p_tumor = tumor_probability(probs, no_tumor)
        called = p_tumor >= 0.5
        correct = called == (y == 1)
        figures = {"n": len(y), "accuracy": float(correct.mean()), "mode": "tumour vs no tumour (yes/no folders)"}
        figures.update(tumor_scores(y == 1, p_tumor))
        conf = np.maximum(p_tumor, 1 - p_tumor)
        raw_t = 1 - raw[:, no_tumor].sum(1)
        raw_confidence = np.maximum(raw_t, 1 - raw_t)
        figures["ece"] = expected_calibration_error(conf, correct)
        figures["ece_uncalibrated"] = expected_calibration_error(raw_confidence, (raw_t >= 0.5) == (y == 1))
        cm = np.zeros((2, 2), int)
        np.add.at(cm, (y, called.astype(int)), 1)
        figures["confusion_matrix"], figures["class_names"] = cm.tolist(), ["notumor", "tumor"]
    figures["mode"] = mode
    confidence = probs.max(1) if mode == "multiclass" else np.maximum(p_tumor, 1 - p_tumor)
    cov, risk = risk_coverage(confidence, correct)
    figures["error_at_90_coverage"] = error_at_coverage(confidence, correct, 0.9)
    figures["images_per_second"] = len(results) / seconds if seconds > 0 else None
    figures["unreadable"] = errors
    figures["needs_review_rate"] = float(np.mean([results[i].needs_review for i in ok]))
    g_ok = [groups[i] for i in ok]
    if mode == "multiclass":
        figures["groups"] = group_reports(y, probs, g_ok, predictor.classes, no_tumor)
    else:
        p_t = tumor_probability(probs, no_tumor)
        figures["groups"] = group_reports(y, np.stack([1 - p_t, p_t], 1), g_ok, ["notumor", "tumor"], [0])
    flagged = np.array([not results[i].looks_like_mri for i in ok])
    for name, row in figures["groups"].items():
        members = [k for k, gg in enumerate(g_ok) if gg == name]
        row["not_mri_flagged"] = float(flagged[members].mean())
        row["ece"] = expected_calibration_error(confidence[members], correct[members])  # (the Kaggle part's, say)
        if heatmaps:
            row.update({k: v for k, v in _heatmap_figures(predictor, [scores[ok[k]] for k in members
                                                                     if ok[k] in scores]).items()
                        if k in ("pointing_game", "heat_in_box", "heat_in_head")})
    figures["not_mri_flagged"] = float(flagged.mean())
    if heatmaps:
        figures.update(_heatmap_figures(predictor, [scores[i] for i in ok if i in scores]))
        by_class = {name: _heatmap_figures(predictor, [scores[i] for i in ok if i in scores and folder.labels[i] == k])
                    for k, name in enumerate(folder.classes)}  # the data's own classes: a tumour type's boxes
        if any("pointing_game" in f for f in by_class.values()):
            figures["boxes_by_class"] = {name: {key: f[key] for key in ("pointing_game", "heat_in_box", "n_boxes")}
                                         for name, f in by_class.items() if "pointing_game" in f}
    details = {"paths": [str(folder.paths[i]) for i in ok], "y": y, "probs": probs, "raw": raw, "mode": mode,
               "confidence": confidence, "raw_confidence": raw_confidence, "correct": correct, "coverage": cov, "risk": risk,
               "results": [results[i] for i in ok]}
    return {"figures": figures, "details": details}


def heatmap_scores(heat: np.ndarray, gray: np.ndarray, box_file: Path) -> dict[str, float]:
    """One map on the original grid: heat inside the head and, where a box file exists, pointing hit and heat in box."""
    out = {"in_head": heat_share(heat, head_mask(gray))}
    box = read_yolo_box(box_file)
    if box is not None:
        mask = box_mask(heat.shape, box)
        out.update(hit=float(pointing_hit(heat, mask)), in_box=heat_share(heat, mask))
    return out


def _heatmap_figures(predictor: Predictor, scores: list[dict[str, float]]) -> dict[str, Any]:
    in_head = [s["in_head"] for s in scores]
    boxed = [s for s in scores if "hit" in s]
    out: dict[str, Any] = {"heatmap_method": predictor.config.cam_method, "heatmap_layer": predictor.config.cam_layer,
                           "heat_in_head": float(np.mean(in_head)) if in_head else None}
    if boxed:
        out.update({"pointing_game": float(np.mean([s["hit"] for s in boxed])),
                    "heat_in_box": float(np.mean([s["in_box"] for s in boxed])), "n_boxes": len(boxed)})
    return out


def _worse(f: dict[str, Any]) -> bool:
    a, b = f.get("ece"), f.get("ece_uncalibrated")
    return a is not None and b is not None and a == a and b == b and a > b


def format_figures(f: dict[str, Any]) -> str:
    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [f"images: {f['n']}   mode: {f['mode']}   unreadable: {len(f['unreadable'])}",
             f"accuracy {fmt(f['accuracy'])}   tumour sensitivity {fmt(f['tumor_sensitivity'])}   "
             f"specificity {fmt(f['tumor_specificity'])}   AUROC {fmt(f['tumor_auroc'])}",
             f"ECE {fmt(f['ece'])} (uncalibrated {fmt(f['ece_uncalibrated'])}"
             + ("; the model's calibration makes it worse on this data" if _worse(f) else "") + ")   "
             f"error on the 90% most confident {fmt(f['error_at_90_coverage'])}"]
    if "not_mri_flagged" in f:
        lines.append(f"flagged 'not a brain MRI' {fmt(f['not_mri_flagged'])}   'needs review' "
                     f"{fmt(f.get('needs_review_rate'))} (shares of the readable images)")
    if "per_class" in f:
        lines.append(f"\n{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'n':>7}")
        for c, s in f["per_class"].items():
            lines.append(f"{c:<14}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>7}")
    names = f["class_names"]
    lines.append("\nconfusion (rows: truth, columns: predicted)")
    lines.append(" " * 14 + "".join(f"{c[:10]:>11}" for c in names))
    for c, row in zip(names, f["confusion_matrix"]):
        lines.append(f"{c[:13]:<14}" + "".join(f"{v:>11}" for v in row))
    if len(f.get("groups", {})) > 1:
        extra = [k for k in ("pointing_game", "heat_in_box", "not_mri_flagged")
                 if any(k in r for r in f["groups"].values())]
        lines.append("\nby source and sequence\n" + format_group_table(f["groups"], extra=extra))
    if f.get("heat_in_head") is not None:
        lines.append(f"\nheat maps ({f['heatmap_method']} at {f['heatmap_layer']}): heat inside the head "
                     f"{fmt(f['heat_in_head'])}" + (f"; on {f['n_boxes']} boxes: pointing game "
                                                  f"{fmt(f['pointing_game'])}, heat inside the box {fmt(f['heat_in_box'])}"
                                                  if "pointing_game" in f else ""))
    if f.get("boxes_by_class"):
        lines.append("by tumour type: " + ", ".join(
            f"{c} {fmt(r['pointing_game'])} / {fmt(r['heat_in_box'])} ({r['n_boxes']} boxes)"
            for c, r in f["boxes_by_class"].items()) + "   (pointing game / heat inside the box)")
    return "\n".join(lines)


def write_report(result: dict[str, Any], out: Path, predictor: Predictor, worst: int = 12) -> list[Path]:
    """Confusion matrix, ROC, reliability diagram, confidence histogram, risk-coverage, worst mistakes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .explain import overlay

    f, d = result["figures"], result["details"]
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)

    cm = np.array(f["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(f["class_names"])), f["class_names"], rotation=30)
    ax.set_yticks(range(len(f["class_names"])), f["class_names"])
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("truth"), ax.set_title(f"accuracy {f['accuracy']:.3f}")
    save(fig, "confusion_matrix.png")

    no_tumor = predictor.config.no_tumor_indices
    is_tumor = d["y"] == 1 if d["mode"] == "binary" else ~np.isin(d["y"], no_tumor)
    fpr, tpr = roc_curve(is_tumor.astype(int), tumor_probability(d["probs"], no_tumor))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr), ax.plot([0, 1], [0, 1], "k:")
    ax.set_xlabel("false-positive rate"), ax.set_ylabel("tumour sensitivity")
    ax.set_title(f"ROC, tumour vs none (AUROC {f['tumor_auroc']:.3f})")
    save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for conf, label in ((d["raw_confidence"], f"uncalibrated (ECE {f['ece_uncalibrated']:.3f})"),
                        (d["confidence"], f"calibrated (ECE {f['ece']:.3f})")):
        rel = reliability(conf, d["correct"], bins=10)
        ax.plot(rel["confidence"], rel["accuracy"], "o-", label=label)
    ax.plot([0, 1], [0, 1], "k:"), ax.set_xlabel("confidence"), ax.set_ylabel("accuracy"), ax.legend(fontsize=8)
    ax.set_title("reliability diagram")
    save(fig, "reliability.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist([d["confidence"][d["correct"]], d["confidence"][~d["correct"]]], bins=20, stacked=True,
            label=["correct", "wrong"])
    ax.set_xlabel("confidence"), ax.set_ylabel("images"), ax.legend()
    save(fig, "confidence_histogram.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(d["coverage"], d["risk"])
    ax.axvline(0.9, color="k", ls=":")
    ax.set_xlabel("coverage (most confident first)"), ax.set_ylabel("error rate")
    ax.set_title(f"risk-coverage (error at 90%: {f['error_at_90_coverage']:.3f})")
    save(fig, "risk_coverage.png")

    wrong = np.nonzero(~d["correct"])[0]
    wrong = wrong[np.argsort(-d["confidence"][wrong])][:worst]
    if len(wrong):
        cols = 4
        rows = int(np.ceil(len(wrong) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 3, rows * 3.2), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        truth_names = f["class_names"]
        for ax, i in zip(axes.ravel(), wrong):
            r = d["results"][i]
            img = overlay(r.image, r.heatmap, 0.4) if r.heatmap is not None else r.image
            ax.imshow(img, cmap=None if r.heatmap is not None else "gray")
            ax.set_title(f"{Path(d['paths'][i]).name[:18]}\ntruth {truth_names[d['y'][i]]}, said {r.label} "
                         f"({r.confidence:.2f})", fontsize=7)
        save(fig, "worst_mistakes.png")
    return written


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.evaluate", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, action="append", metavar="DIR",
                        help="labelled root (repeat for several): class folders (model classes, or yes/no), "
                             "Training/, or sequence folders of class folders (flair/glioma/...)")
    parser.add_argument("--split", metavar="SPLIT_JSON",
                        help="score only the validation images listed in this split.json (a model folder's own)")
    parser.add_argument("--model", default=None, help="model folder or Hub id user/name[@rev] (default: bundled)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--report", metavar="DIR", help="also write plots and a grid of the worst mistakes")
    parser.add_argument("--no-heatmaps", action="store_true", help="skip heat maps (faster; no heat-map figures)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="where the model runs (auto: a GPU when torch sees one)")
    parser.add_argument("--bf16", action="store_true", help=BF16_ANSWER_HELP)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    for path, kind in ((args.json, "file"), (args.report, "folder")):  # before the scoring, not after it
        blocked = path and _blocked(Path(path), kind)
        if blocked:
            parser.error(blocked)
    try:
        predictor = Predictor(args.model, bf16_answer=args.bf16, device=args.device)
        result = evaluate(predictor, args.data, heatmaps=not args.no_heatmaps, batch_size=args.batch_size,
                          split=args.split)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    figures = result["figures"]
    figures["model"] = predictor.source
    figures["data"] = args.data[0] if len(args.data) == 1 else list(args.data)
    figures["answer_forward"] = "bf16 autocast" if predictor.bf16_answer else "fp32"
    print(format_figures(figures))
    try:
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(json_ready(figures), indent=1, allow_nan=False) + "\n")
            print(f"wrote {args.json}")
        if args.report:
            for p in write_report(result, Path(args.report), predictor):
                print(f"wrote {p}")
    except OSError as e:  # the figures above are printed: only the file is lost
        print(f"error: could not write {e.filename or args.json or args.report}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _blocked(path: Path, kind: str) -> Optional[str]:
    """Why ``path`` (a file or a folder to write) cannot be written, when a file already stands in the way."""
    if kind == "folder" and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    if kind == "file" and path.is_dir():
        return f"{path} is a folder, not a file"
    blocker = file_in_the_way(path)
    return f"{blocker} is a file, not a folder" if blocker else None


if __name__ == "__main__":
    sys.exit(main())
