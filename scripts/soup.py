"""A weight average ("model soup", Wortsman et al. 2022) of models trained from one another: a model folder whose
network weights are the weighted mean of its ingredients'.

An ingredient is a model folder (or its .safetensors file, or a Hub id), or a run's resumable state (``RUN.train_state.pt``,
which train.py keeps beside the model folder: its moving average with --ema, else the last epoch's weights, the
ones a finished run does not otherwise keep). Averaging only makes sense for networks that share a training
trajectory (one continued from the other); the batch-norm statistics are averaged too, as the EMA does.
The folder takes config.json (its training record too, with the soup's own record added) and split.json from
``--like``; what depends on the weights is refit afterwards (trust also refreshes the per-group validation figures):

    python -m scripts.soup model runs/run17.train_state.pt --like runs/run17 --out runs/soup
    python -m brain_tumor.trust runs/soup && python -m brain_tumor.cam_offset runs/soup    # temperature, detector, offsets

then the map is chosen again (`scripts.heatmaps ... --apply`) and the soup measured with `brain_tumor.evaluate`.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import torch

from brain_tumor.config import HelpFormatter
from brain_tumor.model import ModelLoadError, load_model, save_model


def ingredient(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """An ingredient read once: its network's state dict (the keys of ``TumorClassifier.net``) and what it is, for the
    soup's record. ``source`` is a run's train state (its moving average, else its last weights; with the run's
    settings and epoch) or any model source `load_model` takes (a model folder, a .safetensors file with its
    config.json, a Hub id)."""
    if source.endswith(".train_state.pt"):  # our own resumable state, read as engine.resume reads it
        if not Path(source).is_file():
            raise SystemExit(f"{source}: not a model: no such train state")
        state = torch.load(source, weights_only=True, map_location="cpu")
        if state.get("ema") is not None:
            weights = {k.removeprefix("module."): v for k, v in state["ema"].items()}
        else:
            weights = state["model"]
        run = json.loads(state["config"]) if isinstance(state.get("config"), str) else {}
        about = {"source": source, "kind": f"a run's {'moving average' if state.get('ema') is not None else 'weights'} "
                                           f"after epoch {state.get('epoch')}",
                 "run": {k: run[k] for k in ("init", "img_size", "epochs", "epoch_size", "lr", "seed", "out") if k in run}}
        return {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}, about
    try:
        model = load_model(source)
    except ModelLoadError as e:
        raise SystemExit(f"{source}: not a model ({e})") from None
    config = model.config
    return model.net.state_dict(), {
        "source": source, "kind": "a model folder" + (f" (version {config.version})" if config.version != "0" else ""),
        "trained_by": (config.training or {}).get("command", "")}


def average(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of floating-point tensors (fp32); other tensors (batch-norm counters) from the first."""
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise SystemExit(f"the ingredients differ in their tensors: {sorted(keys ^ set(s))[:5]}")
        shapes = [k for k in keys if s[k].shape != states[0][k].shape]
        if shapes:
            raise SystemExit(f"the ingredients differ in their tensors' shapes: {sorted(shapes)[:5]}")
    total = sum(weights)
    out = {}
    for k in states[0]:
        if states[0][k].is_floating_point():
            out[k] = sum(w / total * s[k].float() for s, w in zip(states, weights))
        else:
            out[k] = states[0][k].clone()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.soup", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("ingredients", nargs="+", help="model folders (or Hub ids) or RUN.train_state.pt files")
    p.add_argument("--weights", default="", help="comma-separated weight of each ingredient (default: equal)")
    p.add_argument("--like", required=True, help="model folder whose config.json and split.json the soup takes")
    p.add_argument("--out", required=True, help="model folder to write")
    args = p.parse_args(argv)
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(args.ingredients)
    except ValueError:
        raise SystemExit(f"--weights {args.weights!r}: give numbers separated by commas, e.g. 3,1") from None
    if len(weights) != len(args.ingredients) or min(weights) < 0 or sum(weights) <= 0:
        raise SystemExit("--weights: one non-negative number per ingredient, not all zero")
    model = load_model(args.like)
    states, about = zip(*(ingredient(s) for s in args.ingredients))
    model.net.load_state_dict(average(list(states), weights))
    total = sum(weights)  # the record travels in config.training (the model card shows it)
    model.config.training = {**(model.config.training or {}), "soup": {
        "command": "python -m scripts.soup " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "ingredients": [{**a, "weight": w / total} for a, w in zip(about, weights)]}}
    out = Path(args.out)
    save_model(model, out)
    if (Path(args.like) / "split.json").is_file() and Path(args.like).resolve() != out.resolve():
        shutil.copyfile(Path(args.like) / "split.json", out / "split.json")
    print(f"{out}: {' + '.join(f'{w:g} x {s}' for s, w in zip(args.ingredients, weights))}; refit with "
          f"`python -m brain_tumor.trust {out}` and `python -m brain_tumor.cam_offset {out}`")


if __name__ == "__main__":
    main()
