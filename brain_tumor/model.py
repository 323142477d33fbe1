"""The network (torchvision ResNet18 with a new head) and its self-describing checkpoint.

A model folder, in Hugging Face layout, holds ``model.safetensors`` and ``config.json``; the config
carries everything needed to use the weights (class names, input size, normalisation, preprocessing,
calibration temperature, Grad-CAM layer, published metrics), so serving cannot drift from training.

    >>> from brain_tumor import create_model, load_model
    >>> net = create_model(["glioma", "meningioma", "notumor", "pituitary"], init="scratch")
    >>> net = load_model()                      # the bundled model
    >>> net = load_model("user/brain-tumor@v1")  # a Hub repo at a revision (honours HF_HUB_OFFLINE)
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torchvision.models import resnet18

from .config import IMAGENET_MEAN, IMAGENET_STD, NO_TUMOR_NAMES, PREPROCESSING, canonical_class, display_name
from .metrics import json_ready

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_UNSAFE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")


OOD_FEATURES = {"layer3": 256, "pooled": 512}  # the MRI detector's input, and its width


def nearest_mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of each row of ``features`` (N x D) to the nearest of ``means`` (K x D), under
    one shared ``precision`` (D x D): the MRI detector's distance."""
    diff = features[:, None, :] - means[None]  # N x K x D
    return torch.einsum("nkd,de,nke->nk", diff, precision, diff).min(1).values


def cam_shift_key(layer: str, method: str) -> str:
    """ModelConfig.cam_shift's key for maps of ``method`` at ``layer``."""
    return f"{layer}/{method}"


class ModelLoadError(ValueError):
    """A model source that cannot be loaded, with the reason and what to do."""


