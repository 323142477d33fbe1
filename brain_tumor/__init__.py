"""Brain MRI tumour classifier (ResNet18) with Grad-CAM heat maps: the public surface.

Names are imported on first use, so that ``python -m brain_tumor.data`` (and the other command-line
modules) run without the package having imported them already.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_CLASSES": "config", "TrainConfig": "config",
    "ImageReadError": "decode", "prepare": "preprocess", "read_image": "decode",
    "Prediction": "inference", "Predictor": "inference",
    "ModelConfig": "model", "ModelLoadError": "model", "TumorClassifier": "model", "create_model": "model",
    "load_model": "model", "save_model": "model",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'brain_tumor' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
