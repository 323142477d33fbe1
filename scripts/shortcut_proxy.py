"""Does the model read tumours or sequences and film artefacts? Tumour sensitivity/specificity on the grouped
validation split, as it is and re-rendered the way web-collected slices look (a proxy of our own making for
the original project's 253-image yes/no set, which we do not have):

- inverted: tissue brightness inverted inside the head (T1-like contrast turned T2-like);
- film: a photographed film -- white frame, gamma, blur, a letter and an arrow, odd size (150-1900 px);
- both.

    python -m scripts.shortcut_proxy --val-from model/split.json --data ../shared/data/brain-tumor-mri/Training
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from brain_tumor.config import canonical_class
from brain_tumor.decode import read_image
from brain_tumor.preprocess import head_mask
from brain_tumor.inference import Predictor
from brain_tumor.metrics import tumor_scores


def inverted(gray: np.ndarray, rng) -> np.ndarray:
    mask = head_mask(gray)
    out = gray.copy()
    out[mask] = 255 - gray[mask]
    return out


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--val-from", default="model/split.json", help="split.json whose 'val' list to use")
    ap.add_argument("--data", default="../shared/data/brain-tumor-mri/Training")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    predictor = Predictor(args.model)
    root = Path(args.data)
    rels = json.loads(Path(args.val_from).read_text())["val"]
    grays = [read_image(root / r) for r in rels]
    is_tumor = np.array([canonical_class(Path(r).parts[-2]) != "notumor" for r in rels])
    rng = np.random.default_rng(0)
    variants = {"as is": lambda g, r: g, "inverted": inverted, "film": film,
                "inverted + film": lambda g, r: film(inverted(g, r), r)}
    rows = {}
    for name, fn in variants.items():
        preds = predictor.predict([fn(g, rng) for g in grays])
        s = tumor_scores(is_tumor, [p.tumor_probability for p in preds])
        s["accuracy_4class"] = float(np.mean([p.label == canonical_class(Path(r).parts[-2])
                                              for p, r in zip(preds, rels)]))
        rows[name] = s
        print(f"{name:<16} tumour sensitivity {s['tumor_sensitivity']:.3f}  specificity {s['tumor_specificity']:.3f}  "
              f"tumour-vs-none accuracy {s['tumor_accuracy']:.3f}  4-class accuracy {s['accuracy_4class']:.3f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": predictor.source, "n": len(rels), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
