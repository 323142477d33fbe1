"""Where a class's heat map sits: the offset a network's maps carry, fitted without labels.

A network trained with left-right flips gives a slice and its mirror image the same answer, but nothing makes
its last stage put the evidence where the tumour is: a unit may fire some pixels to one side of what it
detects. Then every map of that class sits that far beside the tumour, always on the same side. Release 5's
pituitary maps sat 20 px of 192 to the right (more than a layer4 cell), so they missed all 20 pituitary boxes
of the figshare sample although they were centred on the sella's level.

Sideways, the mirror image shows this offset without a label. The map of a mirrored slice, mirrored back, sits
as far to the other side. So half the horizontal shift that best aligns the two maps is the offset.

Up and down no symmetry of a brain slice helps (an upside-down slice is not one the network learned to read).
There the served map is registered onto a finer map of the same class from the same pass: Grad-CAM++ at layer3
(``REFERENCE``), whose units see a quarter of the area and whose own sideways offsets are a few pixels at most.
The vertical offset is the vertical part of the shift that best aligns the two. (Sideways, the same registration
plus layer3's own mirror offset agreed with layer4's mirror offset within 1.5 px for release 5's tumour classes.)

Both are fitted on training slices, for each class on the slices the model calls that class (the maps a user is
shown), for the served layer and each one-pass method. The map is then drawn moved back by them
(``config.cam_shift``: class -> [dx, dy]; applied in ``Predictor.predict``). Where a class's slices disagree on
an axis (interquartile range wider than one cell of the layer), that axis gets no shift: the offset is not a
property of the network there.

    python -m brain_tumor.cam_offset model/        # fit on the model's training split; writes config.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import HelpFormatter
from .explain import FAST_METHODS, OnePass, layer_stride, upsample
from .metrics import json_ready
from .model import cam_shift_key
from .preprocess import normalise

REFERENCE = ("layer3", "gradcam++")  # the finer map the served one is registered onto, for the vertical offset
MIN_SLICES = 10  # a class called on fewer training slices keeps no shift
MAX_SLICES = 2000  # training slices read by the fit (a seeded sample of them)


def horizontal_lag(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """For N pairs of H x W maps, the whole-pixel shift l (|l| <= max_lag) with a(x) best matching b(x - l):
    the lag of the largest cross-correlation along x, summed over rows."""
    n, _, w = a.shape
    size = 2 * w
    fa = np.fft.rfft(a, size, axis=-1)
    fb = np.fft.rfft(b, size, axis=-1)
    corr = np.fft.irfft((fa * np.conj(fb)).sum(1), size, axis=-1)  # corr[l] = sum_x a(x) b(x - l), l mod size
    lags = np.arange(-max_lag, max_lag + 1)
    return lags[np.argmax(corr[:, lags % size], axis=1)]


def lag_2d(a: np.ndarray, b: np.ndarray, max_lag: int) -> np.ndarray:
    """For N pairs of H x W maps, the whole-pixel shift (dy, dx) (each within max_lag) with a(y, x) best matching
    b(y - dy, x - dx): N x 2."""
    n, h, w = a.shape
    shape = (2 * h, 2 * w)
    corr = np.fft.irfft2(np.fft.rfft2(a, shape) * np.conj(np.fft.rfft2(b, shape)), shape)
    lags = np.arange(-max_lag, max_lag + 1)
    sub = corr[:, (lags % shape[0])[:, None], (lags % shape[1])[None, :]].reshape(n, -1)
    iy, ix = np.unravel_index(np.argmax(sub, axis=1), (len(lags), len(lags)))
    return np.stack([lags[iy], lags[ix]], axis=1)


def measure(maps_of: Callable, x: torch.Tensor, max_lag: int, reference_of: Optional[Callable] = None,
            batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each slice's class and, for each of its maps, the map's offset (dx, dy) in input pixels (positive: right of
    / below the evidence): dx from the mirror image, dy from the registration onto ``reference_of``'s map (0
    without one). ``maps_of(x, classes=None)`` gives (classes, {name: N x S x S maps}) of a normalised batch: the
    predicted classes when ``classes`` is None, else those classes' maps; ``reference_of`` the same, with one map,
    computed once a batch for every name."""
    classes, offsets = [], {}
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        cls, a = maps_of(xb, None)
        _, b = maps_of(xb.flip(-1), cls)
        ref = None if reference_of is None else next(iter(reference_of(xb, cls)[1].values()))
        for name, m in a.items():
            dx = horizontal_lag(m, b[name][:, :, ::-1], max_lag) / 2.0
            dy = np.zeros_like(dx) if ref is None else lag_2d(m, ref, max_lag)[:, 0].astype(float)
            offsets.setdefault(name, []).append(np.stack([dx, dy], axis=1))
        classes.append(np.asarray(cls))
    return np.concatenate(classes), {name: np.concatenate(o) for name, o in offsets.items()}


