"""Which features the 'not a brain MRI' detector should read: measured on the model's own split.

For each candidate -- the pooled features the head reads (``pooled``), layer3's or layer2's channel means -- a
Mahalanobis detector is fitted as brain_tumor.trust fits the shipped one (class means, shared shrunk covariance,
each training slice and its skull-stripped view; threshold at trust.OOD_QUANTILE of the validation slices' and
their stripped views' distances, and at each of ``--quantiles``), and scored twice:
- fitted on every source: the share of validation MRIs flagged, by source/sequence, and of the non-MRI images
  (trust.non_mri_images) caught;
- leave one source out: fitted without one source's slices (training and validation alike), the share of that
  source's slices flagged -- how the detector treats MRIs from a source it never saw, which is what a user's scanner
  is -- and the non-MRI images caught by that fit.

    python -m scripts.detector_choice --model model --json docs/evaluations/detector_choice.json
    python -m scripts.detector_choice --model model --per-source 1200      # fewer training slices: faster

Training slices are drawn at random, at most ``--per-source`` from each source (default 1,300), for speed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from brain_tumor import datasets, splits
from brain_tumor.augment import strip_view
from brain_tumor.metrics import json_ready
from brain_tumor.model import load_model, nearest_mahalanobis
from brain_tumor.preprocess import normalise, prepare
from brain_tumor.trust import OOD_QUANTILE, fit_ood, looks_blank, non_mri_images

CANDIDATES = ("pooled", "layer3", "layer2")


@torch.inference_mode()
def features(model, images: torch.Tensor, transform=None, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Every candidate's features for N x S x S uint8 prepared slices (optionally transformed in [0, 1] first)."""
    got: dict[str, list[torch.Tensor]] = {c: [] for c in CANDIDATES}
    mids: dict[str, torch.Tensor] = {}
    hooks = [getattr(model.net, name).register_forward_hook(
        lambda _m, _i, out, name=name: mids.__setitem__(name, out.float().mean((2, 3)))) for name in ("layer2", "layer3")]
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].float().div(255).unsqueeze(1)
            x = transform(x) if transform is not None else x
            _, pooled, _ = model(normalise(x, model.config.mean, model.config.std), with_maps=True)
            got["pooled"].append(pooled.float())
            got["layer3"].append(mids["layer3"])
            got["layer2"].append(mids["layer2"])
    finally:
        for h in hooks:
            h.remove()
    return {c: torch.cat(v) if v else torch.zeros(0) for c, v in got.items()}


def score(fit: list[torch.Tensor], labels: torch.Tensor, k: int, threshold_on: list[torch.Tensor],
          scored: dict[str, torch.Tensor], quantiles: Sequence[float] = (OOD_QUANTILE,)
          ) -> dict[float, dict[str, np.ndarray]]:
    """Fit on the ``fit`` views (each with ``labels``); for each quantile, threshold there on ``threshold_on`` and
    give the flags of each ``scored``."""
    means, precision = fit_ood(torch.cat(fit), torch.cat([labels] * len(fit)), k)

    def distances(f: torch.Tensor) -> np.ndarray:
        return nearest_mahalanobis(f, means, precision).numpy()

    on = np.concatenate([distances(f) for f in threshold_on])
    d = {name: distances(f) for name, f in scored.items()}
    return {q: {name: v > float(np.quantile(on, q)) for name, v in d.items()} for q in quantiles}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="model", help="a model folder with its split.json")
    ap.add_argument("--per-source", type=int, default=1300, help="training slices drawn from each source")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantiles", default="0.995,0.998,0.999",
                    help="thresholds to compare, as quantiles of the validation MRIs' distances (the served one is "
                         "always among them; the top-level figures are its)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    classes = model.config.class_names
    col, is_val = splits.read_split(args.model)
    images, _, _, errors = datasets.load(col, model.config.img_size, settings=model.config.preprocessing)
    ok = np.array([e is None for e in errors]) & np.array([c in classes for c in col.classes])
    groups = np.array(col.groups())
    source = np.array([g.split("/")[0] for g in groups])
    rng = np.random.default_rng(args.seed)
    train = np.concatenate([rng.permutation(np.where(~is_val & ok & (source == s))[0])[:args.per_source]
                            for s in sorted(set(source))])
    val = np.where(is_val & ok)[0]
    labels = torch.tensor([classes.index(c) if c in classes else -1 for c in col.classes])
    x = torch.from_numpy(images)
    print(f"{len(train)} training slices, {len(val)} validation slices", flush=True)
    tr, tr_s = features(model, x[train]), features(model, x[train], strip_view)
    va, va_s = features(model, x[val]), features(model, x[val], strip_view)
    negatives = non_mri_images()
    neg_x = torch.from_numpy(np.stack([prepare(g, model.config.img_size, model.config.preprocessing)[0]
                                       for _, g in negatives]))
    neg, blank = features(model, neg_x), np.array([looks_blank(g) for _, g in negatives])
    k = len(classes)
    quantiles = sorted({OOD_QUANTILE, *(float(q) for q in args.quantiles.split(","))})
    results: dict[str, dict] = {}
    for c in CANDIDATES:
        flags = score([tr[c], tr_s[c]], labels[train], k, [va[c], va_s[c]],
                      {"val": va[c], "stripped": va_s[c], "neg": neg[c]}, quantiles)
        rows = {q: {"validation_flagged": float(f["val"].mean()), "stripped_flagged": float(f["stripped"].mean()),
                    "non_mri_caught": float((f["neg"] | blank).mean()),
                    "by_group": {g: float(f["val"][groups[val] == g].mean()) for g in sorted(set(groups[val]))},
                    "leave_one_source_out": {}} for q, f in flags.items()}
        for s in sorted(set(source)):
            keep_t, keep_v = source[train] != s, source[val] != s
            held = score([tr[c][keep_t], tr_s[c][keep_t]], labels[train][keep_t], k,
                         [va[c][keep_v], va_s[c][keep_v]],
                         {"held": torch.cat([tr[c][~keep_t], va[c][~keep_v]]), "neg": neg[c]}, quantiles)
            for q, f in held.items():
                rows[q]["leave_one_source_out"][s] = {"flagged": float(f["held"].mean()),
                                                      "non_mri_caught": float((f["neg"] | blank).mean())}
        results[c] = {**rows[OOD_QUANTILE], "quantile": OOD_QUANTILE,
                      "by_quantile": {f"{q:g}": r for q, r in rows.items()}}
        for q, row in rows.items():
            held = "  ".join(f"{s} {v['flagged']:.3f}" for s, v in row["leave_one_source_out"].items())
            worst = max(row["by_group"].items(), key=lambda kv: kv[1])
            print(f"{c:<7} at {q:g}: validation flagged {row['validation_flagged']:.4f} (most: {worst[0]} "
                  f"{worst[1]:.3f})  stripped {row['stripped_flagged']:.4f}  non-MRI caught {row['non_mri_caught']:.3f}"
                  f" | a source left out, its slices flagged: {held}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready({"model": args.model, "training_slices": len(train),
                                                          "validation_slices": len(val),
                                                          "non_mri_images": len(negatives), "candidates": results}),
                                               indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
