"""Figures, computed with numpy: classification and calibration from labels and probabilities, per-group reports and
the selection score, and heat maps against tumour boxes (pointing game, heat share)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def json_ready(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, for writing as JSON. The figures here use NaN
    for "undefined" (a group without normal slices has no specificity), and JSON has no NaN: Python writes it
    anyway, and browsers, ``jq`` and the Hub's config reader then reject the whole file."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def per_class_scores(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    out = {}
    for i, name in enumerate(class_names):
        tp = cm[i, i]
        pred, true = cm[:, i].sum(), cm[i].sum()
        p = tp / pred if pred else 0.0
        r = tp / true if true else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[name] = {"precision": float(p), "recall": float(r), "f1": float(f1), "support": int(true)}
    return out


def auroc(y_true: Sequence[int], score: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney with tie correction); NaN when only one class is present."""
    y, s = np.asarray(y_true, dtype=int), np.asarray(score, dtype=np.float64)
    pos, neg = (y == 1).sum(), (y == 0).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(y_true: Sequence[int], score: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates over all thresholds."""
    y, s = np.asarray(y_true, dtype=int), np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y = y[order]
    tps = np.concatenate([[0], np.cumsum(y)])
    fps = np.concatenate([[0], np.cumsum(1 - y)])
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1)


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """ECE: bin by confidence (equal width), average |accuracy - confidence| weighted by bin size."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(corr[m].mean() - conf[m].mean())
    return float(ece)


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> dict[str, list[float]]:
    """Per-bin mean confidence, accuracy and count, for the reliability diagram."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        m = idx == b
        out["confidence"].append(float(conf[m].mean()) if m.any() else float((edges[b] + edges[b + 1]) / 2))
        out["accuracy"].append(float(corr[m].mean()) if m.any() else float("nan"))
        out["count"].append(int(m.sum()))
    return out


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Error rate among the k most confident predictions, for every k: (coverage, risk)."""
    conf, corr = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf, kind="mergesort")
    errors = np.cumsum(1 - corr[order])
    k = np.arange(1, len(conf) + 1)
    return k / len(conf), errors / k


def error_at_coverage(confidence: Sequence[float], correct: Sequence[bool], coverage: float = 0.9) -> float:
    """Error rate on the fraction ``coverage`` of images the model is most sure of."""
    cov, risk = risk_coverage(confidence, correct)
    if len(cov) == 0:
        return float("nan")
    k = max(1, int(np.ceil(coverage * len(cov))))
    return float(risk[k - 1])


def classification_report(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str],
                          no_tumor: Sequence[int]) -> dict[str, Any]:
    """All figures for a labelled set: accuracy, per-class scores, confusion, tumour sensitivity/specificity,
    AUROC of the tumour probability, ECE, error at 90% coverage."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=int)
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, len(class_names))
    conf = probs.max(1)
    correct = pred == y
    report: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()) if len(y) else float("nan"),
        "per_class": per_class_scores(cm, class_names),
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "ece": expected_calibration_error(conf, correct),
        "error_at_90_coverage": error_at_coverage(conf, correct, 0.9),
    }
    report.update(tumor_scores(np.isin(y, no_tumor, invert=True), tumor_probability(probs, no_tumor)))
    return report


def tumor_probability(probs: np.ndarray, no_tumor: Sequence[int]) -> np.ndarray:
    """P(any tumour) = 1 - P(no-tumour classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    return 1.0 - probs[:, list(no_tumor)].sum(1) if len(no_tumor) else np.ones(len(probs))


def tumor_scores(is_tumor: Sequence[bool], p_tumor: Sequence[float]) -> dict[str, float]:
    """Tumour vs no tumour at p >= 0.5: sensitivity, specificity, accuracy; AUROC of the probability."""
    t = np.asarray(is_tumor, dtype=bool)
    p = np.asarray(p_tumor, dtype=np.float64)
    called = p >= 0.5
    sens = float((called & t).sum() / t.sum()) if t.any() else float("nan")
    spec = float((~called & ~t).sum() / (~t).sum()) if (~t).any() else float("nan")
    return {"tumor_sensitivity": sens, "tumor_specificity": spec,
            "tumor_accuracy": float((called == t).mean()) if len(t) else float("nan"),
            "tumor_auroc": auroc(t.astype(int), p)}


SCORED = ("accuracy", "tumor_sensitivity", "tumor_specificity", "pointing_game")  # what group_score averages
MIN_SUPPORT = 10  # a figure from fewer images than this does not enter the selection score (too noisy)


def group_reports(y_true: Sequence[int], probs: np.ndarray, groups: Sequence[str], class_names: Sequence[str],
                  no_tumor: Sequence[int]) -> dict[str, dict[str, float]]:
    """Accuracy, tumour sensitivity and specificity (NaN where a group has no such images) per group name
    (e.g. 'source/sequence'), sorted by name, with the numbers of tumour and no-tumour images they rest on."""
    y, probs, groups = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=np.float64), np.asarray(groups)
    out = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        pred = probs[m].argmax(1)
        row = {"n": int(m.sum()), "accuracy": float((pred == y[m]).mean())}
        row.update(tumor_scores(np.isin(y[m], no_tumor, invert=True), tumor_probability(probs[m], no_tumor)))
        out[g] = {k: row[k] for k in ("n", "accuracy", "tumor_sensitivity", "tumor_specificity")}
        tumour = np.isin(y[m], no_tumor, invert=True)
        out[g].update(n_tumor=int(tumour.sum()), n_no_tumor=int((~tumour).sum()))
    return out


