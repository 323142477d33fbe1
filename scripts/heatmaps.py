"""The heat-map choice: layer, method and power, chosen by measurement on slices with tumour boxes.

Pointing game and heat inside the box on slices with tumour boxes, and heat inside the head on those and on
other slices.

    python -m scripts.heatmaps --model model --boxes ../shared/data/tumor-boxes-sample \
        --boxes ../shared/data/lgg-segmentation --split model --heads model --apply

``--layers`` may name several layers as one target, fused (explain.parse_layers): ``layer3+layer4``,
``layer3:0.75+layer4``. With several ``--boxes`` roots each root is scored on its own and a row's figures are the
mean over the roots, so that a large set of one tumour type cannot carry the choice alone (per-root figures in
the row's ``by_source``).

Maps are scored as served: each class's map with the offset ``config.cam_shift`` holds for that layer and
method undone (none where it holds none: fit it first with ``python -m brain_tumor.cam_offset MODEL``).

``--apply`` writes the best row into the model folder's config.json (cam_layer, cam_method, cam_power,
metrics["heatmaps"]) and refreshes its model card. Best: among the rows that keep at least 0.90 of the heat
inside the head (on the other slices when given: the border-shortcut check), the highest pointing
game + half the heat-in-box share. ``--split`` leaves out the box slices the model trained on; ``--heads`` takes
the other slices from a model folder's validation split, or from any folder.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from brain_tumor.datasets import list_images, read_roots
from brain_tumor.decode import read_image
from brain_tumor.evaluate import box_mask, heat_share, pointing_hit, read_yolo_box
from brain_tumor.inference import Predictor
from brain_tumor.metrics import json_ready
from brain_tumor.preprocess import head_mask
from brain_tumor.splits import previous_sides
from scripts._images import SPLIT_HELP, is_split, split_file, split_images


def score(predictor: Predictor, grays, boxes, method: str, layer: str, power: float = 1.0) -> dict:
    predictor.config.cam_layer = layer
    predictor.config.cam_power = power
    preds = predictor.predict(grays, heatmaps=True, method=method)
    hits, in_box, in_head = [], [], []
    for gray, box, p in zip(grays, boxes, preds):
        heat = p.heatmap_on_original()
        in_head.append(heat_share(heat, head_mask(gray)))
        if box is not None:
            m = box_mask(heat.shape, box)
            hits.append(pointing_hit(heat, m))
            in_box.append(heat_share(heat, m))
    return {"pointing_game": float(np.mean(hits)) if hits else None,
            "heat_in_box": float(np.mean(in_box)) if in_box else None,
            "heat_in_head": float(np.mean(in_head)), "n_boxes": len(hits), "n": len(grays)}


def score_sets(predictor: Predictor, sets: dict, method: str, layer: str, power: float = 1.0) -> dict:
    """``score`` on each box set ({root: (grays, boxes)}); with several, the figures are the mean over the sets."""
    by = {root: score(predictor, grays, boxes, method, layer, power) for root, (grays, boxes) in sets.items()}
    if len(by) == 1:
        return next(iter(by.values()))
    keys = ("pointing_game", "heat_in_box", "heat_in_head")
    out = {k: float(np.mean([r[k] for r in by.values()])) for k in keys}
    out.update(n_boxes=sum(r["n_boxes"] for r in by.values()), n=sum(r["n"] for r in by.values()), by_source=by)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--boxes", action="append", default=None, metavar="DIR",
                    help="root(s) of tumour slices with YOLO box files beside them (any layout train.py reads; "
                         "default ../shared/data/tumor-boxes-sample)")
    ap.add_argument("--split", metavar="MODEL|SPLIT_JSON",
                    help="leave out the box slices this model folder's split.json (or this split.json) trained on")
    ap.add_argument("--heads", default=None, metavar="MODEL|SPLIT_JSON|DIR",
                    help=f"other slices (no boxes) for the head figure: {SPLIT_HELP}; or a folder walked recursively")
    ap.add_argument("--n-heads", type=int, default=200)
    ap.add_argument("--layers", default="layer2,layer3,layer4")
    ap.add_argument("--methods", default="gradcam,gradcam++")
    ap.add_argument("--powers", default="1", help="map exponents to try, e.g. 1,2")
    ap.add_argument("--json")
    ap.add_argument("--apply", action="store_true", help="store the best choice in the (local) model folder")
    args = ap.parse_args(argv)
    predictor = Predictor(args.model)
    original_layer = predictor.config.cam_layer
    args.boxes = args.boxes or ["../shared/data/tumor-boxes-sample"]
    sets = {}
    for root in args.boxes:
        paths = _box_slices([root], args.split)
        if not paths:
            raise SystemExit(f"no tumour slices with box files under {root}")
        sets[root] = ([read_image(p) for p in paths], [read_yolo_box(p.with_suffix(".txt")) for p in paths])
    head_grays = []
    if args.heads:
        pool = split_images(args.heads).paths if is_split(args.heads) else list_images(args.heads)
        rng = np.random.default_rng(0)
        head_grays = [read_image(pool[i]) for i in rng.choice(len(pool), min(args.n_heads, len(pool)), replace=False)]
    rows = []
    original_power = predictor.config.cam_power
    powers = [float(v) for v in args.powers.split(",")]
    for layer, method, power in itertools.product(args.layers.split(","), args.methods.split(","), powers):
        r = score_sets(predictor, sets, method, layer, power)
        if head_grays:
            r["heat_in_head_other_slices"] = score(predictor, head_grays, [None] * len(head_grays),
                                                   method, layer, power)["heat_in_head"]
        rows.append({"layer": layer, "method": method, "power": power, **r})
        print(f"{layer:<8}{method:<11} power {power:g}  pointing {r['pointing_game']:.3f}  "
              f"in box {r['heat_in_box']:.3f}  "
              f"in head {r['heat_in_head']:.3f}" + (f"  in head (other slices) {r['heat_in_head_other_slices']:.3f}"
                                                     if head_grays else ""), flush=True)
    predictor.config.cam_layer, predictor.config.cam_power = original_layer, original_power
    out = {"model": predictor.source, "boxes": args.boxes, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready(out), indent=1) + "\n")
    if args.apply:
        apply_best(Path(predictor.source), rows, args.boxes)
    return 0


MIN_HEAT_IN_HEAD = 0.90


def _box_slices(roots: list[str], split: str = None) -> list[Path]:
    """Tumour slices with a box file beside them, under the roots (less the split's training images if given)."""
    col, _ = read_roots(roots)
    keep = np.ones(len(col), dtype=bool) if split is None else previous_sides(col, split_file(split)) != 0
    return [p for p, k in zip(col.paths, keep) if k and p.with_suffix(".txt").is_file()]


def _in_head(row: dict) -> float:
    return row.get("heat_in_head_other_slices", row["heat_in_head"])


def apply_best(folder: Path, rows: list[dict], boxes: str) -> None:
    """Store the best layer/method/power and its figures in a model folder (config.json + model card)."""
    from brain_tumor.hub import write_model_card
    from brain_tumor.model import load_model, save_model

    best = max(rows, key=lambda r: (_in_head(r) >= MIN_HEAT_IN_HEAD,
                                    (r["pointing_game"] or 0) + 0.5 * (r["heat_in_box"] or 0)))
    model = load_model(str(folder))
    c = model.config
    c.cam_layer, c.cam_method, c.cam_power = best["layer"], best["method"], best["power"]
    c.metrics["heatmaps"] = {
        **{k: best.get(k) for k in ("method", "layer", "power", "n_boxes", "pointing_game", "heat_in_box",
                                     "heat_in_head", "heat_in_head_other_slices", "by_source") if k in best},
        "data": f"{', '.join(boxes)} ({best['n_boxes']} slices"
                + (", figures the mean over the sets)" if "by_source" in best else ")"),
        "why": "Chosen as the best pointing game (+ half the heat-in-box share) among maps keeping "
               f">= {MIN_HEAT_IN_HEAD:.2f} of their heat inside the head, of (pointing / in box / in head): "
               + ", ".join(f"{r['method']}@{r['layer']}^{r['power']:g} {r['pointing_game']:.2f}/{r['heat_in_box']:.2f}/"
                           f"{_in_head(r):.2f}" for r in rows) + " (python -m scripts.heatmaps)."}
    save_model(model, folder)
    write_model_card(folder, c)
    print(f"applied to {folder}: {c.cam_method} at {c.cam_layer}, power {c.cam_power:g}")


if __name__ == "__main__":
    sys.exit(main())
