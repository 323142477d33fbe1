"""Training augmentation speed: the batched MRI artefacts against MONAI's per-image transforms, and a whole batch.

The bias field, Gibbs ringing and Rician noise follow MONAI's models (tests/test_augment.py checks them against
MONAI) but run on the whole batch at once, on the batch's device. This measures what that buys on this machine:
each artefact applied to every slice of a batch of prepared training slices, MONAI's transform called once per
slice (as training called it before) against the batched form; then one whole training augmentation
(``augment.augment`` with the shipped recipe's probabilities) per batch. The paths take turns batch by batch
(_harness.take_turns). MONAI is a dev dependency (requirements-dev.txt).

    python -m benchmarks.augment                                 # 6 batches of 64 slices at 192 px
    python -m benchmarks.augment --batch 256 --batches 4 --json docs/benchmarks/augment.json
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np
import torch

from brain_tumor.config import HelpFormatter
from benchmarks._harness import (default_data, describe_machine, machine, sample_images, summary, table,
                                 take_turns, write_json)


def _monai_per_image(transform):
    """The former training path: one MONAI call per slice, back into [0, 1]."""
    def run(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        transform.set_random_state(seed=0)
        for i in range(len(out)):
            y = torch.as_tensor(transform(out[i]), dtype=out.dtype)
            out[i] = y / y.amax().clamp(min=1.0) if y.amax() > 1 else y.clamp(0, 1)
        return out
    return run


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.augment", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", default=str(default_data()), help="folder of training slices")
    parser.add_argument("--batch", type=int, default=64, help="slices per batch")
    parser.add_argument("--batches", type=int, default=6, help="timed batches (after one untimed)")
    parser.add_argument("--img-size", type=int, default=192, help="prepared slice side, pixels")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    try:
        from monai.transforms import RandBiasField, RandGibbsNoise, RandRicianNoise
    except ImportError:
        print("error: MONAI is not installed (pip install -r requirements-dev.txt)", file=sys.stderr)
        return 2
    from brain_tumor import augment as A
    from brain_tumor.datasets import load_prepared

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(describe_machine(info))
    paths, distinct = sample_images(args.data, args.batch * (args.batches + 1))
    images = load_prepared(paths, args.img_size, progress=False)[0]
    x = torch.from_numpy(np.asarray(images)).float().div(255).unsqueeze(1)
    batches = list(x.split(args.batch))
    every = torch.ones(args.batch, dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    monai = {"bias field": RandBiasField(prob=1.0, degree=3, coeff_range=(0.05, 0.3)),
             "Gibbs ringing": RandGibbsNoise(prob=1.0, alpha=(0.2, 0.7)),
             "Rician noise": RandRicianNoise(prob=1.0, std=0.04, relative=False, sample_std=True)}
    ours = {"bias field": A.bias_field, "Gibbs ringing": A.gibbs_ringing, "Rician noise": A.rician_noise}
    fns = {}
    for name in monai:
        fns[f"{name}: MONAI, per slice"] = _monai_per_image(monai[name])
        fns[f"{name}: batched"] = lambda b, f=ours[name]: f(b, every[:len(b)], g)
    fns["whole augmentation (recipe's probabilities)"] = lambda b: A.augment(
        b, g, curve_p=0.35, mri=True, strip_p=0.12, artefact_p=0.1)
    times = take_turns(fns, batches[1:], warmup=batches[:1])
    rows, out = [], {}
    for name, t in times.items():
        s = summary(t)
        per_image_ms = 1000 * s["median"] / args.batch
        out[name] = {"seconds_per_batch": s, "ms_per_image": per_image_ms}
        rows.append([name, f"{s['median']:.3f}", f"{per_image_ms:.2f}"])
    print(f"{len(batches) - 1} batches of {args.batch} slices at {args.img_size} px ({distinct} distinct files)")
    print(table(["path", "s / batch (median)", "ms / slice"], rows))
    write_json(args.json, "augment", {"data": args.data, "batch": args.batch, "batches": len(batches) - 1,
                                      "img_size": args.img_size, "distinct_files": distinct, "paths": out}, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