def summarise(classes: np.ndarray, offsets: np.ndarray, class_names: Sequence[str], cell: float
              ) -> tuple[dict[str, list[float]], dict[str, dict]]:
    """Per class, for each axis of the N x 2 (dx, dy) ``offsets``: the shift to apply (the median, or 0 where the
    slices disagree by more than ``cell`` or are fewer than MIN_SLICES) and what it rests on."""
    shift, record = {}, {}
    for k, name in enumerate(class_names):
        o = offsets[classes == k]
        record[name] = {"slices": int(len(o))}
        if len(o) < MIN_SLICES:
            shift[name] = [0.0, 0.0]
            record[name].update(applied=[0.0, 0.0], why=f"fewer than {MIN_SLICES} slices")
            continue
        shift[name] = []
        for axis, label in enumerate("xy"):
            q1, med, q3 = np.percentile(o[:, axis], [25, 50, 75])
            consistent = q3 - q1 <= cell
            shift[name].append(float(med) if consistent else 0.0)
            record[name][label] = {"median": float(med), "iqr": [float(q1), float(q3)], "applied": shift[name][-1]}
            if not consistent:
                record[name][label]["why"] = f"interquartile range {q3 - q1:.1f} px over one cell ({cell:g} px)"
        record[name]["applied"] = shift[name]
    return shift, record


def model_maps(model, methods: Sequence[str], layer: Optional[str] = None):
    """``maps_of`` for ``measure``: every method's map from one pass of a model at its served layer (or ``layer``),
    at its power, unshifted."""
    cfg = model.config
    layer = layer or cfg.cam_layer

    def maps_of(xb: torch.Tensor, classes=None):
        run = OnePass(model, layer)
        logits = run(xb)
        cls = logits.argmax(1).cpu().numpy() if classes is None else np.asarray(classes)
        maps = {m: upsample(run.cams(cls, m), cfg.img_size) for m in methods}
        return cls, {m: v ** cfg.cam_power for m, v in maps.items()} if cfg.cam_power != 1.0 else maps
    return maps_of


def fit(model, images: torch.Tensor, methods: Sequence[str] = FAST_METHODS) -> dict[str, dict]:
    """Fit ``config.cam_shift`` for the served layer and each one-pass method on N x S x S uint8 prepared training
    slices; store it, and what it rests on in ``config.metrics["cam_offset"]``; return the latter."""
    cfg = model.config
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    cell = float(layer_stride(cfg.cam_layer, cfg.output_stride))
    shifts, records = dict(cfg.cam_shift), {}
    maps_of, reference = model_maps(model, methods), model_maps(model, [REFERENCE[1]], layer=REFERENCE[0])
    parts = [measure(maps_of, normalise(chunk.float().div(255).unsqueeze(1).to(device), cfg.mean, cfg.std),
                     cfg.img_size // 2, reference)
             for chunk in images.split(256)]  # (normalised a chunk at a time: 2,000 slices would take 0.9 GB)
    classes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, int)
    for method in methods:
        offsets = np.concatenate([p[1][method] for p in parts]) if parts else np.zeros((0, 2))
        shift, record = summarise(classes, offsets, cfg.class_names, cell)
        shifts[cam_shift_key(cfg.cam_layer, method)] = shift
        records[cam_shift_key(cfg.cam_layer, method)] = record
    cfg.cam_shift = shifts
    cfg.metrics["cam_offset"] = {
        "how": "offset [dx, dy] of each class's map, median over the training slices called that class: dx half "
               "the shift that aligns it with its mirrored slice's map mirrored back, dy the vertical shift that "
               f"aligns it with the {REFERENCE[1]} map at {REFERENCE[0]} (brain_tumor.cam_offset)",
        "slices": int(len(images)), "by_target": records}
    return records


def main(argv: Optional[list[str]] = None) -> int:
    from . import datasets, splits
    from .hub import write_model_card
    from .model import load_model, save_model

    parser = argparse.ArgumentParser(prog="python -m brain_tumor.cam_offset", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("model", help="model folder written by train.py (with split.json)")
    parser.add_argument("--data", action="append", default=[], metavar="SOURCE=DIR",
                        help="where a source of split.json lies, if not where it was trained (repeatable)")
    parser.add_argument("--max-slices", type=int, default=MAX_SLICES, help="training slices read (seeded sample)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.model)
    try:
        model = load_model(str(folder))
        col, is_val = splits.read_split(str(folder), dict(d.split("=", 1) for d in args.data if "=" in d))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"error: cannot read {folder}'s model or split.json: {e}", file=sys.stderr)
        return 2
    train = np.flatnonzero(~is_val)
    if not len(train):
        print(f"error: {folder}/split.json lists no training slices that exist here", file=sys.stderr)
        return 2
    pick = np.sort(np.random.default_rng(0).choice(train, min(args.max_slices, len(train)), replace=False))
    images, _, _, errors = datasets.load(col.take(list(pick)), model.config.img_size,
                                         settings=model.config.preprocessing)
    ok = np.array([e is None for e in errors])
    records = fit(model, torch.from_numpy(images[ok]))
    save_model(model, folder)
    write_model_card(folder, model.config)
    print(json.dumps(json_ready({"cam_shift": model.config.cam_shift, "by_target": records}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
