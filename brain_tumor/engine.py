"""The training loop, in named steps: fit() = load_data, sampling, build, resume, train_epochs, finish.

Images of every data root are decoded and prepared once and held in memory as uint8; augmentation runs on
whole batches as tensors (train_one_epoch). Each epoch draws its images with per-source weights
(datasets.sampling_weights) so that no source dominates; tumour masks feed the heat-map objective
(localisation_loss); with a teacher model, the slices of the sources it knows also learn its answers
(distillation_loss). The validation split is grouped by patient and near-duplicates (splits.split) and saved as
split.json beside the checkpoint; validation is reported per source and sequence (validate), and the best epoch
is the one with the best metrics.selection_score over those groups. Progress is saved after every epoch
(``<out>.train_state.pt`` beside the model folder, tensors only, loaded with weights_only=True), so Ctrl-C
and the same command again resumes. Calibration and the MRI detector are trust.py's.
"""
from __future__ import annotations

import json
import math
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .augment import augment_appearance, augment_geometry, strip_view
from .config import TrainConfig, use_bf16
from .preprocess import normalise
from .distributed import World, setup, teardown
from . import cam_offset, datasets, splits
from .metrics import MIN_SUPPORT, format_group_table
from .model import TumorClassifier, create_model, load_model, save_model
from .trust import evaluate_logits, predict_logits, record_calibration, record_validation, validate

STATE_NAME = "train_state.pt"
RESUME_KEYS = ("data", "img_size", "init", "seed", "output_stride")  # a saved state resumes only the same run


def forward_precision(precision: str, device: Optional[torch.device] = None) -> str:
    """What the training forward pass runs in, in words (recorded in the checkpoint, printed by benchmarks)."""
    dtype = autocast_dtype(precision, device or torch.device("cpu"))
    return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast, gradient scaler"}.get(dtype, "fp32")


def localisation_loss(model: TumorClassifier, maps: torch.Tensor, y: torch.Tensor, masks: torch.Tensor,
                      x01: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The heat-map objective: the share of the true class's activation map lying outside the tumour mask (on
    slices with a mask), plus, weighted lower, outside the head (on tumour slices without one). 0 when neither.

    The map is the class activation before its ReLU, made a distribution over the cells by a softmax: a share of
    the ReLU'd map could be driven to zero by making the whole map negative, which moves no heat anywhere."""
    has = masks.flatten(1).amax(1) > 0.5
    tumour = torch.tensor([int(c) not in model.config.no_tumor_indices for c in y.tolist()], dtype=torch.bool,
                          device=y.device)
    head_only = tumour & ~has
    if not (has.any() or head_only.any()) or (cfg.loc_weight == 0 and cfg.head_weight == 0):
        return maps.new_zeros(())
    cam = model.class_activation(maps, y, relu=False)  # N x h x w
    size = cam.shape[-2:]
    cam = torch.softmax(cam.flatten(1), 1).view_as(cam)
    inside_tumour = F.adaptive_max_pool2d(masks, size).squeeze(1)  # a cell touching the tumour counts as inside
    inside_head = F.adaptive_avg_pool2d((x01 > 0.05).float(), size).squeeze(1) > 0.2
    outside = torch.where(has.view(-1, 1, 1), 1 - inside_tumour, (~inside_head).float())
    share = (cam * outside).flatten(1).sum(1)
    loss = maps.new_zeros(())
    if has.any() and cfg.loc_weight:
        loss = loss + cfg.loc_weight * share[has].mean()
    if head_only.any() and cfg.head_weight:
        loss = loss + cfg.head_weight * share[head_only].mean()
    return loss


