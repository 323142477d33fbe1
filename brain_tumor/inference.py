"""Predictor: the model loaded once, and predictions with heat maps for slices, batches and files.

The CLI (predict.py, evaluate.py) and the app all go through ``Predictor``, so they share one
preprocessing path (preprocess.prepare) and one heat-map path (explain.OnePass: autograd from the same forward
pass). Model work is serialised by a lock: heat-map hooks live on the shared network, so two requests must never interleave there.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .config import native_bf16, use_bf16
from .decode import ImageReadError, read_image
from .preprocess import apply_crop, Crop, prepare, to_tensor, uncrop
from .explain import CLASS_AGNOSTIC, FAST_METHODS, OnePass, check_method, library_maps, translate, upsample
from .model import TumorClassifier, load_model
from .trust import looks_blank
from .volume import is_volume
from .verdict import NEEDS_REVIEW, NOT_MRI, Verdict, decide  # noqa: F401  (NEEDS_REVIEW, NOT_MRI: public names)

BF16_ANSWER_HELP = ("answer from a bfloat16 forward pass where the CPU computes bf16 natively (about 1.8x faster over "
                    "a folder on the build machine, the same answer on all but one of the 1,466 validation slices; "
                    "default: fp32)")


@dataclass
class Prediction:
    """One slice's answer. ``heatmap`` lies on ``image`` (the prepared square the model saw)."""

    label: str
    probabilities: dict[str, float]
    tumor_probability: float
    confidence: float
    needs_review: bool
    image: np.ndarray  # S x S uint8, the model's view
    crop: Crop  # where ``image`` came from in the original
    heatmap: Optional[np.ndarray] = None  # S x S float32 in [0, 1]
    heatmap_class: Optional[str] = None
    method: Optional[str] = None
    uncertainty: float = 0.0  # normalised entropy of the calibrated probabilities, 0 (sure) .. 1 (no idea)
    looks_like_mri: bool = True  # False: blank, or far from every training MRI in feature space
    extra: dict[str, Any] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)  # class -> words shown (the model's config)
    abstain_below: float = 0.0  # the model's threshold behind ``needs_review``
    logits: Optional[np.ndarray] = field(default=None, repr=False)  # the network's raw scores, before calibration

    def display(self, name: str) -> str:
        return self.display_names.get(name, name)

    @property
    def decision(self) -> Verdict:
        """The verdict (verdict.decide): not assessed, needs review, or answered, with its words."""
        return decide(self.label, self.confidence, self.looks_like_mri, self.needs_review, self.abstain_below,
                      self.display)

    @property
    def verdict(self) -> str:
        """The answer in words: a warning when the input does not look like a brain MRI, 'uncertain — needs
        review' below the model's confidence threshold, else the class's display name."""
        return self.decision.headline

    def heatmap_on_original(self) -> np.ndarray:
        """The heat map on the input's own H x W grid (zero outside the head crop)."""
        if self.heatmap is None:
            raise ValueError("this prediction was made without a heat map")
        return uncrop(self.heatmap, self.crop)

    def to_json(self) -> dict[str, Any]:
        out = {"label": self.label, "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
               "tumor_probability": round(self.tumor_probability, 6), "confidence": round(self.confidence, 6),
               "uncertainty": round(self.uncertainty, 6),
               "needs_review": self.decision.needs_review,  # a withheld answer always needs review
               "looks_like_mri": self.looks_like_mri, "status": self.decision.status,
               "verdict": self.decision.headline}
        out.update(self.extra)
        return out


def most_suspicious(preds: list[Prediction]) -> int:
    """The slice with the highest tumour probability among those that look like a brain MRI (all, if none do)."""
    candidates = [i for i, p in enumerate(preds) if p.looks_like_mri] or list(range(len(preds)))
    return max(candidates, key=lambda i: preds[i].tumor_probability)


