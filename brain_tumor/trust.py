"""How far to trust an answer: calibration, abstention, and the 'does this look like a brain MRI' check, with the
validation figures they rest on (per group, the selection score, the layer4 CAM pointing game).

All three are fitted on the training run's own data (the grouped validation split, never test data)
and stored in the checkpoint:
- temperature scaling of the logits: one temperature (config.temperature) or one per class (config.class_temperature,
  vector scaling without a bias), whichever predicts held-out validation slices better (5-fold log-loss);
- an abstention threshold on calibrated confidence (config.abstain_below): the lowest threshold at
  which the validation error among accepted answers is <= 1%, keeping at least 80% of them;
- a Mahalanobis detector on the channel means of the network's layer3 (class means and a shared, shrunk
  covariance fitted on training MRIs; threshold at the 99.9th percentile of validation MRIs' distances). It is
  fitted on MRIs only, so every non-MRI image used to measure it is unseen. Models from before 2026-12-04 read
  the pooled features instead (config.ood_features "pooled"); refitting one moves it to layer3.

Refit an existing model folder (reads its split.json and the data roots it names; --data SOURCE=DIR moves one):
    python -m brain_tumor.trust model/
    python -m brain_tumor.trust model/ --data lgg-segmentation=/data/lgg
The detector is also fitted on a skull-stripped view of every training slice, so BraTS-style inputs pass.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .config import HelpFormatter
from .preprocess import normalise
from .metrics import classification_report, expected_calibration_error, group_reports, json_ready, selection_score
from .model import OOD_FEATURES, TumorClassifier

# The threshold's quantile of validation MRIs' distances. 0.999 since 2026-12-04 (0.995 before): fitted without one
# source, the detector flagged 16% of that source's slices at 0.995 and 5% at 0.999 -- a user's own scanner is such a
# source -- while the non-MRI images caught went 0.992 -> 0.983 (python -m scripts.detector_choice; docs/trust.md).
OOD_QUANTILE = 0.999
TARGET_ERROR = 0.01
MIN_COVERAGE = 0.8
DETECTOR_METHODS = {"layer3": "Mahalanobis distance on layer3's channel means, class means, shared covariance",
                    "pooled": "Mahalanobis distance on pooled ResNet features, shared covariance"}
BLANK_STD = 4.0  # an image with less spread than this (0..255) has nothing to read


# ----------------------------------------------------------------------------- logits, features, temperature

@torch.inference_mode()
def extract(model: TumorClassifier, images: torch.Tensor, batch_size: int = 64,
            transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the MRI detector's features for N x S x S uint8 prepared images (optionally transformed in [0, 1]
    first)."""
    model.eval()
    device = next(model.parameters()).device
    logits = [torch.zeros(0, len(model.config.class_names))]
    features = [torch.zeros(0, OOD_FEATURES[model.config.ood_features])]
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float().div(255).unsqueeze(1)
        if transform is not None:
            x = transform(x)
        lo, f = model.forward_with_features(normalise(x.to(device), model.config.mean, model.config.std))
        logits.append(lo.float().cpu())
        features.append(f.float().cpu())
    return torch.cat(logits), torch.cat(features)


def predict_logits(model: TumorClassifier, images: torch.Tensor, batch_size: int = 64,
                   transform=None) -> torch.Tensor:
    """Logits for N x S x S uint8 prepared images (optionally transformed in [0, 1] first)."""
    return extract(model, images, batch_size, transform)[0]


def sequence_proxy(x: torch.Tensor) -> torch.Tensor:
    """A fixed 'other sequence' look for the shortcut proxy: invert tissue brightness inside the head,
    keep the background black (roughly turns T1 contrast into T2-like contrast)."""
    inside = (x > 0.06).float()
    return inside * (1.05 - x).clamp(0, 1)


