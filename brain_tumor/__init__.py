"""Brain MRI tumour classifier (ResNet18) with Grad-CAM heat maps: the public surface."""
from .config import DEFAULT_CLASSES, TrainConfig
from .data import ImageReadError, prepare, read_image
from .inference import Prediction, Predictor
from .model import ModelConfig, ModelLoadError, TumorClassifier, create_model, load_model, save_model

__all__ = ["DEFAULT_CLASSES", "TrainConfig", "ImageReadError", "prepare", "read_image", "Prediction", "Predictor",
           "ModelConfig", "ModelLoadError", "TumorClassifier", "create_model", "load_model", "save_model"]
__version__ = "0.1.0"