@dataclass
class ModelConfig:
    """What travels with the weights in config.json."""

    class_names: list[str]
    img_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    architecture: str = "resnet18"
    dropout: float = 0.2
    output_stride: int = 32  # 16: layer4 keeps layer3's grid (stride 1, dilation 2), a 4x finer last-layer map
    temperature: float = 1.0  # softmax temperature fitted on the grouped validation split
    # one temperature per class (vector scaling without a bias), used instead of ``temperature`` when set: trust
    # fits both and keeps this only where it predicts held-out validation slices better (5-fold log-loss)
    class_temperature: list[float] = field(default_factory=list)
    cam_layer: str = "layer4"  # heat-map target layer, or layers fused ("layer3:0.75+layer4"), chosen by scripts/heatmaps.py
    cam_method: str = "gradcam"  # default heat-map method, chosen the same way
    cam_power: float = 1.0  # maps are raised to this power (>1 damps faint diffuse heat), chosen the same way
    # "layer/method" -> class -> [dx, dy], pixels (of the img_size view) by which that class's maps sit right of
    # and below the evidence; the map is drawn moved back by that much (fitted without labels: brain_tumor.cam_offset)
    cam_shift: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=lambda: {
        "decode": "8-bit grayscale (DICOM: modality LUT, VOI window, MONOCHROME1 inverted)",
        "crop": "square around the head mask (blurred, thresholded at crop_otsu_fraction of Otsu's level and at least "
                "crop_min_threshold, largest component), crop_margin on each side, zero padding",
        "resize": "area (down) / bilinear (up) to img_size",
        "channels": "grayscale repeated on 3 channels, normalised by mean/std",
        **PREPROCESSING,  # the numbers preprocess.prepare reads (an older config without them: these same values)
    })
    abstain_below: float = 0.0  # calibrated confidence below which the answer is 'uncertain - needs review'
    ood_threshold: float = 0.0  # Mahalanobis distance above which a slice does not look like a brain MRI; 0 = off
    ood_features: str = "layer3"  # what the MRI detector reads: "layer3" (its channel means) or "pooled" (older models)
    metrics: dict[str, Any] = field(default_factory=dict)  # published figures (grouped validation split)
    training: dict[str, Any] = field(default_factory=dict)  # how it was trained (command, time, hardware)
    version: str = "0"
    display_names: dict[str, str] = field(default_factory=dict)  # class name -> words shown (default: config.DISPLAY_NAMES)

    def __post_init__(self) -> None:
        self.display_names = {c: str((self.display_names or {}).get(c) or display_name(c)) for c in self.class_names}

    def cam_shift_of(self, method: str) -> dict[str, list[float]]:
        """Each class's [dx, dy] map offset for ``method`` at the served layer (empty where none was fitted).

        ``cam_offset`` fits the one-pass methods (Grad-CAM, Grad-CAM++). Every other method's map is a weighting of
        the same layer's activations, whose units put their evidence beside the object by the same amount, so it
        takes the layer's Grad-CAM offsets (else Grad-CAM++'s): on release 5's validation boxes this moves their
        pointing game from 0.76-0.78 to 0.83-0.84 (docs/model.md, *Heat maps*)."""
        from .explain import FAST_METHODS

        own = self.cam_shift.get(cam_shift_key(self.cam_layer, method))
        if own is not None or method in FAST_METHODS:
            return own or {}
        for fitted in FAST_METHODS:
            if cam_shift_key(self.cam_layer, fitted) in self.cam_shift:
                return self.cam_shift[cam_shift_key(self.cam_layer, fitted)]
        return {}

    def logit_scale(self) -> Union[float, torch.Tensor]:
        """What the logits are divided by before the softmax: the per-class temperatures where fitted, else the
        one temperature. ``softmax(logits / config.logit_scale(), 1)`` is the calibrated answer everywhere."""
        return torch.tensor(self.class_temperature, dtype=torch.float32) if self.class_temperature else self.temperature

    def describe_calibration(self) -> str:
        """The calibration in words: "temperature 0.95", or each class's temperature."""
        if not self.class_temperature:
            return f"temperature {self.temperature:.2f}"
        return "temperature per class " + ", ".join(f"{self.display(c)} {t:.2f}"
                                                      for c, t in zip(self.class_names, self.class_temperature))

    def display(self, name: str) -> str:
        """The words shown for class ``name`` ("no tumour" for ``notumor``)."""
        return self.display_names.get(name) or display_name(name)

    @property
    def no_tumor_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.class_names) if c in NO_TUMOR_NAMES or canonical_class(c) == "notumor"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_classes"] = len(self.class_names)
        d["input_size"] = [3, self.img_size, self.img_size]
        d["id2label"] = {str(i): c for i, c in enumerate(self.class_names)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        _check_config(d)
        d = {"ood_features": "pooled", **d}  # a config from before the field: its detector read the pooled features
        d["cam_shift"] = {k: {c: xy if isinstance(xy, list) else [xy, 0.0] for c, xy in v.items()}  # (dx alone: the
                          for k, v in d.get("cam_shift", {}).items()}  # first form of the field, sideways only)
        return cls(**{k: v for k, v in d.items() if k in known})


def _check_config(d: Any) -> None:
    """Refuse a config.json whose fields would fail later, in the middle of serving, with a worse message."""
    if not isinstance(d, dict) or "class_names" not in d:
        raise ModelLoadError("config.json has no class_names: not a brain_tumor model folder")
    names, size = d["class_names"], d.get("img_size", 224)
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(c, str) for c in names):
        raise ModelLoadError(f"config.json class_names must be a list of two or more names, got {str(names)[:80]}")
    if not isinstance(size, int) or size < 8:
        raise ModelLoadError(f"config.json img_size must be a whole number of pixels, got {str(size)[:20]}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    for key in ("mean", "std"):
        value = d.get(key, [1.0, 1.0, 1.0])
        if not isinstance(value, list) or len(value) != 3 or not all(map(number, value)):
            raise ModelLoadError(f"config.json {key} must be three numbers, got {str(value)[:40]}")
    if d.get("ood_features", "pooled") not in OOD_FEATURES:
        raise ModelLoadError(f"config.json ood_features must be one of {sorted(OOD_FEATURES)}, "
                             f"got {str(d['ood_features'])[:20]}")
    if d.get("output_stride", 32) not in (16, 32):
        raise ModelLoadError(f"config.json output_stride must be 16 or 32, got {str(d['output_stride'])[:20]}")
    sane = lambda t: number(t) and 1e-3 <= t <= 1e3  # noqa: E731  (a temperature near 0 would overflow the softmax)
    if not sane(d.get("temperature", 1.0)):
        raise ModelLoadError(f"config.json temperature must be a number from 0.001 to 1000, "
                             f"got {str(d['temperature'])[:20]}")
    per_class = d.get("class_temperature", [])
    if not (isinstance(per_class, list) and (not per_class or len(per_class) == len(names))
            and all(sane(v) for v in per_class)):
        raise ModelLoadError(f"config.json class_temperature must be one number from 0.001 to 1000 per class (or "
                             f"none), got {str(per_class)[:40]}")
    if not all(v > 0 for v in d.get("std", [1.0])):
        raise ModelLoadError(f"config.json std must be positive numbers, got {str(d['std'])[:40]}")
    for key, low, high in (("abstain_below", 0.0, 1.0), ("ood_threshold", 0.0, math.inf), ("cam_power", 0.05, 20.0)):
        value = d.get(key, low if key != "cam_power" else 1.0)
        if not (number(value) and low <= value <= high):
            raise ModelLoadError(f"config.json {key} must be a number from {low:g} to {high:g}, got {str(value)[:20]}")
    from .explain import check_method, parse_layers

    for key, check in (("cam_layer", parse_layers), ("cam_method", check_method)):  # (that each layer names a
        try:  # module of the network: load_model)
            check(str(d.get(key, {"cam_layer": "layer4", "cam_method": "gradcam"}[key])))
        except ValueError as e:
            raise ModelLoadError(f"config.json {key}: {e}") from None
    from .preprocess import preprocessing_settings

    try:
        preprocessing_settings(d.get("preprocessing") if isinstance(d.get("preprocessing"), dict) else None)
    except ValueError as e:
        raise ModelLoadError(f"config.json: {e}") from None
    shift = d.get("cam_shift", {})
    pixels = lambda v: number(v) and abs(v) <= size  # noqa: E731
    if not isinstance(shift, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and all(
                isinstance(c, str) and (pixels(xy) or isinstance(xy, list) and len(xy) == 2 and all(map(pixels, xy)))
                for c, xy in v.items())
            for k, v in shift.items()):
        raise ModelLoadError("config.json cam_shift must map 'layer/method' to class -> [dx, dy] pixels within the "
                             f"input size, got {str(shift)[:60]}")
    shown = d.get("display_names", {})
    if not isinstance(shown, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in shown.items()):
        raise ModelLoadError(f"config.json display_names must map class names to words, got {str(shown)[:60]}")


class TumorClassifier(nn.Module):
    """ResNet18 backbone + dropout + linear head. ``config`` describes classes and preprocessing."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.architecture != "resnet18":
            raise ModelLoadError(f"unknown architecture {config.architecture!r}; this package provides 'resnet18'")
        if len(config.class_names) < 2:
            raise ValueError("a classifier needs at least two classes")
        self.config = config
        self.net = resnet18(weights=None)
        if config.output_stride == 16:
            dilate_last_stage(self.net)
        self.net.fc = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(512, len(config.class_names)))
        # 'looks like a brain MRI' detector (config.ood_features): class means and shared precision matrix
        width = OOD_FEATURES[config.ood_features]
        self.register_buffer("ood_mean", torch.zeros(len(config.class_names), width))
        self.register_buffer("ood_precision", torch.zeros(width, width))

    @property
    def targets(self) -> list[str]:
        return list(self.config.class_names)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the MRI detector's features (``config.ood_features``: layer3's channel means, or the pooled
        512-d features of older models), from one pass (layer hooks fire as usual)."""
        logits, pooled, _, layer3 = self._forward_all(x, layer3_means=True)
        return logits, (layer3 if self.config.ood_features == "layer3" else pooled)

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, pooled features and layer4's feature maps (N x 512 x h x w), from one pass."""
        return self.forward(x, with_maps=True)

    def _forward_all(self, x: torch.Tensor, layer3_means: bool = False) -> tuple[torch.Tensor, ...]:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        mid = n.layer3(n.layer2(n.layer1(x)))
        maps = n.layer4(mid)
        features = torch.flatten(n.avgpool(maps), 1)
        out = (n.fc(features), features, maps)
        return out + (mid.float().mean((2, 3)),) if layer3_means else out

    def class_activation(self, maps: torch.Tensor, classes: torch.Tensor, relu: bool = True) -> torch.Tensor:
        """CAM of ``classes`` (N,) from layer4 maps: ReLU(sum_k w_ck A_k), N x h x w (``relu=False``: before the
        ReLU). With global average pooling and a linear head this is layer4 Grad-CAM up to a positive factor, and
        it stays differentiable."""
        weight = self.net.fc[1].weight[classes]  # N x 512
        cam = torch.einsum("nkhw,nk->nhw", maps.float(), weight.float())
        return torch.relu(cam) if relu else cam

    def forward(self, x: torch.Tensor, with_maps: bool = False):
        """Logits; with ``with_maps``, (logits, pooled features, layer4 maps) -- the form training runs through
        DistributedDataParallel, which only sees ``forward``."""
        out = self._forward_all(x)
        return out if with_maps else out[0]

    def ood_distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each detector feature vector (``forward_with_features``) to the nearest
        class mean (0s if not fitted)."""
        f = features.detach().float()
        return nearest_mahalanobis(f.to(self.ood_mean.device), self.ood_mean, self.ood_precision).to(f.device)

    def backbone_parameters(self):
        return [p for n, p in self.net.named_parameters() if not n.startswith("fc.")]

    def head_parameters(self):
        return list(self.net.fc.parameters())


def dilate_last_stage(net: nn.Module) -> None:
    """Output stride 32 -> 16: layer4 stops downsampling and dilates its later 3x3 convs by 2, so each conv
    sees the same neighbourhood as before on a grid twice as fine (the weights keep their shapes: a stride-32
    checkpoint initialises it). Its maps then have layer3's resolution (8 x 8 at 128 px instead of 4 x 4)."""
    first = net.layer4[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for conv in (first.conv2, net.layer4[1].conv1, net.layer4[1].conv2):
        conv.dilation, conv.padding = (2, 2), (2, 2)


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        # torch.hub unpickles with weights_only=False by default: a tampered cache file would run code
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as e:
        raise ModelLoadError(
            f"ImageNet weights for ResNet18 could not be loaded ({type(e).__name__}: {str(e)[:120]}).\n"
            f"  Download {weights.url}\n  and place it at {cache}\n"
            "  (or run once with a network), or train from scratch with --init scratch.") from None


def create_model(class_names: Sequence[str], init: str = "scratch", img_size: int = 224,
                 dropout: float = 0.2, output_stride: int = 32) -> TumorClassifier:
    """Build the classifier. ``init``: 'scratch', 'imagenet' (torchvision's IMAGENET1K_V1, from its cache or
    the network), or a path to a .safetensors file / model folder whose backbone weights are reused (and its
    head too, when the folder's config.json names the same classes: fine-tuning a model further).
    ``output_stride`` 16 dilates the last stage (finer heat maps at layer4, about 1.4x the compute).

    >>> net = create_model(["no", "yes"], init="scratch", img_size=128)
    """
    config = ModelConfig(class_names=[str(c) for c in class_names], img_size=img_size, dropout=dropout,
                         output_stride=output_stride)
    model = TumorClassifier(config)
    if init == "scratch":
        return model
    if init == "imagenet":
        state = {k: v for k, v in _imagenet_state_dict().items() if not k.startswith("fc.")}
    else:
        path = Path(init)
        if path.is_dir():
            path = path / WEIGHTS_NAME
        if not path.exists():
            unsafe = _pickles_in(path.parent) if path.name == WEIGHTS_NAME else []
            hint = f" ({path.parent} holds {unsafe}: pickle checkpoints are refused; convert to safetensors)" \
                if unsafe else ""
            raise ModelLoadError(f"--init must be 'imagenet', 'scratch' or a .safetensors file / model folder; "
                                 f"{init!r} is none of these{hint}")
        state = {k.removeprefix("net."): v for k, v in _read_safetensors(path).items()}
        if any(k.startswith("conv1") for k in state):  # plain torchvision resnet18 keys
            keep_head = _same_classes(path.parent / CONFIG_NAME, config.class_names)
            state = {k: v for k, v in state.items()
                     if not k.startswith("ood.") and (keep_head or not k.startswith("fc."))}
        else:
            raise ModelLoadError(f"{path} does not hold ResNet18 weights")
    missing, unexpected = model.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    backbone_missing = [k for k in missing if not k.startswith("fc.")]
    if backbone_missing or unexpected:
        raise ModelLoadError(f"initial weights do not match ResNet18: missing {backbone_missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model


def _same_classes(config_path: Path, class_names: Sequence[str]) -> bool:
    try:
        return json.loads(config_path.read_text()).get("class_names") == list(class_names)
    except (OSError, ValueError, AttributeError):
        return False


def _pickles_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.suffix.lower() in _UNSAFE_SUFFIXES)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    suffix = path.suffix.lower()
    if suffix in _UNSAFE_SUFFIXES:
        raise ModelLoadError(f"refusing to load {path.name}: pickle-based checkpoints can run arbitrary code. "
                             "Convert it to safetensors (safetensors.torch.save_file) first.")
    try:
        return load_file(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path.name} is not a valid safetensors file ({str(e)[:120]})") from None


def _detail(e: Exception) -> str:
    """The first informative line of a load_state_dict error (its first line is only a heading)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]


def save_model(model: TumorClassifier, folder: Union[str, os.PathLike], fp16: bool = True) -> Path:
    """Write model.safetensors (fp16 by default: half the size, same predictions) and config.json."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in model.net.state_dict().items()}
    state.update({f"ood.{k[4:]}": getattr(model, k).detach().float().contiguous().cpu()
                  for k in ("ood_mean", "ood_precision")})
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "architecture": model.config.architecture})
    (folder / CONFIG_NAME).write_text(json.dumps(json_ready(model.config.to_dict()), indent=2, allow_nan=False) + "\n")
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # readable by the web server or Space that serves them
        os.chmod(folder / name, 0o644)
    return folder