def _fit_log_scale(logits: torch.Tensor, labels: torch.Tensor, width: int) -> Optional[torch.Tensor]:
    """The log-temperatures (one, or one per class) that minimise the NLL of softmax(logits / T); None if the fit
    gives a non-finite or absurd temperature."""
    logits, labels = logits.detach().float().clone(), labels.detach().long().clone()
    log_t = torch.zeros(width, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = log_t.detach().exp()
    return t if bool(torch.isfinite(t).all()) and bool(((t > 0.05) & (t < 20)).all()) else None


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the T > 0 that minimises validation NLL of softmax(logits / T)."""
    t = _fit_log_scale(logits, labels, 1) if len(labels) else None
    return float(t.item()) if t is not None else 1.0


def fit_class_temperature(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Vector scaling without a bias: one temperature per class (softmax(logits / T_k)), fitted as the temperature
    is; [] where it cannot be fitted (no labels, or every label one class)."""
    if len(labels) == 0 or len(torch.unique(labels)) < 2:
        return []
    t = _fit_log_scale(logits, labels, logits.shape[1])
    return [float(v) for v in t] if t is not None else []


def choose_calibration(logits: torch.Tensor, labels: torch.Tensor, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """One temperature or one per class, whichever predicts held-out slices better: each is fitted on four fifths of
    the validation slices and scored (log-loss, ECE) on the fifth left out. Both are then refitted on all of them;
    ``class_temperature`` is [] when the one temperature wins (or too few slices to tell)."""
    logits, labels = logits.detach().float(), labels.detach().long()
    out: dict[str, Any] = {"temperature": fit_temperature(logits, labels), "class_temperature": [],
                           "heldout": None}
    if len(labels) < 10 * folds:
        return out
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    probs = {"temperature": torch.zeros(len(labels), logits.shape[1]),
             "class_temperature": torch.zeros(len(labels), logits.shape[1])}
    for held in order.chunk(folds):
        fit = torch.ones(len(labels), dtype=torch.bool)
        fit[held] = False
        t = fit_temperature(logits[fit], labels[fit])
        per_class = fit_class_temperature(logits[fit], labels[fit]) or [t] * logits.shape[1]
        probs["temperature"][held] = torch.softmax(logits[held] / t, 1)
        probs["class_temperature"][held] = torch.softmax(logits[held] / torch.tensor(per_class), 1)
    y = labels.numpy()
    out["heldout"] = {
        name: {"log_loss": float(-p[torch.arange(len(labels)), labels].clamp(min=1e-12).log().mean()),
               "ece": expected_calibration_error(p.max(1).values.numpy(), p.argmax(1).numpy() == y),
               "accuracy": float((p.argmax(1).numpy() == y).mean())}
        for name, p in probs.items()}
    if out["heldout"]["class_temperature"]["log_loss"] < out["heldout"]["temperature"]["log_loss"]:
        out["class_temperature"] = fit_class_temperature(logits, labels)
    return out


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, model: TumorClassifier,
                    temperature: Union[float, torch.Tensor] = 1.0) -> dict[str, Any]:
    """The classification report of softmax(logits / temperature) (a number, or one per class:
    ``model.config.logit_scale()``)."""
    probs = torch.softmax(logits.float() / temperature, 1).numpy()
    return classification_report(labels.numpy(), probs, model.config.class_names, model.config.no_tumor_indices)


# ---------------------------------------------------------------------------- validation figures

@torch.inference_mode()
def cam_pointing(model: TumorClassifier, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per masked tumour slice: (does the true class's layer4 CAM peak, upsampled, fall in the mask; share of its
    mass inside the mask). The cheap check of the heat-map objective during training."""
    model.eval()
    device = next(model.parameters()).device
    hits, shares = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float().div(255).unsqueeze(1)
        _, _, maps = model.forward_with_maps(normalise(x.to(device), model.config.mean, model.config.std))
        cam = model.class_activation(maps, labels[start:start + batch_size].to(device)).float().cpu()
        cam = F.interpolate(cam.unsqueeze(1), size=x.shape[-2:], mode="bilinear", align_corners=False).flatten(1)
        m = masks[start:start + batch_size].flatten(1).bool()
        hits.append(m.gather(1, cam.argmax(1, keepdim=True)).squeeze(1).numpy())
        shares.append(((cam * m).sum(1) / cam.sum(1).clamp(min=1e-6)).numpy())
    return (np.concatenate(hits) if hits else np.zeros(0, bool)), (np.concatenate(shares) if shares else np.zeros(0))


def validate(model: TumorClassifier, x_val: torch.Tensor, y_val: torch.Tensor, groups: list[str],
             masks: Optional[torch.Tensor] = None, temperature: Union[float, torch.Tensor] = 1.0,
             select: str = "all") -> dict[str, Any]:
    """Figures on the validation split: pooled, per group (with the layer4 CAM pointing game where masks exist),
    and the selection score over groups (without the pointing game when ``select`` is "answers")."""
    logits = predict_logits(model, x_val)
    pooled = evaluate_logits(logits, y_val, model, temperature)
    probs = torch.softmax(logits.float() / temperature, 1).numpy()  # (temperature: a number or one per class)
    by_group = group_reports(y_val.numpy(), probs, groups, model.config.class_names, model.config.no_tumor_indices)
    if masks is not None:
        has = masks.flatten(1).amax(1) > 0
        if has.any():
            idx = torch.nonzero(has).flatten()
            hits, shares = cam_pointing(model, x_val[idx], y_val[idx], masks[idx])
            g = np.asarray(groups)[idx.numpy()]
            for name in set(g.tolist()):
                by_group[name]["pointing_game"] = float(hits[g == name].mean())
                by_group[name]["heat_in_mask"] = float(shares[g == name].mean())
                by_group[name]["n_masked"] = int((g == name).sum())
    return {"loss": F.cross_entropy(logits, y_val).item(), "pooled": pooled, "groups": by_group,
            "score": selection_score(by_group, pointing=select != "answers")}


def record_validation(model: TumorClassifier, x_val: torch.Tensor, y_val: torch.Tensor, groups: list[str],
                      masks: Optional[torch.Tensor], select: str) -> dict[str, Any]:
    """validate() with the model's own calibration, kept in config.metrics as the model card shows it: the figures per
    group, the selection score and the inverted-contrast proxy. Run after every (re)calibration: a temperature per
    class can change answers. Returns validate()'s figures."""
    scale = model.config.logit_scale()
    final = validate(model, x_val, y_val, groups, masks, scale, select=select)
    metrics = model.config.metrics
    metrics["validation_groups"], metrics["selection_score"] = final["groups"], final["score"]
    proxy = evaluate_logits(predict_logits(model, x_val, transform=sequence_proxy), y_val, model, scale)
    metrics["inverted_contrast_proxy"] = {k: proxy[k] for k in ("accuracy", "tumor_sensitivity", "tumor_specificity")}
    return final


# ---------------------------------------------------------------------------- the MRI detector, abstention

def fit_ood(features: torch.Tensor, labels: torch.Tensor, n_classes: int, shrinkage: float = 0.1
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means and the precision of the shared within-class covariance (shrunk towards its diagonal mean)."""
    f = features.double()
    means = torch.stack([f[labels == k].mean(0) if (labels == k).any() else f.mean(0) for k in range(n_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / max(len(f) - 1, 1)
    target = torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean()
    cov = (1 - shrinkage) * cov + shrinkage * target
    return means.float(), torch.linalg.inv(cov).float()


def choose_abstain_threshold(confidence: np.ndarray, correct: np.ndarray, target_error: float = TARGET_ERROR,
                             min_coverage: float = MIN_COVERAGE) -> float:
    """Lowest confidence threshold whose accepted answers have error <= target (coverage kept >= min_coverage)."""
    order = np.argsort(-confidence)
    conf, ok = confidence[order], correct[order].astype(float)
    errors = np.cumsum(1 - ok) / np.arange(1, len(ok) + 1)
    floor_k = max(1, int(np.ceil(min_coverage * len(ok))))
    good = [k for k in range(floor_k, len(ok) + 1) if errors[k - 1] <= target_error]
    k = max(good) if good else floor_k
    return float(conf[k - 1]) if k < len(ok) else 0.0


def looks_blank(gray: np.ndarray) -> bool:
    return float(gray.std()) < BLANK_STD


def non_mri_images(seed: int = 0, size: int = 256) -> list[tuple[str, np.ndarray]]:
    """Images that are not brain MRIs, from what Python packages ship plus synthetic ones (grayscale uint8).

    Photos and drawings (scikit-image's and matplotlib's samples, if installed), CT and ultrasound from
    pydicom's test files, text, screenshots-like layouts, blank and noise images, gradients, patterns.
    """
    from .decode import ImageReadError, read_image

    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []

    def gray(img) -> np.ndarray:
        img = np.asarray(img)
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
        if img.dtype != np.uint8:
            img = cv2.normalize(img.astype(np.float64), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        return img

    try:
        from skimage import data as sk
        for name in ("astronaut", "camera", "coins", "chelsea", "coffee", "rocket", "horse", "text", "page",
                     "moon", "hubble_deep_field", "immunohistochemistry", "retina", "clock", "grass", "gravel",
                     "logo", "microaneurysms", "cat", "colorwheel", "binary_blobs", "cell", "checkerboard",
                     "brick"):  # all shipped with the package (no download)
            try:
                img = gray(getattr(sk, name)())
            except Exception:
                continue  # some samples need a download: skip them
            out.append((f"skimage:{name}", img))
            h, w = img.shape[:2]
            if min(h, w) >= 128:  # two random crops as further, different-looking photos
                for j in range(2):
                    s = int(rng.integers(min(h, w) // 2, min(h, w)))
                    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
                    out.append((f"skimage:{name}:crop{j}", img[y:y + s, x:x + s]))
    except ImportError:
        pass
    def packaged(package: str, folder, names: tuple[str, ...]) -> None:
        """Files a package ships, read through our decoder; a missing package or file is skipped."""
        try:
            base = folder(importlib.import_module(package))
        except ImportError:
            return
        for name in names:
            try:
                out.append((f"{package}:{name}", read_image(base / name)))
            except (ImageReadError, OSError):
                continue

    packaged("matplotlib", lambda m: Path(m.get_data_path()) / "sample_data",
             ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png"))
    packaged("pydicom", lambda m: Path(m.__file__).parent / "data" / "test_files",
             ("CT_small.dcm", "liver_1frame.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm",
              "examples_palette.dcm", "SC_rgb_small_odd.dcm"))
    # synthetic
    for i in range(6):
        out.append((f"noise:uniform{i}", rng.integers(0, 256, (size, size)).astype(np.uint8)))
        out.append((f"noise:smooth{i}", cv2.GaussianBlur(rng.integers(0, 256, (size, size)).astype(np.uint8),
                                                         (0, 0), 1 + 3 * i)))
    for v in (0, 128, 255):
        out.append((f"blank:{v}", np.full((size, size), v, np.uint8)))
    yy, xx = np.mgrid[0:size, 0:size] / size
    out.append(("gradient:linear", (xx * 255).astype(np.uint8)))
    out.append(("gradient:radial", (255 * (1 - np.clip(np.hypot(xx - 0.5, yy - 0.5) * 2, 0, 1))).astype(np.uint8)))
    out.append(("pattern:stripes", ((np.sin(xx * 40) > 0) * 255).astype(np.uint8)))
    out.append(("pattern:checker", (((xx * 8).astype(int) + (yy * 8).astype(int)) % 2 * 255).astype(np.uint8)))
    words = ["Patient report", "Lorem ipsum dolor sit amet", "RESULTS: normal", "Invoice 2026-11",
             "The quick brown fox", "ERROR 404", "Brain MRI", "tumour?"]
    for i in range(8):
        img = np.full((size, size), 255 if i % 2 else 20, np.uint8)
        for line in range(int(rng.integers(3, 9))):
            cv2.putText(img, words[(i + line) % len(words)], (8, 30 + 28 * line), cv2.FONT_HERSHEY_SIMPLEX,
                        float(rng.uniform(0.5, 0.9)), 0 if i % 2 else 230, 2)
        out.append((f"text:{i}", img))
    for i in range(6):  # screenshot-like: window chrome, panels, buttons, text
        img = np.full((size, int(size * 1.6)), int(rng.integers(200, 250)), np.uint8)
        cv2.rectangle(img, (0, 0), (img.shape[1], 24), int(rng.integers(40, 90)), -1)
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = int(rng.integers(0, img.shape[1] - 60)), int(rng.integers(30, size - 40))
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(30, 150)), y0 + int(rng.integers(15, 60))),
                          int(rng.integers(0, 255)), -1)
        cv2.putText(img, "File  Edit  View", (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 1)
        out.append((f"screenshot:{i}", img))
    for i in range(8):  # drawings: random shapes and lines on a plain background
        img = np.full((size, size), 255 if i % 2 else 0, np.uint8)
        for _ in range(int(rng.integers(3, 10))):
            colour = int(rng.integers(0, 256))
            p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
            kind = int(rng.integers(0, 3))
            if kind == 0:
                cv2.circle(img, tuple(int(v) for v in p), int(rng.integers(5, size // 3)), colour, int(rng.integers(-1, 4)))
            elif kind == 1:
                cv2.rectangle(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, int(rng.integers(-1, 4)))
            else:
                cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), colour, int(rng.integers(1, 6)))
        out.append((f"drawing:{i}", img))
    return out


def calibrate(model, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
              measure_negatives: bool = True, extra_view=None, val_groups: Optional[list[str]] = None
              ) -> dict[str, Any]:
    """Fit temperature, abstention threshold and the MRI detector on a model in place; return the figures.

    ``extra_view`` (a transform of N x 1 x S x S slices in [0, 1], e.g. skull stripping) adds that view of every
    training and validation slice to the detector's fit and threshold, so inputs of that kind pass as MRIs.
    ``val_groups`` (source/sequence per validation slice) gives the share flagged per group."""
    from .preprocess import prepare
    from .metrics import error_at_coverage

    _, f_train = extract(model, x_train)
    val_logits, f_val = extract(model, x_val)
    f_fit, y_fit, f_thr = f_train, y_train, f_val
    if extra_view is not None:
        f_fit = torch.cat([f_train, extract(model, x_train, transform=extra_view)[1]])
        y_fit = torch.cat([y_train, y_train])
        f_view = extract(model, x_val, transform=extra_view)[1]
        f_thr = torch.cat([f_val, f_view])
    k = len(model.config.class_names)
    means, precision = fit_ood(f_fit, y_fit, k)
    device = model.ood_mean.device
    model.ood_mean, model.ood_precision = means.to(device), precision.to(device)  # (a refit may change the width)
    d_thr = model.ood_distance(f_thr).numpy()
    threshold = float(np.quantile(d_thr, OOD_QUANTILE))
    model.config.ood_threshold = threshold
    d_val = d_thr[:len(f_val)]

    choice = choose_calibration(val_logits, y_val)
    model.config.temperature, model.config.class_temperature = choice["temperature"], choice["class_temperature"]
    probs = torch.softmax(val_logits / model.config.logit_scale(), 1).numpy()
    conf, correct = probs.max(1), probs.argmax(1) == y_val.numpy()
    model.config.abstain_below = choose_abstain_threshold(conf, correct)
    raw = torch.softmax(val_logits, 1).numpy()
    figures: dict[str, Any] = {
        "temperature": model.config.temperature,
        "class_temperature": model.config.class_temperature,
        "heldout": choice["heldout"],  # each way's figures on slices its fit left out (5 folds)
        # (each scored by its own answer: a temperature per class can change it)
        "ece_uncalibrated": expected_calibration_error(raw.max(1), raw.argmax(1) == y_val.numpy()),
        "ece": expected_calibration_error(conf, correct),
        "error_at_90_coverage": error_at_coverage(conf, correct, 0.9),
        "abstain_below": model.config.abstain_below,
        "abstain_rate": float((conf < model.config.abstain_below).mean()),
        "error_when_answering": float(1 - correct[conf >= model.config.abstain_below].mean())
        if (conf >= model.config.abstain_below).any() else None,
        "mri_detector": {"method": DETECTOR_METHODS[model.config.ood_features],
                         "threshold": threshold, "quantile_of_validation_mris": OOD_QUANTILE,
                         "validation_mris_flagged": float((d_val > threshold).mean())},
    }
    if extra_view is not None:
        figures["mri_detector"]["validation_view_flagged"] = float((d_thr[len(f_val):] > threshold).mean())
        figures["mri_detector"]["view"] = getattr(extra_view, "__doc__", "") or "extra view"
    if val_groups is not None:
        g = np.asarray(val_groups)
        figures["mri_detector"]["validation_flagged_by_group"] = {
            name: float((d_val[g == name] > threshold).mean()) for name in sorted(set(g.tolist()))}
    if measure_negatives:
        negatives = non_mri_images()
        imgs = np.stack([prepare(g, model.config.img_size, model.config.preprocessing)[0] for _, g in negatives])
        _, f_neg = extract(model, torch.from_numpy(imgs))
        d_neg = model.ood_distance(f_neg).numpy()
        blank = np.array([looks_blank(g) for _, g in negatives])
        flagged = (d_neg > threshold) | blank
        kinds = sorted({n.split(":")[0] for n, _ in negatives})
        figures["mri_detector"].update({
            "non_mri_images": len(negatives), "non_mri_flagged": float(flagged.mean()),
            "by_kind": {kd: float(np.mean([fl for (n, _), fl in zip(negatives, flagged) if n.split(":")[0] == kd]))
                        for kd in kinds},
            "missed": [n for (n, _), fl in zip(negatives, flagged) if not fl],
        })
    return figures


def record_calibration(model, x_train, y_train, x_val, y_val, extra_view=None, val_groups=None) -> None:
    """calibrate(), then store its figures and the calibrated validation report in model.config.metrics."""

    figures = calibrate(model, x_train, y_train, x_val, y_val, extra_view=extra_view, val_groups=val_groups)
    val_logits, _ = extract(model, x_val)
    metrics = model.config.metrics
    metrics["validation"] = evaluate_logits(val_logits, y_val, model, model.config.logit_scale())
    metrics["ece_uncalibrated"] = figures["ece_uncalibrated"]
    metrics["calibration"] = {k: v for k, v in figures.items() if k != "mri_detector"}
    metrics["mri_detector"] = figures["mri_detector"]


def main(argv: Optional[list[str]] = None) -> int:
    from . import datasets, splits
    from .augment import strip_view
    from .hub import write_model_card
    from .model import load_model, save_model

    parser = argparse.ArgumentParser(prog="python -m brain_tumor.trust", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("model", help="model folder written by train.py (with split.json)")
    parser.add_argument("--data", action="append", default=[], metavar="[SOURCE=]DIR",
                        help="where a source of split.json lies, if not where it was trained (repeatable); "
                             "a plain DIR serves a split.json of the older single-root format")
    args = parser.parse_args(argv)
    folder = Path(args.model)
    try:
        info = json.loads((folder / "split.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: cannot read {folder / 'split.json'}: {e}", file=sys.stderr)
        return 2
    model = load_model(str(folder))
    model.config.ood_features = "layer3"  # (an older model's detector read the pooled features: refit, it moves)
    classes = model.config.class_names
    try:
        if "roots" in info:
            overrides = dict(d.split("=", 1) for d in args.data if "=" in d)
            col, is_val = splits.read_split(str(folder), overrides)
        else:  # older single-root split.json: paths inside the root given by --data
            if len(args.data) != 1:
                raise ValueError("this split.json names no roots: give the folder it was made from with --data DIR")
            col, _ = datasets.read_root(args.data[0])
            sides = splits.previous_sides(col, folder / "split.json")
            col, is_val = col.subset(sides >= 0), sides[sides >= 0] == 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, _, masks, errors = datasets.load(col, model.config.img_size, settings=model.config.preprocessing)
    ok = np.array([e is None for e in errors]) & np.array([c in classes for c in col.classes])
    labels = torch.tensor([classes.index(c) if c in classes else -1 for c in col.classes])
    x, keep_val = torch.from_numpy(images), torch.from_numpy(is_val & ok)
    keep_train = torch.from_numpy(~is_val & ok)
    groups = [g for g, k in zip(col.groups(), keep_val.tolist()) if k]
    torch.manual_seed(0)  # (the skull-stripped view's random strip widths: the same refit every time)
    record_calibration(model, x[keep_train], labels[keep_train], x[keep_val], labels[keep_val],
                       extra_view=strip_view, val_groups=groups)
    # the figures per group and the selection score, as the new calibration answers (train.py's own, refreshed)
    select = model.config.training.get("config", {}).get("select", "all")
    record_validation(model, x[keep_val], labels[keep_val], groups, torch.from_numpy(masks)[keep_val], select)
    save_model(model, folder)
    write_model_card(folder, model.config)
    print(json.dumps(json_ready({k: model.config.metrics[k] for k in ("calibration", "mri_detector", "selection_score")}),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