@dataclass
class Teacher:
    """A frozen earlier model whose answers the student learns on the sources it knows (``--distill``): what keeps
    a model trained on new sources from forgetting an old one (learning without forgetting, Li & Hoiem 2016).

    ``order`` maps the student's classes onto the teacher's logits; ``on`` marks the training images it scores;
    ``weight`` is its term's weight in the loss."""

    model: TumorClassifier
    order: torch.Tensor
    on: torch.Tensor
    weight: float = 1.0

    def logits(self, x01: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
        """The teacher's logits (in the student's class order) for N x 1 x S x S slices in [0, 1], read at its own
        input size and normalisation."""
        cfg = self.model.config
        if x01.shape[-1] != cfg.img_size:
            x01 = F.interpolate(x01, size=(cfg.img_size, cfg.img_size), mode="bilinear", align_corners=False,
                                antialias=x01.shape[-1] > cfg.img_size)
        with torch.no_grad(), torch.autocast(x01.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = self.model(normalise(x01, cfg.mean, cfg.std))
        return out.float()[:, self.order]


def _frozen(model: TumorClassifier, classes: list[str], on: torch.Tensor, weight: float,
            device: torch.device) -> Teacher:
    theirs = list(model.config.class_names)
    for q in model.parameters():
        q.requires_grad_(False)
    model = model.eval().to(device, memory_format=torch.channels_last)
    return Teacher(model, torch.tensor([theirs.index(c) for c in classes], device=device), on, weight)


def make_teachers(model: Optional[TumorClassifier], anchor: Optional[TumorClassifier], cfg: TrainConfig,
                  classes: list[str], groups: list[str], device: torch.device) -> list[Teacher]:
    """The frozen models whose answers this run also learns (both loaded by fit before any data is decoded):
    ``model`` (``--distill``) on the training images whose source/sequence group is ``--distill-source`` or lies
    under it (all images when that is empty), with weight ``--distill-weight``; ``anchor`` (the ``--init`` weights,
    with ``--anchor-weight``) on every other training image. Empty without either. ValueError when a model's
    classes are not the student's, or a teacher would have no training image to score."""
    for m, flag in ((model, "--distill"), (anchor, "--init")):
        if m is not None and sorted(m.config.class_names) != sorted(classes):
            raise ValueError(f"the {flag} model's classes {list(m.config.class_names)} are not this run's {classes}")
    teachers = []
    rest = torch.ones(len(groups), dtype=torch.bool)
    if model is not None:
        src = cfg.distill_source.strip("/")
        on = torch.tensor([not src or g == src or g.startswith(src + "/") for g in groups], dtype=torch.bool)
        if not on.any():
            raise ValueError(f"--distill-source {cfg.distill_source!r} names no training images; the groups are "
                             f"{sorted(set(groups))}")
        teachers.append(_frozen(model, classes, on, cfg.distill_weight, device))
        rest = ~on
    if anchor is not None:
        if not rest.any():
            raise ValueError("--anchor-weight: --distill already scores every training image (give a "
                             "--distill-source), so the --init model would have none")
        teachers.append(_frozen(anchor, classes, rest, cfg.anchor_weight, device))
    return teachers


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, on: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: T^2 x KL(teacher || student) of the temperature-softened answers, summed over
    the rows marked ``on`` and divided by all N rows (a batch with few such slices weighs in less). 0 when none."""
    if not on.any():
        return student.new_zeros(())
    t = F.log_softmax(teacher[on].float() / temperature, 1)
    s = F.log_softmax(student[on].float() / temperature, 1)
    kl = (t.exp() * (t - s)).sum(1)
    return temperature ** 2 * kl.sum() / len(student)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of the training forward pass, or None for fp32. CPU: bf16 where native (use_bf16).
    CUDA: bf16 where the card has it, else fp16 (with a gradient scaler); 'fp32' turns autocast off."""
    if device.type == "cuda":
        if precision == "fp32":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if use_bf16(precision) else None


def train_one_epoch(model: TumorClassifier, images: torch.Tensor, labels: torch.Tensor, optimizer,
                    cfg: TrainConfig, generator: torch.Generator, scheduler=None, desc: str = "train",
                    masks: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None,
                    world: Optional[World] = None, net: Optional[torch.nn.Module] = None, scaler=None,
                    ema=None, teachers: Sequence[Teacher] = ()) -> dict:
    """One epoch: ``cfg.epoch_size`` images (default: as many as there are) drawn by ``weights`` (default: each
    once, in random order). Returns mean loss, mean heat-map loss and accuracy (of this rank's shares).

    ``masks`` (N x S x S uint8, zero where a slice has none) feed the heat-map objective (localisation_loss).
    Under torchrun (``world``, ``net`` = the DDP wrapper) every rank draws and augments the same global batch of
    ``cfg.batch_size`` x world size images and trains on its own share of it. The forward pass runs under
    autocast where ``cfg.precision`` asks for it (autocast_dtype): on CPUs with native bf16 about 1.6x faster;
    parameters, gradients, optimizer state and evaluation stay fp32. ``ema`` (make_ema) is updated after every
    step. With ``teachers`` (make_teachers), each one's slices also learn its answers (distillation_loss): a teacher
    reads each slice after the geometric augmentation only (not skull-stripped ones), the student after all of it,
    so the student learns the teacher's answer whatever the contrast, artefacts or framing."""
    world = world or World()
    net = net or model
    model.train()
    net.train()
    dtype = autocast_dtype(cfg.precision, world.device)
    n = len(images)
    draws = cfg.epoch_size or n
    if weights is None:
        order = torch.randperm(n, generator=generator)[:draws]
    else:
        order = torch.multinomial(weights, draws, replacement=True, generator=generator)
    global_batch = cfg.batch_size * world.size
    total_loss, total_loc, total_kd, correct, seen = 0.0, 0.0, 0.0, 0, 0
    bar = tqdm(range(0, draws, global_batch), desc=desc, unit="batch", leave=False, disable=not world.main)
    for start in bar:
        idx = order[start:start + global_batch]
        if len(idx) < 2 * world.size:
            continue  # batch norm needs two samples on every rank
        # on a GPU the training set lies there (split_tensors), so the whole batch is augmented there
        at = idx.to(images.device)
        x = images[at].float().div_(255).unsqueeze(1)
        y = labels[at]
        m = masks[at].float().unsqueeze(1) if masks is not None else None
        x, m, stripped = augment_geometry(x, generator, mask=m, mri=cfg.mri_aug, strip_p=cfg.strip_p)
        weak = x
        x = augment_appearance(x, generator, cfg.intensity_aug, cfg.curve_p, mri=cfg.mri_aug, artefact_p=cfg.artefact_p)
        mine = world.share(len(idx))
        x, y = x[mine].to(world.device, non_blocking=True), y[mine].to(world.device, non_blocking=True)
        m = m[mine].to(world.device, non_blocking=True) if m is not None else None
        targets = []  # (teacher, its rows, its logits) for each teacher with a row in this batch
        for teacher in teachers:
            kd_on = (teacher.on[idx] & ~stripped)[mine].to(world.device)
            if kd_on.any():
                t_logits = torch.zeros(len(y), len(teacher.order), device=world.device)
                t_logits[kd_on] = teacher.logits(weak[mine].to(world.device)[kd_on], dtype)
                targets.append((teacher, kd_on, t_logits))
        with torch.autocast(world.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits, _, maps = net(normalise(x, model.config.mean, model.config.std), with_maps=True)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loc = localisation_loss(model, maps, y, m, x, cfg) if m is not None else loss.new_zeros(())
        kd = loss.new_zeros(())
        for teacher, kd_on, t_logits in targets:
            kd = kd + teacher.weight * distillation_loss(logits, t_logits, kd_on, cfg.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss + loc + kd).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            (loss + loc + kd).backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(y)
        total_loc += loc.item() * len(y)
        total_kd += kd.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", loc=f"{total_loc / seen:.3f}", acc=f"{correct / seen:.3f}")
    return {"loss": total_loss / max(seen, 1), "loc_loss": total_loc / max(seen, 1),
            "distill_loss": total_kd / max(seen, 1), "acc": correct / max(seen, 1)}


def make_optimizer(model: TumorClassifier, cfg: TrainConfig):
    backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr
    groups = [{"params": model.backbone_parameters(), "lr": backbone_lr},
              {"params": model.head_parameters(), "lr": cfg.lr}]
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    if cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.2), True
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.3, patience=2), False


def plot_history(history: list[dict], path: Path) -> None:
    """Training curves: loss and accuracy per epoch, train vs validation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation (grouped)")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(epochs, [h["train_acc"] for h in history], "o-", label="train")
    b.plot(epochs, [h["val_acc"] for h in history], "o-", label="validation (grouped)")
    if "val_score" in history[0]:
        b.plot(epochs, [h["val_score"] for h in history], "s--", label="group score (mean and worst source/sequence)")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_state(path: Path, model, optimizer, scheduler, progress: "Progress", gen, cfg, ema=None) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "ema": None if ema is None else ema.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": progress.epoch, "generator": gen.get_state(),
             "best_model": progress.best_model, "best_score": progress.best_score, "best_epoch": progress.best_epoch,
             "history": json.dumps(progress.history), "config": json.dumps(asdict(cfg))}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interruption never leaves a half-written state


def state_file(out: Path) -> Path:
    """Where a run's resumable state lives: beside its model folder, never in it (the folder is what gets
    published; the state is 180 MB of optimizer moments)."""
    out = Path(out).resolve()
    return out.with_name(f"{out.name}.{STATE_NAME}")


def load_data(cfg: TrainConfig, log, progress: bool = True) -> dict[str, Any]:
    """Read every root, decode once, split by groups; write nothing."""
    col, test = datasets.read_roots(cfg.data)
    if cfg.max_images and len(col) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        keep = np.zeros(len(col), dtype=bool)
        keep[rng.choice(len(col), cfg.max_images, replace=False)] = True
        col = col.subset(keep)
    classes = col.class_names
    classes_in: dict[str, set] = {}
    for g, c in zip(col.groups(), col.classes):
        classes_in.setdefault(g, set()).add(c)
    for g, k in sorted(Counter(col.groups()).items()):
        log(f"data: {g}: {k} images, classes {sorted(classes_in[g])}")
    images, thumbs, masks, errors = datasets.load(col, cfg.img_size, progress=progress)
    ok = np.array([e is None for e in errors])
    if not ok.all():
        bad = int(np.argmin(ok))
        log(f"skipping {int((~ok).sum())} unreadable files, e.g. {col.paths[bad]}: {errors[bad]}")
    col, images, thumbs, masks = col.subset(ok), images[ok], thumbs[ok], masks[ok]
    split_from = Path(cfg.split_from) if cfg.split_from else None
    if split_from is None and Path(cfg.init).is_dir() and (Path(cfg.init) / "split.json").is_file():
        split_from = Path(cfg.init) / "split.json"
    fixed = None
    if split_from is not None:
        fixed = splits.previous_sides(col, split_from)
        log(f"split: {int((fixed >= 0).sum())} images keep their side from {split_from} "
            f"({int((fixed == 1).sum())} validation), so the initial model's training images are never validated on")
    is_val, groups = splits.split(col, thumbs, cfg.val_fraction, cfg.seed, cfg.dup_threshold, fixed)
    n_patients = len({(s, p) for s, p in zip(col.sources, col.patients) if p})
    log(f"split: {int((~is_val).sum())} train / {int(is_val.sum())} validation images, {groups.max() + 1} groups "
        f"(near-duplicates r >= {cfg.dup_threshold}, {n_patients} patients), none straddling; "
        f"{int(masks.any((1, 2)).sum())} slices with tumour masks")
    labels = np.array([classes.index(c) for c in col.classes])
    return {"col": col, "test": test, "classes": classes, "images": images, "masks": masks, "labels": labels,
            "is_val": is_val, "groups": groups}


def _log_validation(log, epoch: int, tr: dict, val: dict, seconds: float) -> None:
    p = val["pooled"]
    kd = f", distillation {tr['distill_loss']:.4f}" if tr.get("distill_loss") else ""
    log(f"epoch {epoch:3d}  train loss {tr['loss']:.4f} (heat-map {tr['loc_loss']:.4f}{kd}) acc {tr['acc']:.4f}  |  "
        f"val loss {val['loss']:.4f} acc {p['accuracy']:.4f} tumour sens {p['tumor_sensitivity']:.3f} "
        f"spec {p['tumor_specificity']:.3f}  |  group score {val['score']:.4f}  |  {seconds:.0f}s")
    log(format_group_table(val["groups"], extra=("pointing_game",)))


def fit(cfg: TrainConfig, log=print, command: str = "") -> Path:
    """Train (or resume) a model as ``cfg`` says and write the model folder ``cfg.out``. Returns the folder.

    The steps, each a function below: load_data (decode, split), sampling (weights per source), build (model,
    optimizer, schedule), resume (a saved state of the same run), train_epochs (train, validate, keep the best,
    save progress), finish (calibrate, score, write the model folder and its card). ``command``, the command line
    that ran it, goes into the model card so the run can be reproduced.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.data:
        raise ValueError("no data roots given (--data DIR, repeatable)")
    started = time.time()
    # fail before decoding anything when the initial weights cannot be had
    create_model(["a", "b"], init=cfg.init, img_size=cfg.img_size, output_stride=cfg.output_stride)
    teacher_model = load_model(cfg.distill) if cfg.distill else None
    anchor_model = None
    if cfg.anchor_weight:
        if not Path(cfg.init).is_dir():
            raise ValueError("--anchor-weight distils the --init model's own answers: --init must be a model "
                             f"folder (got {cfg.init!r})")
        anchor_model = load_model(cfg.init)
    world = setup(cfg.device)
    log = log if world.main else (lambda *a, **k: None)
    out = Path(cfg.out)
    try:
        if world.size > 1:
            log(f"distributed: {world.size} processes ({'NCCL' if world.device.type == 'cuda' else 'gloo'}), "
                f"global batch {cfg.batch_size * world.size} ({cfg.batch_size} per process)")
        data = load_data(cfg, log, progress=world.main)
        if world.main:
            out.mkdir(parents=True, exist_ok=True)
            splits.write_split(out / "split.json", data["col"], data["is_val"], data["groups"], seed=cfg.seed,
                               dup_threshold=cfg.dup_threshold, val_fraction=cfg.val_fraction,
                               grouping="patients (file names <case>_<slice>) and near-duplicates (32 x 32 "
                                        "thumbnail correlation), connected components")
        sets = split_tensors(data, world)
        weights, share = sampling(sets["train_col"], cfg, log)
        model, net, optimizer, (scheduler, per_step), scaler = build(cfg, data["classes"], len(sets["x_train"]),
                                                                     world, log)
        gen = torch.Generator().manual_seed(cfg.seed)  # the same epochs and augmentations on every rank
        torch.manual_seed(cfg.seed)
        ema = make_ema(model, cfg.ema)
        teachers = make_teachers(teacher_model, anchor_model, cfg, data["classes"], sets["train_col"].groups(),
                                 world.device)
        for teacher, name in zip(teachers, [cfg.distill or cfg.init, cfg.init]):
            log(f"distillation from {name} (weight {teacher.weight:g}, temperature {cfg.distill_temperature:g}) "
                f"on {int(teacher.on.sum())} of {len(teacher.on)} training images")
        progress = resume(state_file(out), cfg, model, optimizer, scheduler, gen, world, log, ema)
        train_epochs(progress, cfg, model, net, optimizer, (scheduler, per_step), scaler, gen, sets, weights, world,
                     log, out, ema, teachers)
        if world.main:
            finish(progress, cfg, model if ema is None else ema.module, data, sets, share, world, log, out, command,
                   started)
        return out
    finally:
        teardown(world)


