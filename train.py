"""Train the brain-MRI tumour classifier and write a Hugging Face model folder (optionally push it).

    # the original recipe: ImageNet init, backbone lr 1e-4, head lr 1e-3, plateau schedule, early stopping
    python train.py --data ../shared/data/brain-tumor-mri --out runs/resnet18
    # the shipped model: from scratch, every layer at one learning rate, one-cycle (see README for the exact command)
    python train.py --data ../shared/data/brain-tumor-mri/Training --init scratch --backbone-lr same \
        --schedule onecycle --lr 2e-3 --img-size 128 --epochs 10 --out model
    # publish
    python train.py ... --push-to-hub user/brain-tumor-resnet18

Ctrl-C stops after saving; the same command resumes from the last finished epoch.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields

from brain_tumor.config import TrainConfig


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="class folders, or a root holding Training/ and Testing/")
    p.add_argument("--out", default=d.out, help="output model folder (Hugging Face layout)")
    p.add_argument("--init", default=d.init, help="imagenet | scratch | PATH (.safetensors or model folder)")
    p.add_argument("--img-size", type=int, default=d.img_size)
    p.add_argument("--output-stride", type=int, choices=[16, 32], default=d.output_stride,
                   help="16 dilates the last stage: layer4 heat maps on a grid twice as fine, ~1.4x compute")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="head learning rate")
    p.add_argument("--backbone-lr", default=str(d.backbone_lr),
                   help="backbone learning rate, or 'same' to train every layer at --lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=["plateau", "onecycle"], default=d.schedule)
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping; 0 disables")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--dup-threshold", type=float, default=d.dup_threshold)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--no-intensity-aug", dest="intensity_aug", action="store_false")
    p.add_argument("--curve-p", type=float, default=d.curve_p,
                   help="share of training images given a random tissue-contrast curve")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                   help="forward pass in bfloat16 autocast (fp32 weights); auto: where the CPU has native bf16")
    p.add_argument("--max-images", type=int, default=d.max_images, help="use a random subset (smoke tests)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None)
    a = p.parse_args(argv)
    if a.img_size < 32:
        p.error("--img-size must be at least 32")
    if a.epochs < 1:
        p.error("--epochs must be at least 1")
    values = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name)}
    values["backbone_lr"] = None if a.backbone_lr.lower() in ("same", "none") else float(a.backbone_lr)
    return TrainConfig(**values)


def main(argv=None) -> int:
    from brain_tumor.engine import fit
    from brain_tumor.model import ModelLoadError

    cfg = parse_args(argv)
    cfg.notes = []
    command = "python train.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    try:
        out = fit(cfg, command=command)
    except KeyboardInterrupt:
        return 130
    except (ValueError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.push_to_hub:
        from brain_tumor.hub import push_to_hub
        try:
            url = push_to_hub(out, cfg.push_to_hub)
        except Exception as e:  # network, auth: the trained model is safe on disk either way
            print(f"error: upload to {cfg.push_to_hub} failed ({type(e).__name__}: {e}); the model is saved in "
                  f"{out}: push it later with `python -m brain_tumor.hub {out} {cfg.push_to_hub}`", file=sys.stderr)
            return 1
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
