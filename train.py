"""Train the brain-MRI tumour classifier and write a Hugging Face model folder (optionally push it).

    # the original recipe: ImageNet init, backbone lr 1e-4, head lr 1e-3, plateau schedule, early stopping
    python train.py --data ../shared/data/brain-tumor-mri --out runs/resnet18
    # several sources at once (the shipped model; see README for the exact command)
    python train.py --data ../shared/data/brain-tumor-mri/Training --data ../shared/data/lgg-segmentation \
        --data ../shared/data/mri-44class-half --init model --backbone-lr same --schedule onecycle \
        --lr 6e-4 --img-size 160 --epochs 10 --out runs/multi
    # publish
    python train.py ... --push-to-hub user/brain-tumor-resnet18

    # several processes or GPUs (DistributedDataParallel; --batch-size is per process)
    torchrun --nproc_per_node 2 train.py --data ... --out runs/ddp

Ctrl-C stops after saving; the same command resumes from the last finished epoch.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import fields

from brain_tumor.config import HelpFormatter, TrainConfig


def parse_args(argv=None) -> TrainConfig:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, action="append", metavar="DIR",
                   help="a data root (repeat for several): class folders, Training/ + Testing/, or sequence folders "
                        "of class folders (flair/glioma/...); classes are the union, mapped through the aliases")
    p.add_argument("--out", default=d.out, help="output model folder (Hugging Face layout)")
    p.add_argument("--init", default=d.init, help="imagenet | scratch | PATH (.safetensors or model folder)")
    p.add_argument("--img-size", type=int, default=d.img_size, help="square network input, pixels")
    p.add_argument("--output-stride", type=int, choices=[16, 32], default=d.output_stride,
                   help="16 dilates the last stage: layer4 heat maps on a grid twice as fine, ~1.4x compute")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs to train (a resumed run counts those done)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step, per process under torchrun")
    p.add_argument("--lr", type=float, default=d.lr, help="head learning rate")
    p.add_argument("--backbone-lr", default=str(d.backbone_lr),
                   help="backbone learning rate, or 'same' to train every layer at --lr")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--schedule", choices=["plateau", "onecycle"], default=d.schedule, help="learning-rate schedule")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping; 0 disables")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help="share of each source/sequence/class held out (whole groups)")
    p.add_argument("--dup-threshold", type=float, default=d.dup_threshold, help="thumbnail correlation that makes two slices near-duplicates")
    p.add_argument("--seed", type=int, default=d.seed, help="split, sampling, augmentation and initialisation seed")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy label smoothing")
    p.add_argument("--no-intensity-aug", dest="intensity_aug", action="store_false", help="no contrast curves, gamma, contrast, blur, noise")
    p.add_argument("--curve-p", type=float, default=d.curve_p,
                   help="share of training images given a random tissue-contrast curve")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                   help="forward pass in bfloat16 autocast (fp32 weights); auto: where the CPU has native bf16")
    p.add_argument("--source-balance", type=float, default=d.source_balance,
                   help="a source/sequence group of n images is drawn with total weight n**this per epoch "
                        "(1: as pooled, 0: every group equally)")
    p.add_argument("--epoch-size", type=int, default=d.epoch_size,
                   help="images drawn per epoch (with replacement, by those weights); 0: the training split's size")
    p.add_argument("--no-mri-aug", dest="mri_aug", action="store_false",
                   help="no skull stripping, bias field, ghosting, motion, Gibbs, noise, low resolution, film looks")
    p.add_argument("--strip-p", type=float, default=d.strip_p, help="share of training slices skull-stripped")
    p.add_argument("--artefact-p", type=float, default=d.artefact_p, help="share of slices given each MRI artefact")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay per step of a moving average of the weights, which is then what is validated, "
                        "selected and saved (e.g. 0.998; 0: off)")
    p.add_argument("--distill", default=d.distill, metavar="MODEL",
                   help="a model folder or Hub id whose answers this run also learns, on the slices of "
                        "--distill-source (so that training on new sources does not forget an old one)")
    p.add_argument("--distill-source", default=d.distill_source, metavar="GROUP",
                   help="the source (data root's name, e.g. brain-tumor-mri) or source/sequence the --distill "
                        "model scores (default: every slice)")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, help="weight of the distillation term")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help="temperature softening both answers in the distillation term")
    p.add_argument("--anchor-weight", type=float, default=d.anchor_weight,
                   help="also distil the --init model's own answers (frozen) on the slices --distill does not "
                        "score, with this weight, so that pulling one source back does not lose the others (0: off)")
    p.add_argument("--select", choices=["all", "answers"], default=d.select,
                   help="best epoch by the group score of the answers and the training-time layer4 CAM pointing game "
                        "(all), or of the answers alone (answers; then check the served map with scripts.heatmaps)")
    p.add_argument("--loc-weight", type=float, default=d.loc_weight,
                   help="heat-map objective: weight of the class activation outside the tumour mask (masked slices)")
    p.add_argument("--head-weight", type=float, default=d.head_weight,
                   help="weight of the class activation outside the head, on tumour slices without a mask")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=d.device,
                   help="auto: the (local rank's) GPU where CUDA is available, else the CPU")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun ranks (CUDA only)")
    p.add_argument("--split-from", default=d.split_from, metavar="SPLIT_JSON",
                   help="keep the train/validation side of every image this split.json lists "
                        "(default: the split.json of the --init model folder, if any)")
    p.add_argument("--max-images", type=int, default=d.max_images, help="use a random subset (smoke tests)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the model folder to this Hub repo when done")
    a = p.parse_args(argv)
    values = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name)}
    try:
        values["backbone_lr"] = None if a.backbone_lr.lower() in ("same", "none") else float(a.backbone_lr)
        return TrainConfig(**values)
    except ValueError as e:
        names = "|".join(f.name for f in fields(TrainConfig))  # name the flag: img_size -> --img-size
        p.error(re.sub(rf"\b({names})\b", lambda m: "--" + m.group(1).replace("_", "-"), str(e)))


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
    if cfg.push_to_hub and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone publishes
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