def split_tensors(data: dict[str, Any], world: World) -> dict[str, Any]:
    """The training and validation sides as tensors (uint8 slices, labels, masks) and the validation groups."""
    is_val, images, masks, labels = data["is_val"], data["images"], data["masks"], data["labels"]
    sets = {"train_col": data["col"].subset(~is_val),
            "val_groups": [g for g, v in zip(data["col"].groups(), is_val) if v],
            "x_train": torch.from_numpy(images[~is_val]), "y_train": torch.from_numpy(labels[~is_val]).long(),
            "m_train": torch.from_numpy(masks[~is_val]),
            "x_val": torch.from_numpy(images[is_val]), "y_val": torch.from_numpy(labels[is_val]).long(),
            "m_val": torch.from_numpy(masks[is_val])}
    if world.device.type == "cuda":  # the training set on the GPU (192 px slices and masks: 0.7 GB), augmented there
        for k in ("x_train", "y_train", "m_train"):
            sets[k] = sets[k].to(world.device)
    return sets


def sampling(train_col: datasets.Collection, cfg: TrainConfig, log) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-image draw weights (datasets.sampling_weights) and each source/sequence group's share of the draws."""
    weights = torch.from_numpy(datasets.sampling_weights(train_col, cfg.source_balance))
    share: dict[str, float] = {}
    for g, w in zip(train_col.groups(), weights.tolist()):
        share[g] = share.get(g, 0.0) + w
    share = dict(sorted(share.items()))
    log(f"sampling share per epoch (source balance {cfg.source_balance:g}): "
        + ", ".join(f"{g} {v:.1%}" for g, v in share.items()))
    return weights, share


