"""Training images per second: our loop (decode once, batched tensor augmentation) against a plain torchvision loop.

Same images, model (a fresh ResNet18 classifier, the same initial weights), batch size, input size,
optimizer (AdamW, the TrainConfig defaults) and loss. Decoding counts in both:
  ours:  datasets.load_prepared once (decode, head crop, resize, thumbnails), then engine.train_one_epoch
         for each epoch (channels-last; forward pass in bf16 autocast where the CPU has native bf16, as
         train.py does by default: --precision); the decode is amortised over --epochs;
  plain: an ImageFolder-style dataset that opens each JPEG with PIL every epoch, RandomResizedCrop,
         RandomHorizontalFlip, RandomRotation, ToTensor, Normalize, through a DataLoader.
The two loops take turns epoch by epoch (_harness.take_turns), so a busy machine slows both alike. No model
is saved.

    python -m benchmarks.train                                   # 256 training images, 2 epochs
    python -m benchmarks.train --images 512 --epochs 3 --json train.json
    python -m benchmarks.train --img-size 224 --workers 2
    python -m benchmarks.train --processes 1,2 --images 512       # train.py under torchrun: 1 and 2 processes

``--processes`` times train.py itself under ``torchrun --nproc_per_node N`` (DistributedDataParallel, gloo on
CPUs, NCCL on GPUs) for each N: the same images and settings, --batch-size per process (so the global batch
grows with N), images per second from the run's own epoch times (the last epoch's, after warm-up).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._harness import (MODEL_HELP, TRAINING_DATA, describe_machine, machine, meets, table, take_turns,
                                 write_json)


class PlainImageFolder(torch.utils.data.Dataset):
    """torchvision ImageFolder's behaviour on a list of files: decode with PIL on every access."""

    def __init__(self, paths: list[Path], labels: list[int], transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            image = im.convert("RGB")
        return self.transform(image), self.labels[i]


def plain_loader(paths, labels, img_size: int, batch_size: int, workers: int, seed: int):
    import torchvision.transforms as T

    from brain_tumor.config import IMAGENET_MEAN, IMAGENET_STD

    transform = T.Compose([T.RandomResizedCrop(img_size, scale=(0.8, 1.0)), T.RandomHorizontalFlip(),
                           T.RandomRotation(15), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.utils.data.DataLoader(
        PlainImageFolder(paths, labels, transform), batch_size=batch_size, shuffle=True, num_workers=workers,
        drop_last=len(paths) % batch_size == 1,  # batch norm cannot train on one image; ours skips it too
        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)


def plain_epoch(model, loader, optimizer, label_smoothing: float) -> int:
    model.train()
    seen = 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def _optimizer(model, cfg):
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _warm(model, img_size: int, optimizer, channels_last: bool) -> None:
    """One untimed step, so neither loop pays the allocator's first-touch cost in its timings."""
    model.train()
    x = torch.randn(2, 3, img_size, img_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    optimizer.zero_grad(set_to_none=True)


def sample_training_files(root: Path, n: int, seed: int) -> tuple[list[Path], list[int], list[str]]:
    from brain_tumor.datasets import read_class_folders

    folder = read_class_folders(root)
    picks = np.random.default_rng(seed).choice(len(folder), min(n, len(folder)), replace=False)
    return [folder.paths[i] for i in picks], [folder.labels[i] for i in picks], folder.classes


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP + "; only its input size is used (training starts "
                    "from scratch); without a model, 224 px")
    ap.add_argument("--data", default=str(TRAINING_DATA), help="root of class folders (default: %(default)s)")
    ap.add_argument("--images", type=int, default=256, help="training images sampled (fixed seed)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per loop; our decode is amortised over them")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=None, help="input size (default: the model's)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the plain loop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="our loop's forward precision, as train.py --precision (the plain loop is fp32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--processes", default=None, metavar="N,N",
                    help="time train.py under torchrun with each number of processes instead (see the docstring)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="for --processes")
    args = ap.parse_args(argv)
    if args.processes:
        return _torchrun(args)

    from brain_tumor.config import TrainConfig
    from brain_tumor.datasets import load_prepared
    from brain_tumor.engine import forward_precision, train_one_epoch
    from brain_tumor.model import ModelLoadError, create_model, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    img_size, size_from = args.img_size, "--img-size"
    if img_size is None:
        try:
            img_size, size_from = load_model(args.model).config.img_size, "the model"
        except ModelLoadError as e:
            img_size, size_from = TrainConfig().img_size, f"default (no model: {str(e)[:80]})"
    cfg = TrainConfig(img_size=img_size, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed,
                      precision=args.precision)
    precision = forward_precision(cfg.precision)
    paths, labels, classes = sample_training_files(Path(args.data), args.images, args.seed)
    n = len(paths)

    info = machine()
    print(describe_machine(info))
    print(f"data:    {n} images from {args.data} (seed {args.seed}), classes {classes}")
    print(f"setup:   {img_size} px ({size_from}), batch {cfg.batch_size}, {args.epochs} epochs, AdamW lr {cfg.lr} "
          f"wd {cfg.weight_decay}, plain loop workers {args.workers}; our forward pass: {precision}", flush=True)

    torch.manual_seed(args.seed)
    base = create_model(classes, init="scratch", img_size=img_size)
    ours_model = copy.deepcopy(base).to(memory_format=torch.channels_last)  # as engine.fit does
    plain_model = copy.deepcopy(base)
    ours_opt, plain_opt = _optimizer(ours_model, cfg), _optimizer(plain_model, cfg)
    _warm(ours_model, img_size, ours_opt, channels_last=True)
    _warm(plain_model, img_size, plain_opt, channels_last=False)
    loader = plain_loader(paths, labels, img_size, cfg.batch_size, args.workers, args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    # ours decodes first: the plain loop then reads files the page cache has already seen
    t0 = time.perf_counter()
    images, _, errors = load_prepared(paths, img_size, progress=False)
    decode_s = time.perf_counter() - t0
    ok = np.array([e is None for e in errors])
    if not ok.all():
        print(f"note: {int((~ok).sum())} unreadable files left out of our loop", file=sys.stderr)
    x_train = torch.from_numpy(images[ok])
    y_train = torch.tensor(labels).long()[torch.from_numpy(ok)]
    ours_n = len(x_train) - (1 if len(x_train) % cfg.batch_size == 1 else 0)

    plain_n = []  # images each plain epoch saw
    loops = {"plain": lambda _: plain_n.append(plain_epoch(plain_model, loader, plain_opt, cfg.label_smoothing)),
             "ours": lambda epoch: train_one_epoch(ours_model, x_train, y_train, ours_opt, cfg, gen,
                                                   desc=f"ours {epoch}/{args.epochs}")}
    times = take_turns(loops, range(1, args.epochs + 1), after_round=lambda i, t: print(
        f"  epoch {i + 1}: plain {t['plain'][-1]:.1f} s, ours {t['ours'][-1]:.1f} s", flush=True))
    plain_s, ours_s = times["plain"], times["ours"]

    ours_total = decode_s + sum(ours_s)
    ours_ips = ours_n * args.epochs / ours_total
    plain_ips = sum(plain_n) / sum(plain_s)
    ratio = ours_ips / plain_ips
    rows = [
        ["plain: PIL decode + torchvision transforms each epoch, DataLoader", f"{sum(plain_s) / args.epochs:.2f} s",
         f"{plain_ips:.1f}"],
        [f"ours: decode once ({decode_s:.2f} s, amortised over {args.epochs}) + batched augmentation, {precision}",
         f"{ours_total / args.epochs:.2f} s", f"{ours_ips:.1f}"],
        ["ours: epochs alone (decode not counted)", f"{sum(ours_s) / args.epochs:.2f} s",
         f"{ours_n * args.epochs / sum(ours_s):.1f}"],
        ["ours / plain, decode counted   target: >= 1.3", f"{ratio:.2f} x", meets(ratio, 1.3, at_most=False)],
    ]
    print()
    print(table(["training, per epoch", "seconds", "images/s"], rows))
    write_json(args.json, "train", {
        "data": args.data, "images": n, "epochs": args.epochs, "batch_size": cfg.batch_size, "img_size": img_size,
        "plain_workers": args.workers, "seed": args.seed, "ours_precision": precision,
        "plain": {"epoch_seconds": plain_s, "images_per_epoch": plain_n, "images_per_second": plain_ips},
        "ours": {"decode_seconds": decode_s, "epoch_seconds": ours_s, "images_per_epoch": ours_n,
                 "images_per_second_amortised": ours_ips,
                 "images_per_second_epochs_only": ours_n * args.epochs / sum(ours_s)},
        "ratio_ours_over_plain": ratio}, info)
    return 0


def _torchrun(args) -> int:
    """train.py under torchrun for each process count: images per second of the last epoch."""
    import json
    import os
    import socket
    import subprocess
    import tempfile

    info = machine()
    print(describe_machine(info))
    img_size = args.img_size or 128
    rows, results = [], {}
    for n in [int(v) for v in args.processes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
                   str(port), "train.py", "--data", args.data, "--out", f"{tmp}/m", "--init", "scratch",
                   "--img-size", str(img_size), "--epochs", str(max(2, args.epochs)), "--batch-size",
                   str(args.batch_size), "--max-images", str(args.images), "--precision", args.precision,
                   "--device", args.device, "--patience", "0", "--seed", str(args.seed)]
            threads = max(1, (os.cpu_count() or 1) // n) if args.device != "cuda" else 1
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or threads)}
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if run.returncode != 0:
                print(run.stderr[-1500:], file=sys.stderr)
                return 1
            cfg = json.loads(Path(f"{tmp}/m/config.json").read_text())
            hist, tr = cfg["training"]["history"], cfg["training"]
            train_images = tr["data_images"] - cfg["metrics"]["validation"]["n"]
            ips = train_images / hist[-1]["seconds"]  # epoch time includes rank 0's validation
            results[n] = {"images_per_second": ips, "epoch_seconds": [h["seconds"] for h in hist],
                          "global_batch": tr["global_batch"], "hardware": tr["hardware"],
                          "threads_per_process": args.threads or threads}
            rows.append([f"{n} process(es), {threads} thread(s) each, global batch {tr['global_batch']}",
                         f"{hist[-1]['seconds']:.1f} s", f"{ips:.1f}"])
            print(f"  {n} process(es): {ips:.1f} images/s", flush=True)
    print()
    print(table(["train.py under torchrun, last epoch (with validation)", "seconds", "images/s"], rows))
    write_json(args.json, "train_ddp", {"data": args.data, "images": args.images, "img_size": img_size,
                                        "batch_size_per_process": args.batch_size, "device": args.device,
                                        "results": results}, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