class Predictor:
    """A loaded model plus everything needed to answer for a slice.

    >>> p = Predictor()                                   # bundled model
    >>> [pred] = p.predict_files(["examples/glioma_1.jpg"], heatmaps=True)
    >>> pred.label, pred.tumor_probability, pred.heatmap.shape
    """

    KEEP_PASSES = 8  # single-slice forward passes kept for other classes' and methods' maps (_one_pass)

    def __init__(self, model: Union[TumorClassifier, str, None] = None, threads: Optional[int] = None,
                 precision: str = "auto", bf16_answer: bool = False, device: str = "cpu"):
        """``precision``: ``auto``, ``fp32`` or ``bf16``, checked and kept (the heat maps' gradients are autograd's,
        in the forward pass's precision).

        ``bf16_answer``: run the answer's forward pass under bfloat16 autocast, where the CPU computes bf16
        natively (ignored elsewhere, where it would be slower). On the build machine the forward pass is about
        1.3x faster at batch 1 and 1.8x at batch 32 (release 2; more with release 3, see docs/performance.md), with the
        same answer for all but one of the 1,466 grouped validation slices (release 3) and calibrated probabilities
        within 0.01 of fp32's (benchmarks/inference_options.py).
        Off by default: the published figures, calibration and thresholds are fp32's.

        ``device``: ``cpu`` (default), ``cuda`` or ``auto`` (CUDA where torch sees a GPU). On a GPU the answer runs
        there in fp32 (the published figures' precision), heat maps too."""
        use_bf16(precision)  # validates
        self.precision = precision
        self.bf16_answer = bool(bf16_answer) and native_bf16()
        if threads:
            torch.set_num_threads(threads)
        self.model = model if isinstance(model, TumorClassifier) else load_model(model)
        self.model.eval().requires_grad_(False)
        from .distributed import resolve_device

        self.device = resolve_device(device)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if self.device.type != "cpu":
            self.bf16_answer = False
        self.config = self.model.config
        self.classes = list(self.config.class_names)
        self._no_tumor = self.config.no_tumor_indices
        self.lock = threading.RLock()
        self._passes: "OrderedDict[tuple, OnePass]" = OrderedDict()  # recent single-slice passes (_one_pass)

    @property
    def source(self) -> str:
        return getattr(self.model, "source", "in-memory model")

    def prepare(self, gray: np.ndarray) -> tuple[np.ndarray, Crop]:
        return prepare(gray, self.config.img_size, self.config.preprocessing)

    def view(self, gray: np.ndarray, crop: Crop, size: int = 512) -> np.ndarray:
        """The model's view of the slice at display resolution (same crop, larger)."""
        return apply_crop(gray, crop, size)

    def _one_pass(self, x: torch.Tensor, image: Optional[np.ndarray], reuse: bool) -> OnePass:
        """The forward pass (with what its heat maps need) for batch ``x``. A single slice's pass is kept for the
        next few requests, and with ``reuse`` (another class's map or another method for a slice just answered:
        the app's menus) it serves them without a forward pass, only the backward one. The default request always
        runs its own pass. Call with the lock held."""
        key = None
        if image is not None:
            key = (hashlib.blake2b(image.tobytes(), digest_size=16).digest(), image.shape, self.config.cam_layer,
                   self.precision)
            run = self._passes.get(key) if reuse else None
            if run is not None:
                self._passes.move_to_end(key)
                return run
        run = OnePass(self.model, self.config.cam_layer, precision=self.precision)
        with self._autocast():
            run(x)
        if key is not None:
            self._passes[key] = run
            while len(self._passes) > self.KEEP_PASSES:
                self._passes.popitem(last=False)
        return run

    def _autocast(self):
        """bfloat16 autocast for the answer's forward pass when ``bf16_answer`` asked for it, else a no-op."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16_answer and self.device.type == "cpu")

    def _answer(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        probs = torch.softmax(logits.float().cpu() / self.config.logit_scale(), 1).numpy()
        return probs, probs.argmax(1)

    def looks_like_mri(self, features: torch.Tensor, grays: Sequence[np.ndarray]) -> np.ndarray:
        """For each slice (its gray image and its detector features, ``forward_with_features``): not blank, and
        within the MRI detector's threshold (when the model has one)."""
        blank = np.array([looks_blank(g) for g in grays])
        if self.config.ood_threshold <= 0:
            return ~blank
        return (self.model.ood_distance(features).cpu().numpy() <= self.config.ood_threshold) & ~blank

    def predict(self, grays: Sequence[np.ndarray], heatmaps: bool = False, method: Optional[str] = None,
                target: Optional[Union[str, int]] = None, batch_size: int = 32) -> list[Prediction]:
        """Predict a list of H x W uint8 slices; with ``heatmaps``, also the map of ``target`` (default: the
        predicted class) by ``method``. Grad-CAM/Grad-CAM++ come from the prediction's own forward pass."""
        method = check_method(method or self.config.cam_method)
        target_index = self._class_index(target) if target is not None else None
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for i, g in enumerate(grays):
            shape = np.shape(g)
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"slice {i}: expected an H x W grayscale array, got shape {shape} "
                                 "(decode files with read_image)")
        # another class or method than the default (the app's menus, for the slice just shown): its pass is reused
        reuse = target_index is not None or method != check_method(self.config.cam_method)
        prepared = [self.prepare(g) for g in grays]
        out: list[Prediction] = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            x = to_tensor(np.stack([p[0] for p in chunk]), self.config.mean, self.config.std).to(self.device)
            maps = None
            with self.lock:
                if heatmaps and method in FAST_METHODS:
                    run = self._one_pass(x, chunk[0][0] if len(chunk) == 1 else None, reuse)
                    logits, features = run.logits.detach(), run.features
                    probs, pred = self._answer(logits)
                    classes = pred if target_index is None else np.full(len(pred), target_index)
                    maps = upsample(run.cams(classes, method), self.config.img_size)
                    del run
                else:
                    with torch.inference_mode(), self._autocast():
                        logits, features = self.model.forward_with_features(x)
                    probs, pred = self._answer(logits)
                    if heatmaps:
                        classes = pred if target_index is None else np.full(len(pred), target_index)
                        maps = library_maps(self.model, x, classes, method, self.config.cam_layer,
                                            self.config.output_stride)
            if maps is not None:  # (a class-agnostic map is placed as the predicted class's maps are)
                maps = self._placed(maps, pred if method in CLASS_AGNOSTIC else classes, method)
            if maps is not None and self.config.cam_power != 1.0:
                maps = maps ** self.config.cam_power  # order kept (same peak); faint, diffuse heat damped
            mri = self.looks_like_mri(features, grays[start:start + batch_size])
            for i, (img, crop) in enumerate(chunk):
                p = self._prediction(probs[i], img, crop, None if maps is None else maps[i],
                                     method if heatmaps else None,
                                     target_index if target_index is not None else int(pred[i]))
                p.looks_like_mri = bool(mri[i])
                p.logits = logits[i].float().cpu().numpy()
                out.append(p)
        return out

    def _placed(self, maps: np.ndarray, classes: Sequence[int], method: str) -> np.ndarray:
        """Each map moved back by its class's fitted offset (config.cam_shift, for this layer and method; none
        where it was not fitted)."""
        shift = self.config.cam_shift_of(method)
        xy = [shift.get(self.classes[int(c)], (0.0, 0.0)) for c in classes]
        dx, dy = [-float(v[0]) for v in xy], [-float(v[1]) for v in xy]
        return translate(maps, dx, dy) if any(dx) or any(dy) else maps

    def _prediction(self, probs: np.ndarray, img: np.ndarray, crop: Crop, heat: Optional[np.ndarray],
                    method: Optional[str], heat_class: int) -> Prediction:
        k = int(probs.argmax())
        confidence = float(probs[k])
        p_tumor = float(1.0 - probs[self._no_tumor].sum()) if self._no_tumor else 1.0
        entropy = float(-(probs * np.log(np.clip(probs, 1e-12, 1))).sum() / np.log(len(probs)))
        return Prediction(
            label=self.classes[k], probabilities={c: float(p) for c, p in zip(self.classes, probs)},
            tumor_probability=min(max(p_tumor, 0.0), 1.0), confidence=confidence,
            uncertainty=min(max(entropy, 0.0), 1.0),
            needs_review=confidence < self.config.abstain_below, image=img, crop=crop,
            heatmap=heat, heatmap_class=self.classes[heat_class] if heat is not None else None, method=method,
            display_names=dict(self.config.display_names), abstain_below=self.config.abstain_below)

    def _class_index(self, target: Union[str, int]) -> int:
        if isinstance(target, (int, np.integer)):
            if not 0 <= int(target) < len(self.classes):
                raise ValueError(f"class index {target} out of range; classes: {self.classes}")
            return int(target)
        if target not in self.classes:
            raise ValueError(f"unknown class {target!r}; choose one of {self.classes}")
        return self.classes.index(target)

    def predict_files(self, paths: Sequence[Union[str, os.PathLike]], heatmaps: bool = False,
                      method: Optional[str] = None, batch_size: int = 32,
                      each: Optional[Callable[[int, np.ndarray, Prediction], None]] = None
                      ) -> list[Union[Prediction, ImageReadError]]:
        """Read and predict files in batches; an unreadable file yields its ImageReadError in its place.
        ``each(index, slice, prediction)`` is called while the decoded slice is still in memory (evaluate
        scores heat maps on the original grid with it, without decoding the file a second time)."""
        results: list[Union[Prediction, ImageReadError, None]] = [None] * len(paths)
        for start in range(0, len(paths), batch_size):
            grays, where = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                if is_volume(paths[i]):
                    results[i] = ImageReadError(f"{Path(paths[i]).name} is a volume: read it with "
                                                "brain_tumor.volume.read_volume and predict its slices")
                    continue
                try:
                    grays.append(read_image(paths[i]))
                    where.append(i)
                except ImageReadError as e:
                    results[i] = e
            preds = self.predict(grays, heatmaps=heatmaps, method=method, batch_size=batch_size)
            for i, gray, pred in zip(where, grays, preds):
                results[i] = pred
                if each is not None:
                    each(i, gray, pred)
        return results  # type: ignore[return-value]