def build(cfg: TrainConfig, classes: list[str], n_train: int, world: World, log):
    """(model, the network the steps run through (DDP-wrapped under torchrun), optimizer, (scheduler, stepped
    per batch?), gradient scaler or None)."""
    model = create_model(classes, init=cfg.init, img_size=cfg.img_size, output_stride=cfg.output_stride)
    model = model.to(world.device, memory_format=torch.channels_last)
    if world.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels once
    net = world.wrap(model, cfg.sync_bn)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(cfg.precision, world.device) == torch.float16 else None
    if cfg.init == "scratch" and cfg.backbone_lr is not None and cfg.backbone_lr < cfg.lr:
        log(f"note: training from scratch with a backbone learning rate of {cfg.backbone_lr}; "
            "pass --backbone-lr same to train every layer at --lr")
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil((cfg.epoch_size or n_train) / cfg.batch_size))
    return model, net, optimizer, scheduler, scaler


def make_ema(model: TumorClassifier, decay: float):
    """An exponential moving average of ``model``'s weights and batch-norm statistics (decay per step), or None
    for decay 0. Its ``.module`` is a TumorClassifier like ``model``."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@dataclass
class Progress:
    """Where a run stands: epochs done, their history, the best epoch so far (its score and weights)."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_score: float = -1e9
    best_epoch: int = -1
    best_model: Optional[dict] = None
    resumed_after: int = 0  # epochs a resumed run had done before this process (their time counts too)


