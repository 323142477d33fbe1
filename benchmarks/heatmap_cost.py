"""Where a heat map's time goes: the backward pass behind Grad-CAM at the model's layer, three ways, per slice.

On the same slices, with a forward pass of another slice before each timing (as in real use: weights are not
left warm in the caches), the median milliseconds of:
  forward           the answer's forward pass alone (inference mode)
  autograd          the gradient at the target layer by autograd (OnePass with its hand-written path off)
  by hand, fp32     OnePass's written-out backward pass, fp32, packed oneDNN weights
  by hand, bf16     the same in bf16 (the default where the CPU has native bf16)
  by hand, plain    bf16 again, with the plain conv_transpose2d instead of packed weights
  overlay           colouring the map and blending it on the 512 px view
Each backward row times only the gradient (the forward pass it needs is run first, untimed).

    python -m benchmarks.heatmap_cost --n 40 --json docs/benchmarks/heatmap_cost.json
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import numpy as np
import torch

from benchmarks._harness import MODEL_HELP, default_data, describe_machine, machine, sample_images, table, write_json


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--data", default=None, help="folder walked for images (default: the Kaggle Training folder)")
    ap.add_argument("--n", type=int, default=40, help="slices timed (medians over these)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from brain_tumor import explain
    from brain_tumor.data import read_image, to_tensor
    from brain_tumor.inference import Predictor

    predictor = Predictor(args.model)
    cfg, model = predictor.config, predictor.model
    paths, _ = sample_images(args.data or default_data(), args.n + 3)
    slices = [predictor.prepare(read_image(p)) for p in paths]
    inputs = [to_tensor(img[None], cfg.mean, cfg.std) for img, _ in slices]
    views = [predictor.view(read_image(p), crop) for p, (_, crop) in zip(paths, slices)]
    info = machine()
    print(describe_machine(info))
    print(f"model:   {predictor.source}: {cfg.img_size} px, Grad-CAM at {cfg.cam_layer}; {args.n} slices", flush=True)

    def backward(precision: str, by_hand: bool = True):
        def run(x: torch.Tensor) -> float:
            one = explain.OnePass(model, cfg.cam_layer, precision=precision)
            if not by_hand:
                one.blocks = None
            classes = one(x).argmax(1)
            t0 = time.perf_counter()
            one.grads(classes)
            return time.perf_counter() - t0
        return run

    def forward(x: torch.Tensor) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.forward_with_features(x)
        return time.perf_counter() - t0

    heat = predictor.predict([slices[0][0]], heatmaps=True)[0].heatmap

    def overlay_time(i: int) -> float:
        t0 = time.perf_counter()
        explain.overlay(views[i], heat)
        return time.perf_counter() - t0

    rows = {"autograd": backward("fp32", by_hand=False), "by hand, fp32": backward("fp32"),
            "by hand, bf16": backward("bf16")}
    if explain.OnePass(model, cfg.cam_layer).blocks is None:
        print(f"note: {cfg.cam_layer} is not a stage the hand-written path covers; its rows time autograd")
    times: dict[str, list[float]] = {k: [] for k in ["forward", *rows, "by hand, bf16, plain conv_transpose2d",
                                                      "overlay"]}

    def take_turns(fns: dict) -> None:
        for i, x in enumerate(inputs):
            for name, fn in fns.items():
                forward(inputs[(i + 1) % len(inputs)])  # another slice's pass in between: caches as in real use
                dt = fn(x) if name != "overlay" else fn(i)
                if i >= 3:  # the first slices warm up
                    times[name].append(dt)

    take_turns({"forward": forward, "autograd": rows["autograd"], "overlay": overlay_time})
    for name in ("by hand, fp32", "by hand, bf16"):  # one precision at a time: its folded weights stay cached
        take_turns({name: rows[name]})
    pack = explain._Adjoint._pack
    explain._Adjoint._pack = lambda *a: None  # as where oneDNN's packed op is missing
    explain._ADJOINTS.clear()
    try:
        take_turns({"by hand, bf16, plain conv_transpose2d": backward("bf16")})
    finally:
        explain._Adjoint._pack = pack
        explain._ADJOINTS.clear()
    medians = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print()
    print(table(["ms per slice (median)", "ms"], [[k, f"{v:.2f}"] for k, v in medians.items()]))
    write_json(args.json, "heatmap_cost", {"model": predictor.source, "img_size": cfg.img_size,
                                           "cam_layer": cfg.cam_layer, "slices": args.n, "median_ms": medians},
               info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
