"""Configuration: class names and their aliases, preprocessing defaults, the TrainConfig dataclass, and the
command lines' help format."""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

DEFAULT_CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
NO_TUMOR = "notumor"

# Folder names seen in public copies of the dataset, mapped to our canonical names.
CLASS_ALIASES: dict[str, str] = {
    "glioma": "glioma", "glioma_tumor": "glioma", "glioma tumor": "glioma", "gliomas": "glioma",
    "meningioma": "meningioma", "meningioma_tumor": "meningioma", "meningioma tumor": "meningioma",
    "pituitary": "pituitary", "pituitary_tumor": "pituitary", "pituitary tumor": "pituitary",
    "notumor": "notumor", "no_tumor": "notumor", "no tumor": "notumor", "no-tumor": "notumor",
    "no": "notumor", "normal": "notumor", "healthy": "notumor",
    "yes": "tumor", "tumor": "tumor", "tumour": "tumor",
}
# What a person reads for each canonical class (the checkpoint's config carries its own: ModelConfig.display_names).
DISPLAY_NAMES: dict[str, str] = {"glioma": "glioma", "meningioma": "meningioma", "notumor": "no tumour",
                                 "pituitary": "pituitary tumour", "tumor": "tumour"}
# Names that mean "no tumour" whatever the dataset calls it.
NO_TUMOR_NAMES = frozenset(k for k, v in CLASS_ALIASES.items() if v == "notumor")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DICOM_SUFFIXES = (".dcm", ".dicom", "")

# ImageNet statistics: the grayscale slice is repeated on three channels, so an ImageNet-initialised
# network sees what it expects and a scratch network loses nothing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The head crop's settings: data, saved in every checkpoint's config.json ("preprocessing") and read back by
# preprocess.preprocessing_settings, so changing a default here never changes how an older checkpoint is served
# (a checkpoint without them gets these values, which are what every model before them was trained with).
PREPROCESSING: dict[str, float] = {
    "crop_margin": 0.04,  # the square around the head grows by this share of its side on each side
    "crop_otsu_fraction": 0.35,  # head mask: blurred pixels above this share of Otsu's threshold ...
    "crop_min_threshold": 8.0,  # ... and above this 0-255 level
    "crop_min_area": 0.02,  # a head smaller than this share of the image is not trusted: the whole image is used
}