def resume(state_path: Path, cfg: TrainConfig, model, optimizer, scheduler, gen: torch.Generator, world: World,
           log, ema=None) -> Progress:
    """A fresh Progress, or the saved state of this same run (RESUME_KEYS must match) loaded into the model,
    optimizer, schedule, generator and weight average."""
    if not state_path.exists():
        return Progress()
    state = torch.load(state_path, weights_only=True, map_location=world.device)
    saved_cfg = json.loads(state["config"])
    defaults = asdict(TrainConfig())  # a state saved before a key existed had its default
    saved = {k: saved_cfg.get(k, defaults[k]) for k in RESUME_KEYS}
    if isinstance(saved["data"], str):
        saved["data"] = [saved["data"]]
    if saved != {k: asdict(cfg)[k] for k in RESUME_KEYS}:
        raise ValueError(f"{state_path} belongs to a different run (data, img_size, init, seed or output stride "
                         "differ); use another --out or delete it")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    saved_with_ema = state.get("ema") is not None
    if saved_with_ema != (ema is not None):
        how = "with" if saved_with_ema else "without"
        raise ValueError(f"{state_path} was saved {how} --ema; resume it {how} --ema, or use another --out")
    if ema is not None:
        ema.load_state_dict(state["ema"])
    log(f"resuming from {state_path} after epoch {int(state['epoch'])}")
    return Progress(int(state["epoch"]), json.loads(state["history"]), float(state["best_score"]),
                    int(state["best_epoch"]), state["best_model"], resumed_after=int(state["epoch"]))


