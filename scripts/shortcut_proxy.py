"""Does the model read tumours or sequences and film artefacts? Tumour sensitivity/specificity on the grouped
validation split, as it is and re-rendered the way web-collected slices look (a proxy of our own making for
the original project's 253-image yes/no set, which we do not have):

- inverted: tissue brightness inverted inside the head (T1-like contrast turned T2-like);
- film: a photographed film -- white frame, gamma, blur, a letter and an arrow, odd size (150-1900 px);
- both.

    python -m scripts.shortcut_proxy --model model            # the validation images of model/split.json
    python -m scripts.shortcut_proxy --model model --data DIR # a plain folder of class folders instead
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from brain_tumor.decode import read_image
from brain_tumor.inference import Predictor
from brain_tumor.metrics import tumor_scores
from brain_tumor.preprocess import head_mask
from scripts._images import SPLIT_HELP, labelled_images


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
    ap.add_argument("--split", metavar="MODEL|SPLIT_JSON", help=SPLIT_HELP + " (default: the --model folder's)")
    ap.add_argument("--data", metavar="DIR", help="a plain folder of class folders to score instead")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    predictor = Predictor(args.model)
    paths, y = labelled_images(predictor, args.split, args.data)
    classes = [predictor.classes[k] for k in y]
    grays = [read_image(p) for p in paths]
    is_tumor = np.array([c != "notumor" for c in classes])
    rng = np.random.default_rng(0)
    variants = {"as is": lambda g, r: g, "inverted": inverted, "film": film,
                "inverted + film": lambda g, r: film(inverted(g, r), r)}
    rows = {}
    for name, fn in variants.items():
        preds = predictor.predict([fn(g, rng) for g in grays])
        s = tumor_scores(is_tumor, [p.tumor_probability for p in preds])
        s["accuracy_4class"] = float(np.mean([p.label == c for p, c in zip(preds, classes)]))
        rows[name] = s
        print(f"{name:<16} tumour sensitivity {s['tumor_sensitivity']:.3f}  specificity {s['tumor_specificity']:.3f}  "
              f"tumour-vs-none accuracy {s['tumor_accuracy']:.3f}  4-class accuracy {s['accuracy_4class']:.3f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": predictor.source, "n": len(paths), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