def resolve_source(source: Optional[str] = None, revision: Optional[str] = None) -> tuple[Path, str]:
    """Turn a model source into a local folder. Returns (folder, description with revision).

    ``source``: None (the ``BRAIN_TUMOR_MODEL`` env var, else the bundled model), a local folder, a
    ``.safetensors`` file with config.json beside it, or a Hub repo id ``user/name`` (``@revision`` optional).
    """
    source = source or os.environ.get("BRAIN_TUMOR_MODEL") or str(BUNDLED_MODEL)
    path = Path(source).expanduser()
    if path.suffix.lower() in _UNSAFE_SUFFIXES:
        raise ModelLoadError(f"refusing to load {path.name}: pickle-based checkpoints can run arbitrary code; "
                             "this tool loads safetensors model folders only")
    if path.exists():
        folder = path.parent if path.is_file() else path
        if path.is_file() and path.suffix.lower() != ".safetensors":
            raise ModelLoadError(f"{path.name} is not a model: give a model folder or a .safetensors file")
        return folder, str(folder)
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        repo_id, _, rev = source.partition("@")
        return _download(repo_id, revision or rev or None)
    raise ModelLoadError(f"model not found: {source!r} is neither a local folder nor a Hub repo id (user/name[@revision])")


def _download(repo_id: str, revision: Optional[str]) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md"])
    except LocalEntryNotFoundError:
        raise ModelLoadError(f"{repo_id} is not in the local Hugging Face cache and the Hub cannot be reached "
                             "(offline, or HF_HUB_OFFLINE=1). Connect once, or give a local model folder.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"Hub repo {repo_id} not found (or private: log in with `hf auth login`)") from None
    except HfHubHTTPError as e:
        raise ModelLoadError(f"could not download {repo_id}: {str(e)[:160]}") from None
    except Exception as e:
        raise ModelLoadError(f"could not download {repo_id}: {type(e).__name__}: {str(e)[:160]}") from None
    commit = Path(folder).name
    return Path(folder), f"{repo_id}@{revision or 'main'} ({commit[:10]})"


def load_model(source: Optional[str] = None, revision: Optional[str] = None) -> TumorClassifier:
    """Load a model folder (local or Hub) into an eval-mode TumorClassifier on the CPU.

    Safetensors only; a clear ModelLoadError for a missing folder, missing files, or weights that do not
    match the config. ``model.source`` says where it came from (with the Hub revision).
    """
    folder, description = resolve_source(source, revision)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not weights_path.exists():
        unsafe = _pickles_in(folder)
        hint = f" (found {unsafe}: pickle checkpoints are refused; convert to safetensors)" if unsafe else ""
        raise ModelLoadError(f"no {WEIGHTS_NAME} in {folder}{hint}")
    if not config_path.exists():
        raise ModelLoadError(f"no {CONFIG_NAME} in {folder}: the checkpoint must describe itself")
    try:
        config = ModelConfig.from_dict(json.loads(config_path.read_text()))
        model = TumorClassifier(config)
        from .explain import parse_layers, target_layer

        for name, _ in parse_layers(config.cam_layer):
            target_layer(model, name)  # the heat map's layers exist (a ValueError naming the valid ones if not)
    except ModelLoadError:
        raise
    except (ValueError, TypeError) as e:  # not JSON, not UTF-8, or fields of the wrong kind
        raise ModelLoadError(f"{config_path} is not a valid model config: {str(e)[:160]}") from None
    state = _read_safetensors(weights_path)
    head = state.get("fc.1.weight")
    if head is not None and head.shape[0] != len(config.class_names):
        raise ModelLoadError(f"weights in {folder} do not match its config: {WEIGHTS_NAME} has a {head.shape[0]}-class "
                             f"head, {CONFIG_NAME} lists {len(config.class_names)} classes {str(config.class_names)[:120]}")
    try:
        for k in ("mean", "precision"):
            if f"ood.{k}" in state:
                getattr(model, f"ood_{k}").copy_(state.pop(f"ood.{k}").float())
        model.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"weights in {folder} do not match its config ({len(config.class_names)} classes "
                             f"{str(config.class_names)[:120]}): {_detail(e)}") from None
    model.source = description
    return model.eval()
