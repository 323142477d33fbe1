"""The uncertainty scores compared: which one flags the model's wrong answers best.

AUROC of each score for 'this answer is wrong' on the grouped validation split: 1 - confidence, entropy (what
the package reports), MC dropout on the head (mutual information over 30 dropout masks on the pooled features),
and flip test-time augmentation (disagreement between the slice and its mirror image).

    python -m scripts.uncertainty --model model                   # the validation images of model/split.json
    python -m scripts.uncertainty --model model --data DIR        # a plain folder of class folders instead
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from brain_tumor.decode import read_image
from brain_tumor.metrics import auroc, json_ready
from brain_tumor.preprocess import to_tensor
from scripts._images import scored_images


def main(argv=None) -> int:
    args, predictor, paths, y, _ = scored_images(__doc__.split("\n")[0], argv)
    prepared = np.stack([predictor.prepare(read_image(p))[0] for p in paths])
    model, temperature = predictor.model, predictor.config.logit_scale()
    logits, feats, flipped = [], [], []
    with torch.inference_mode():
        for start in range(0, len(prepared), 64):
            x = to_tensor(prepared[start:start + 64], predictor.config.mean, predictor.config.std)
            lo, f, _ = model(x, with_maps=True)  # the pooled features, the head's input
            logits.append(lo)
            feats.append(f)
            flipped.append(model(torch.flip(x, dims=[3])))
        probs = torch.softmax(torch.cat(logits) / temperature, 1)
        probs_flip = torch.softmax(torch.cat(flipped) / temperature, 1)
        f = torch.cat(feats)
        gen = torch.Generator().manual_seed(0)
        linear = model.net.fc[1]
        p_drop = model.config.dropout
        samples = torch.stack([torch.softmax(linear(f * (torch.rand(f.shape, generator=gen) > p_drop) / (1 - p_drop))
                                             / temperature, 1) for _ in range(30)])
    wrong = (probs.argmax(1).numpy() != y).astype(int)

    def entropy(p):
        return -(p * p.clamp_min(1e-12).log()).sum(1)

    mean_mc = samples.mean(0)
    scores = {
        "1 - confidence": (1 - probs.max(1).values).numpy(),
        "entropy (reported)": entropy(probs).numpy(),
        "MC dropout, mutual information":
            (entropy(mean_mc) - entropy(samples.flatten(0, 1)).view(30, -1).mean(0)).numpy(),
        "MC dropout, entropy of the mean": entropy(mean_mc).numpy(),
        "flip TTA, disagreement": 0.5 * (probs - probs_flip).abs().sum(1).numpy(),
    }
    rows = {name: auroc(wrong, s) for name, s in scores.items()}
    print(f"{len(y)} images, {wrong.sum()} wrong; AUROC of each score for flagging a wrong answer:")
    for name, value in rows.items():
        print(f"  {name:<34} {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(json_ready({"model": predictor.source, "n": int(len(y)), "wrong": int(wrong.sum()),
                                                          "auroc_for_errors": rows}), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
