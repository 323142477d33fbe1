"""What a trained model's answers gain without more training: test-time flips and a refit last layer, per group.

On the model's own split (its split.json), from one pass over every slice (pooled 512-d features and logits, as
the model serves them) and one over the validation slices mirrored left-right:
- **fit**: accuracy, tumour sensitivity and specificity per source/sequence on the training side too (unaugmented
  slices, eval mode). A group the network cannot fit on its own training slices needs more training, not a new
  head or threshold.
- **flip**: the validation groups with the logits of each slice and of its mirror image averaged (twice the cost).
- **last layer**: the linear head refit (L-BFGS, weighted cross-entropy, an L2 pull of strength ``lam`` toward the
  shipped weights) on the training slices' features, each slice weighted equally (``none``), or each
  (group, class) cell weighing the same in all (``group``): deep feature reweighting, on training features
  because the validation slices must stay unseen. Temperature refit on validation as `brain_tumor.trust` does.
Every variant's selection score is over answers only (accuracy, sensitivity, specificity; no pointing game): a
refit head also changes the heat maps, which would need `scripts.heatmaps` and `evaluate` again.

    python -m scripts.posthoc --model model --json docs/evaluations/posthoc_not_kept.json     # ~8 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brain_tumor import datasets, splits
from brain_tumor.metrics import group_reports, json_ready, selection_score
from brain_tumor.model import load_model
from brain_tumor.preprocess import normalise
from brain_tumor.trust import fit_temperature


@torch.no_grad()  # not inference_mode: the features feed the head refit's autograd
def pooled_and_logits(model, images: torch.Tensor, flip: bool = False, batch_size: int = 64):
    """(N x 512 pooled features, N x K logits) of N x S x S uint8 prepared slices (mirrored with ``flip``)."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float().div(255).unsqueeze(1)
        x = x.flip(-1) if flip else x
        lo, f, _ = model(normalise(x, model.config.mean, model.config.std), with_maps=True)
        feats.append(f.float())
        logits.append(lo.float())
    return torch.cat(feats), torch.cat(logits)


def refit_head(features: torch.Tensor, labels: torch.Tensor, keys: np.ndarray, w0: torch.Tensor, b0: torch.Tensor,
               weighting: str, lam: float, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head refit on ``features``: weighted cross-entropy (``none``: every slice alike; ``group``: each
    distinct ``keys`` value, a (group, class) cell, weighing the same) + lam * ||W - w0||^2, from (w0, b0)."""
    if weighting == "group":
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
    elif weighting == "none":
        w = np.ones(len(keys))
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    weight = torch.tensor(w / w.mean(), dtype=torch.float32)
    W, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(features @ W.T + b, labels, reduction="none") * weight).mean()
        loss = loss + lam * ((W - w0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def figures(logits: torch.Tensor, labels: torch.Tensor, groups: np.ndarray, config, temperature: float) -> dict:
    probs = torch.softmax(logits / temperature, 1).numpy()
    reports = group_reports(labels.numpy(), probs, groups, config.class_names, config.no_tumor_indices)
    return {"selection_score_answers": selection_score(reports), "temperature": temperature,
            "accuracy": float((probs.argmax(1) == labels.numpy()).mean()), "groups": reports}


def line(name: str, f: dict) -> str:
    cells = " ".join(f"{r['accuracy']:.3f}/{r['tumor_sensitivity']:.3f}/{r['tumor_specificity']:.3f}"
                     for r in f["groups"].values())
    return f"{name:<22} score {f['selection_score_answers']:.4f}  accuracy {f['accuracy']:.4f} | {cells}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="model", help="a model folder with its split.json")
    ap.add_argument("--lams", default="0.01,0.001,0.0001", help="L2 pulls toward the shipped head to try")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    model = load_model(args.model).eval().requires_grad_(False)
    config = model.config
    col, is_val = splits.read_split(args.model)
    images, _, _, errors = datasets.load(col, config.img_size, settings=config.preprocessing)
    keep = np.array([e is None and c in config.class_names for e, c in zip(errors, col.classes)])
    groups = np.array(col.groups())
    labels = torch.tensor([config.class_names.index(c) if c in config.class_names else -1 for c in col.classes])
    x = torch.from_numpy(images)
    tr, va = np.where(keep & ~is_val)[0], np.where(keep & is_val)[0]
    print(f"{len(tr)} training slices, {len(va)} validation slices; cells: accuracy/sensitivity/specificity per "
          f"group ({', '.join(sorted(set(groups[va])))})", flush=True)
    f_tr, z_tr = pooled_and_logits(model, x[tr])
    f_va, z_va = pooled_and_logits(model, x[va])
    _, z_flip = pooled_and_logits(model, x[va], flip=True)
    y_tr, y_va, g_tr, g_va = labels[tr], labels[va], groups[tr], groups[va]
    t = float(config.temperature)
    out = {"model": args.model, "training_slices": len(tr), "validation_slices": len(va),
           "fit_training_side": figures(z_tr, y_tr, g_tr, config, t),
           "served": figures(z_va, y_va, g_va, config, t)}
    out["flip_average"] = figures((z_va + z_flip) / 2, y_va, g_va, config,
                                  fit_temperature((z_va + z_flip) / 2, y_va))
    head = model.net.fc[1]
    keys = np.array([f"{g}|{int(c)}" for g, c in zip(g_tr, y_tr)])
    out["last_layer"] = {}
    with torch.enable_grad():
        for weighting in ("none", "group"):
            for lam in (float(v) for v in args.lams.split(",")):
                W, b = refit_head(f_tr, y_tr, keys, head.weight.detach(), head.bias.detach(), weighting, lam)
                z = f_va @ W.T + b
                f = figures(z, y_va, g_va, config, fit_temperature(z, y_va))
                f["train_accuracy"] = float(((f_tr @ W.T + b).argmax(1) == y_tr).float().mean())
                f["relative_change"] = float((W - head.weight).norm() / head.weight.norm())
                out["last_layer"][f"{weighting} lam={lam:g}"] = f
    print(line("training side (fit)", out["fit_training_side"]))
    print(line("served", out["served"]))
    print(line("flip average", out["flip_average"]))
    for name, f in out["last_layer"].items():
        print(line(name, f) + f"  (head moved {f['relative_change']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready(out), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