def group_score(row: dict[str, float], pointing: bool = True) -> float:
    """One group's figure: the mean of its accuracy, tumour sensitivity, specificity and, where the group has
    tumour masks, its heat maps' pointing game -- those defined and resting on at least MIN_SUPPORT images (a
    specificity from one normal slice would swing the score). With the pointing game in it, an epoch whose
    answers improve while its maps drift off the tumour is not chosen for the answers alone."""
    support = {"accuracy": row.get("n", MIN_SUPPORT), "tumor_sensitivity": row.get("n_tumor", MIN_SUPPORT),
               "tumor_specificity": row.get("n_no_tumor", MIN_SUPPORT), "pointing_game": row.get("n_masked", 0)}
    vals = [row[k] for k in SCORED if row.get(k) == row.get(k) and row.get(k) is not None
            and support[k] >= MIN_SUPPORT and (pointing or k != "pointing_game")]
    return float(np.mean(vals)) if vals else float("nan")


def selection_score(reports: dict[str, dict[str, float]], pointing: bool = True) -> float:
    """The model-selection score over groups: half the mean group score, half the worst one, so that no
    single source (however large) can carry it. ``pointing=False`` leaves the pointing game out (the answers
    alone: train.py --select answers)."""
    scores = [s for s in (group_score(r, pointing) for r in reports.values()) if s == s]
    return 0.5 * float(np.mean(scores)) + 0.5 * float(np.min(scores)) if scores else float("nan")


def format_group_table(reports: dict[str, dict[str, Any]], extra: Sequence[str] = ()) -> str:
    """A fixed-width table of group_reports (plus any ``extra`` keys present, e.g. pointing_game)."""
    def fmt(v):
        return "   -" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"

    keys = ["accuracy", "tumor_sensitivity", "tumor_specificity", *extra]
    short = {"pointing_game": "pointing", "heat_in_box": "heat in box", "heat_in_mask": "heat in mask",
             "not_mri_flagged": "not MRI", "heat_in_head": "heat in head"}
    heads = ["accuracy", "sensitivity", "specificity", *[short.get(k, k.replace("_", " "))[:13] for k in extra]]
    width = max([len(g) for g in reports] + [5]) + 2
    lines = [f"{'group':<{width}}{'n':>6}" + "".join(f"{h:>14}" for h in heads)]
    for g, r in reports.items():
        lines.append(f"{g:<{width}}{r['n']:>6}" + "".join(f"{fmt(r.get(k)):>14}" for k in keys))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ heat maps vs boxes

def box_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = shape
    xc, yc, bw, bh = box
    x0, x1 = int(np.floor((xc - bw / 2) * w)), int(np.ceil((xc + bw / 2) * w))
    y0, y1 = int(np.floor((yc - bh / 2) * h)), int(np.ceil((yc + bh / 2) * h))
    mask = np.zeros(shape, dtype=bool)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: does the heat map's peak fall inside the mask?"""
    return bool(mask.flat[int(np.argmax(heat))])


def heat_share(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heat map's mass inside the mask (0 for an empty map)."""
    total = float(heat.sum())
    return float(heat[mask].sum() / total) if total > 0 else 0.0
