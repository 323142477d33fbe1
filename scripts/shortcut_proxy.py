"""The sequence-shortcut proxy: does the model read tumours, or sequences and film artefacts?

Tumour sensitivity/specificity on the grouped validation split, as it is and re-rendered the way web-collected
slices look (a proxy of our own making for the original project's 253-image yes/no set, which we do not have):

- inverted: tissue brightness inverted inside the head (T1-like contrast turned T2-like) by the package's
  trust.sequence_proxy on the model's input, as training scores it for config.json's inverted_contrast_proxy;
- film: a photographed film -- white frame, gamma, blur, a letter and an arrow, odd size (150-1900 px);
- both: the film, read by the model inverted;
- skull-stripped: zero outside the brain, as BraTS-style slices come (the package's augment.strip_view on the
  slice as read, before the head is cropped, so the crop then frames the brain alone).

Pooled figures, then each variant's table by source and sequence (the JSON holds both).

    python -m scripts.shortcut_proxy --model model            # the validation images of model/split.json
    python -m scripts.shortcut_proxy --model model --data DIR # a plain folder of class folders instead
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from brain_tumor.augment import strip_view
from brain_tumor.decode import read_image
from brain_tumor.inference import Predictor
from brain_tumor.metrics import format_group_table, group_reports, json_ready, tumor_probability, tumor_scores
from brain_tumor.trust import extract, sequence_proxy
from scripts._images import scored_images


def probabilities(predictor: Predictor, grays: list[np.ndarray], transform=None) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class probabilities for the slices, prepared as the model reads them and then, if given,
    ``transform``ed in [0, 1] (as training scores its proxy); and which of them the MRI detector flags."""
    prepared = torch.from_numpy(np.stack([predictor.prepare(g)[0] for g in grays]))
    logits, features = extract(predictor.model, prepared, transform=transform)
    flagged = ~predictor.looks_like_mri(features, grays)  # the app's own check
    return torch.softmax(logits / predictor.config.logit_scale(), 1).numpy(), flagged


def film(gray: np.ndarray, rng) -> np.ndarray:
    size = int(rng.integers(150, 1900))
    img = cv2.resize(gray, (size, size), interpolation=cv2.INTER_LINEAR)
    img = (255 * (img / 255.0) ** rng.uniform(0.7, 1.4)).astype(np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5) * size / 512)
    pad = int(size * rng.uniform(0.03, 0.12))
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=int(rng.integers(200, 256)))
    h = img.shape[0]
    cv2.putText(img, "R" if rng.random() < 0.5 else "L", (pad + h // 30, pad + h // 10), cv2.FONT_HERSHEY_SIMPLEX,
                h / 400, 255, max(1, h // 200))
    p = (int(h * rng.uniform(0.3, 0.7)), int(h * rng.uniform(0.3, 0.7)))
    cv2.arrowedLine(img, (p[0] + h // 8, p[1] - h // 8), p, 255, max(1, h // 150))
    return img


def skull_stripped(gray: np.ndarray, rng) -> np.ndarray:
    """The slice zeroed outside the brain (augment.strip_view: skull and scalp 6-12% of the side, drawn from
    torch's generator, which main seeds)."""
    x = torch.from_numpy(np.ascontiguousarray(gray)).float().div(255)[None, None]
    return strip_view(x)[0, 0].mul(255).round().clamp(0, 255).byte().numpy()


def main(argv=None) -> int:
    args, predictor, paths, y, groups = scored_images(__doc__.split("\n")[0], argv)
    grays = [read_image(p) for p in paths]
    no_tumor = predictor.config.no_tumor_indices
    is_tumor = ~np.isin(y, no_tumor)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    variants = {"as is": (None, None), "inverted": (None, sequence_proxy), "film": (film, None),
                "inverted + film": (film, sequence_proxy),
                "skull-stripped": (skull_stripped, None)}  # (on the slice, on the model's input)
    rows, tables = {}, {}
    for name, (on_slice, on_input) in variants.items():
        probs, flagged = probabilities(predictor, [on_slice(g, rng) if on_slice else g for g in grays], on_input)
        s = tumor_scores(is_tumor, tumor_probability(probs, no_tumor))
        s["accuracy_4class"] = float(np.mean(probs.argmax(1) == y))
        s["flagged_not_mri"] = float(flagged.mean())
        rows[name] = s
        tables[name] = group_reports(y, probs, groups, predictor.classes, no_tumor)
        print(f"{name:<16} tumour sensitivity {s['tumor_sensitivity']:.3f}  specificity {s['tumor_specificity']:.3f}  "
              f"tumour-vs-none accuracy {s['tumor_accuracy']:.3f}  4-class accuracy {s['accuracy_4class']:.3f}  "
              f"flagged 'not a brain MRI' {s['flagged_not_mri']:.3f}",
              flush=True)
    for name, table in tables.items():
        print(f"\n{name}\n{format_group_table(table)}")
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready({"model": predictor.source, "n": len(paths), "rows": rows,
                                                          "groups": tables}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