def train_epochs(progress: Progress, cfg: TrainConfig, model, net, optimizer, scheduler, scaler, gen, sets, weights,
                 world: World, log, out: Path, ema=None, teachers: Sequence[Teacher] = ()) -> None:
    """The epochs still to run: train one (train_one_epoch), validate on rank 0 (validate), keep the best by the
    group score, save progress and curves, stop early after ``cfg.patience`` epochs without a better score.
    With ``ema`` (make_ema) the moving average is what is validated and kept; ``teachers``: see train_one_epoch."""
    scheduler, per_step = scheduler
    state_path = state_file(out)
    since_best = 0 if progress.best_epoch < 0 else progress.epoch - progress.best_epoch
    epoch = progress.epoch
    try:
        for epoch in range(progress.epoch + 1, cfg.epochs + 1):
            t0 = time.time()
            tr = train_one_epoch(model, sets["x_train"], sets["y_train"], optimizer, cfg, gen,
                                 scheduler if per_step else None, desc=f"epoch {epoch}/{cfg.epochs}",
                                 masks=sets["m_train"], weights=weights, world=world, net=net, scaler=scaler,
                                 ema=ema, teachers=teachers)
            progress.epoch = epoch
            stop, val_loss = 0.0, float("nan")
            if world.main:  # validation once, on rank 0; the others wait for its decisions
                judged = model if ema is None else ema.module
                val = validate(judged, sets["x_val"], sets["y_val"], sets["val_groups"], sets["m_val"],
                               select=cfg.select)
                val_loss = val["loss"]
                row = {"epoch": epoch, "train_loss": tr["loss"], "train_loc_loss": tr["loc_loss"],
                       "train_distill_loss": tr["distill_loss"],
                       "train_acc": tr["acc"], "val_loss": val["loss"], "val_acc": val["pooled"]["accuracy"],
                       "val_tumor_sensitivity": val["pooled"]["tumor_sensitivity"], "val_score": val["score"],
                       "val_groups": val["groups"], "seconds": time.time() - t0,
                       "lr": optimizer.param_groups[-1]["lr"]}
                progress.history.append(row)
                _log_validation(log, epoch, tr, val, row["seconds"])
                if val["score"] > progress.best_score:
                    progress.best_score, progress.best_epoch = val["score"], epoch
                    progress.best_model = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
                    since_best = 0
                else:
                    since_best += 1
                _save_state(state_path, model, optimizer, scheduler, progress, gen, cfg, ema)
                plot_history(progress.history, out / "training_curves.png")
                stop = float(bool(cfg.patience and since_best >= cfg.patience))
            val_loss, stop = world.broadcast(val_loss), world.broadcast(stop)
            if not per_step:
                scheduler.step(val_loss)
            world.barrier()
            if stop:
                log(f"early stop: the group score has not improved for {cfg.patience} epochs")
                break
    except KeyboardInterrupt:
        log(f"\ninterrupted during epoch {epoch}; progress up to the last finished epoch is saved in "
            f"{state_path}. Run the same command to resume.")
        raise