MAX_FILE_BYTES = 50 * 1024 * 1024  # refuse uploads above this
MAX_PIXELS = 64_000_000  # refuse images whose header claims more (decompression bombs)
MAX_SLICES = 2048  # slices of one volume, or frames of one DICOM file, answered together (a 1 x 1 x 2,000,000
# volume, or a 50 MB file of 5 x 5 frames, is not a scan)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The command lines' help: each option's default, except where its help already says it ("default: ...") or
    there is none worth showing (None, an empty string or list, a flag: "--no-mri-aug (default: True)" misleads)."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or (isinstance(action.default, (str, list, tuple)) and not action.default)
        if ("default:" in text or "%(default)" in text or action.nargs == 0 or empty
                or action.default is argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX)? Elsewhere bf16 is emulated, and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    """Whether to compute in bfloat16 for ``precision`` (auto: only where the CPU does it natively). Training
    runs its forward pass under bf16 autocast; heat maps run their backward pass through the later stages in bf16."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and native_bf16())


def canonical_class(name: str) -> str:
    """Map a folder name such as ``glioma_tumor`` or ``no`` to its canonical class (or itself)."""
    key = name.strip().lower()
    return CLASS_ALIASES.get(key, key)


def display_name(name: str) -> str:
    """The words shown for a class name: ``notumor`` -> ``no tumour``; unknown names as they are."""
    return DISPLAY_NAMES.get(canonical_class(name), name)


def is_no_tumor(name: str) -> bool:
    return canonical_class(name) == NO_TUMOR


@dataclass
class TrainConfig:
    """Everything a training run needs; train.py flags map one to one onto these fields."""

    data: list[str] = field(default_factory=list)  # data roots: class folders, Training/ + Testing/, or sequence/class folders
    out: str = "runs/brain-tumor-resnet18"  # output folder in Hugging Face layout
    init: str = "imagenet"  # imagenet | scratch | path to a .safetensors file or model folder
    img_size: int = 224  # square network input, pixels
    output_stride: int = 32  # 16: dilated last stage, finer layer4 heat maps (model.dilate_last_stage)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3  # head learning rate (and every layer's when training from scratch)
    backbone_lr: Optional[float] = 1e-4  # None: one learning rate for all layers
    weight_decay: float = 1e-4
    schedule: str = "plateau"  # plateau (ReduceLROnPlateau, the original recipe) | onecycle
    patience: int = 5  # early stopping: epochs without validation improvement
    val_fraction: float = 0.15
    dup_threshold: float = 0.95  # thumbnail correlation that makes two images one group
    seed: int = 42
    threads: int = 0  # torch CPU threads, 0 = all cores
    label_smoothing: float = 0.05
    intensity_aug: bool = True  # intensity curves, gamma, contrast, blur, noise: break the sequence cue
    curve_p: float = 0.3  # share of images whose tissue contrast is reordered by a random intensity curve
    precision: str = "auto"  # fp32 | bf16 (autocast, fp32 master weights) | auto: bf16 where the CPU has it natively
    source_balance: float = 0.5  # a (source, sequence) group of n images is drawn with total weight n ** this (1: pooled)
    epoch_size: int = 0  # images drawn per epoch (with replacement, by those weights); 0 = the training split's size
    mri_aug: bool = True  # skull stripping, bias field, ghosting, motion, Gibbs, Rician noise, low resolution, film
    strip_p: float = 0.15  # share of training images skull-stripped
    artefact_p: float = 0.12  # share of training images given each MRI artefact
    ema: float = 0.0  # decay per step of an exponential moving average of the weights (and BN statistics); 0: off.
    # When on, the average is what is validated, selected and saved (timm's ModelEma; smoother, usually better
    # on shifted data); 0.998 averages over about 500 steps.
    distill: str = ""  # a model folder / Hub id whose answers the student learns on --distill-source's slices
    distill_source: str = ""  # the source (or source/sequence) group the teacher scores; "" = every slice
    distill_weight: float = 1.0  # weight of the distillation term (engine.distillation_loss)
    distill_temperature: float = 2.0  # softening of both answers in that term
    anchor_weight: float = 0.0  # the --init model, frozen, is distilled on the slices --distill does not score
    # (all of them without --distill): what it already got right elsewhere is kept while one source is pulled; 0: off
    select: str = "all"  # what the best epoch is chosen by: "all" (answers and the training-time layer4 CAM pointing
    # game) | "answers" (accuracy, sensitivity, specificity only; the served map is then checked on its own)
    loc_weight: float = 1.0  # weight of the heat-map objective: CAM mass outside the tumour mask (masked slices)
    head_weight: float = 0.1  # weight of CAM mass outside the head, on tumour slices without a mask
    device: str = "auto"  # auto (CUDA where available) | cpu | cuda; under torchrun each rank takes its local GPU
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only)
    split_from: str = ""  # an earlier split.json whose sides are kept (default: the --init model folder's own)
    max_images: int = 0  # 0 = all; small values for smoke tests
    push_to_hub: Optional[str] = None  # repo id, e.g. user/brain-tumor-resnet18
    notes: list[str] = field(default_factory=list)  # free text copied into the model card

    def __post_init__(self) -> None:
        """Every option checked here, so that train.py, direct callers of engine.fit and tests get one set of
        rules and one message per mistake (raised as ValueError, the field named as the flag's words)."""
        if isinstance(self.data, str):
            self.data = [self.data] if self.data else []
        unit = lambda v: 0 <= v <= 1  # noqa: E731
        checks = [
            (self.img_size >= 32, "img_size must be at least 32"),
            (self.output_stride in (16, 32), "output_stride must be 16 or 32"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.lr > 0, "lr must be > 0"),
            (self.backbone_lr is None or self.backbone_lr > 0, "backbone_lr must be > 0 (or None: the same as lr)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.schedule in ("plateau", "onecycle"), f"schedule must be plateau or onecycle, got {self.schedule!r}"),
            (self.patience >= 0, "patience must be >= 0 (0: no early stopping)"),
            (0 < self.val_fraction < 1, "val_fraction must be between 0 and 1"),
            (0 < self.dup_threshold <= 1, "dup_threshold must be in (0, 1]"),
            (self.threads >= 0, "threads must be >= 0 (0: torch's choice)"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (unit(self.curve_p), "curve_p must be in [0, 1]"),
            (self.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {self.precision!r}"),
            (unit(self.source_balance), "source_balance must be between 0 and 1"),
            (self.epoch_size >= 0, "epoch_size must be >= 0"),
            (unit(self.strip_p) and unit(self.artefact_p), "strip_p and artefact_p must be in [0, 1]"),
            (0 <= self.ema < 1, "ema must be in [0, 1) (0: off)"),
            (self.select in ("all", "answers"), f"select must be all or answers, got {self.select!r}"),
            (self.distill_weight >= 0, "distill_weight must be >= 0"),
            (self.distill_temperature > 0, "distill_temperature must be > 0"),
            (self.anchor_weight >= 0, "anchor_weight must be >= 0 (0: off)"),
            (self.loc_weight >= 0 and self.head_weight >= 0, "loc_weight and head_weight must be >= 0"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.max_images >= 0, "max_images must be >= 0 (0: all)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
