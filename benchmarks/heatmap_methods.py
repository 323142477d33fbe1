"""Seconds per slice for an answer with its heat map, by heat-map method (the CLI's --method, the app's menu).

Each method runs through Predictor.predict([slice], heatmaps=True, method=...), decoding excluded, the methods
taking turns on the same slices (_harness.take_turns). Grad-CAM and Grad-CAM++ come from the answer's own pass;
AblationCAM at the last stage from its closed form (explain.ablation_at_head); the others from pytorch-grad-cam.
pytorch-grad-cam's own AblationCAM (a forward pass per channel) is timed apart on --library-slices slices, with
the largest difference between its maps and the closed form's.

    python -m benchmarks.heatmap_methods --model model --json docs/benchmarks/heatmap_methods.json
    python -m benchmarks.heatmap_methods --methods gradcam,ablationcam --n 5 --library-slices 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from benchmarks._harness import (MODEL_HELP, default_data, describe_machine, machine, sample_images, summary, table,
                                 take_turns, write_json)


def main(argv: Optional[list[str]] = None) -> int:
    from brain_tumor.decode import read_image
    from brain_tumor.explain import LIBRARY_METHODS, _library, ablation_at_head, check_method
    from brain_tumor.inference import Predictor
    from brain_tumor.preprocess import to_tensor

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--data", default=None, help="folder walked recursively for images (default: the Kaggle "
                    "Training folder beside the repo, else examples/)")
    ap.add_argument("--methods", default=",".join(LIBRARY_METHODS), help="comma-separated methods to time")
    ap.add_argument("--n", type=int, default=10, help="slices timed per method (medians over these)")
    ap.add_argument("--warmup", type=int, default=1, help="slices run through every method first, untimed")
    ap.add_argument("--library-slices", type=int, default=2,
                    help="slices for pytorch-grad-cam's own AblationCAM (tens of seconds each on a CPU); 0: skip")
    ap.add_argument("--seed", type=int, default=0, help="seed of the slice sample")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        methods = [check_method(m) for m in args.methods.split(",") if m.strip()]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not methods or args.n < 1:
        raise SystemExit("error: need at least one method and --n of at least 1")

    data = Path(args.data) if args.data else default_data()
    paths, distinct = sample_images(data, args.n + args.warmup, args.seed)
    grays = [read_image(p) for p in paths]
    warmup, grays = grays[:args.warmup], grays[args.warmup:]
    predictor = Predictor(args.model)
    info = machine()
    print(describe_machine(info))
    print(f"model:   {predictor.source}: input {predictor.config.img_size} px, heat map at {predictor.config.cam_layer}")
    print(f"slices:  {len(grays)} timed + {len(warmup)} warm-up from {data} ({distinct} distinct, seed {args.seed})",
          flush=True)

    fns = {m: (lambda g, m=m: predictor.predict([g], heatmaps=True, method=m)) for m in methods}
    times = take_turns(fns, grays, warmup)
    results = {m: summary(t) for m, t in times.items()}

    library = None
    if args.library_slices > 0:
        model, cfg, layer = predictor.model, predictor.config, predictor.config.cam_layer
        seconds, diffs = [], []
        for g in grays[:args.library_slices]:
            x = to_tensor(predictor.prepare(g)[0][None], cfg.mean, cfg.std).to(predictor.device)
            cls = [predictor.classes.index(predictor.predict([g])[0].label)]
            t0 = time.perf_counter()
            theirs = _library(model, x, cls, "ablationcam", layer)
            seconds.append(time.perf_counter() - t0)
            ours = ablation_at_head(model, x, cls, layer)
            if ours is not None:
                diffs.append(float(np.abs(ours - theirs).max()))
        library = {"seconds": summary(seconds), "closed_form_applies": len(diffs) == len(seconds),
                   "max_abs_difference": max(diffs) if diffs else None}

    rows = [[m, f"{results[m]['median']:.3f} s", f"{results[m]['p95']:.3f} s"] for m in methods]
    if library:
        rows.append(["pytorch-grad-cam's own AblationCAM (map only)", f"{library['seconds']['median']:.3f} s",
                     f"{library['seconds']['max']:.3f} s (max)"])
    print()
    print(table(["answer + heat map, per slice", "median", "p95"], rows))
    if library and library["max_abs_difference"] is not None:
        print(f"closed-form AblationCAM vs the library's: largest difference {library['max_abs_difference']:.2e} "
              f"(maps in [0, 1])")
    write_json(args.json, "heatmap_methods", {
        "model": predictor.source, "model_img_size": predictor.config.img_size, "cam_layer": predictor.config.cam_layer,
        "data": str(data), "slices": len(grays), "distinct_slices": distinct, "seed": args.seed,
        "threads": torch.get_num_threads(), "seconds_per_slice": results, "library_ablationcam": library}, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