def finish(progress: Progress, cfg: TrainConfig, model, data, sets, share, world: World, log, out: Path,
           command: str, started: float) -> None:
    """The best epoch's weights (of the moving average with --ema), calibrated (temperature, abstention, MRI
    detector), scored (validation by group, the inverted-contrast proxy, Testing/ where a root has one), described
    and written with its model card."""
    x_train, y_train, x_val, y_val = sets["x_train"].cpu(), sets["y_train"].cpu(), sets["x_val"], sets["y_val"]
    model = model.to(world.device)  # scored where it trained (a GPU reads the 30,000 views in seconds)
    if progress.best_model is not None:
        model.load_state_dict(progress.best_model)
    model.config.metrics = {"split": "grouped validation (patients and near-duplicate groups never straddle "
                                     "train/validation)", "best_epoch": progress.best_epoch,
                            "selection": "0.5 x mean + 0.5 x worst, over source/sequence groups, of the mean of "
                                         "accuracy, tumour sensitivity, specificity"
                                         + (" and (where masks exist) the layer4 CAM pointing game"
                                            if cfg.select != "answers" else "")
                                         + f", each counted where it rests on >= {MIN_SUPPORT} images"}
    record_calibration(model, x_train, y_train, x_val, y_val, extra_view=strip_view, val_groups=sets["val_groups"])
    log("fitting the heat maps' offsets (training slices: mirrored, and against layer3's map)")
    model.config.cam_shift = {}  # (an --init model's offsets belong to its own weights)
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:cam_offset.MAX_SLICES]
    cam_offset.fit(model, x_train[pick])
    temperature = model.config.logit_scale()
    val = model.config.metrics["validation"]
    final = record_validation(model, x_val, y_val, sets["val_groups"], sets["m_val"], cfg.select)
    if data["test"] is not None:
        log("scoring the Testing/ split")
        test = data["test"]
        t_images, _, _, t_err = datasets.load(test, cfg.img_size)
        known = np.array([c in data["classes"] for c in test.classes]) & np.array([e is None for e in t_err])
        t_logits = predict_logits(model, torch.from_numpy(t_images[known]))
        t_labels = torch.tensor([data["classes"].index(c) for c, k in zip(test.classes, known) if k])
        model.config.metrics["test"] = evaluate_logits(t_logits, t_labels, model, temperature)
    history = progress.history
    model.config.training = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("notes",)},
        "epochs_run": len(history), "history": history,
        "seconds": round(time.time() - started, 1) + sum(h["seconds"] for h in history[:progress.resumed_after]),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                    + (f"{world.size} x cuda {torch.cuda.get_device_name(world.device)}" if world.device.type == "cuda"
                       else f"CPU x {world.size} process(es)"),
        "torch": torch.__version__, "data_images": len(data["col"]), "command": command,
        "data_sources": {g: int(k) for g, k in sorted(Counter(data["col"].groups()).items())},
        "sampling_share": share, "forward_precision": forward_precision(cfg.precision, world.device),
        "world_size": world.size, "global_batch": cfg.batch_size * world.size,
        "notes": list(cfg.notes),  # (the model card's; kept here so that every refit's card keeps them)
    }
    model = model.cpu().to(memory_format=torch.contiguous_format)
    save_model(model, out)
    plot_history(history, out / "training_curves.png")
    calib = model.config.metrics.get("calibration", {})
    if calib.get("abstain_below", 1.0) < 0.5 or (calib.get("error_when_answering") or 0) > 0.05:
        log(f"warning: this model abstains only below a confidence of {calib.get('abstain_below', 0):.2f} and errs on "
            f"{calib.get('error_when_answering') or 0:.1%} of the validation slices it answers: it is weak, and its "
            "'needs review' flag protects little. Train longer or on more data before serving it.")
    from .hub import write_model_card
    write_model_card(out, model.config)
    log(f"validation (grouped, calibrated, {model.config.describe_calibration()}): accuracy {val['accuracy']:.4f}, "
        f"tumour sensitivity {val['tumor_sensitivity']:.3f}, "
        f"ECE {model.config.metrics['ece_uncalibrated']:.3f} -> {val['ece']:.3f}, group score {final['score']:.4f}")
    log(format_group_table(final["groups"], extra=("pointing_game", "heat_in_mask")))
    log(f"wrote {out}")
