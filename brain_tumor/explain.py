"""Heat maps: Grad-CAM / Grad-CAM++ in one pass, other methods through pytorch-grad-cam, and overlays.

The fast path runs ONE forward pass that gives both the prediction and the target layer's activations,
then differentiates the class score with respect to those activations only: the backward pass covers
the layers after the target layer (written out by hand for ResNet stages, OnePass), never the backbone's
parameters. Grad-CAM and Grad-CAM++ for any class come from the same activations and gradients.
pytorch-grad-cam (``compute_with_library``) is the reference; tests check the fast maps against it.
"""
from __future__ import annotations

import weakref
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet

from .config import use_bf16
from .model import TumorClassifier

FAST_METHODS = ("gradcam", "gradcam++")
LIBRARY_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM",
                   "hirescam": "HiResCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM", "ablationcam": "AblationCAM"}
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM (gradient-free)",
                 "hirescam": "HiResCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM",
                 "ablationcam": "AblationCAM (gradient-free, slow)"}


def check_method(method: str) -> str:
    m = method.lower().replace("-", "").replace("_", "").replace(" ", "")
    m = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(m, m)
    if m not in LIBRARY_METHODS:
        raise ValueError(f"unknown heat-map method {method!r}; choose one of {sorted(LIBRARY_METHODS)}")
    return m


_STRIDES = {"conv1": 2, "bn1": 2, "relu": 2, "maxpool": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def layer_stride(name: str, output_stride: int = 32) -> int:
    """How many input pixels one cell of a ResNet layer's output spans (layer3: 16, layer4: 32, or 16 when
    the last stage is dilated: ``output_stride`` 16)."""
    return min(_STRIDES.get(name.split(".")[0], 1), output_stride)


def target_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module named ``name`` inside the ResNet (``layer3``, ``layer4``, ``layer4.1.conv2`` ...)."""
    net = getattr(model, "net", model)
    try:
        return net.get_submodule(name)
    except AttributeError:
        valid = [n for n, _ in net.named_children() if n.startswith("layer")]
        raise ValueError(f"unknown target layer {name!r}; choose one of {valid} (or a sub-module path)") from None


def _normalise(cam: np.ndarray) -> np.ndarray:
    """ReLU, then per-map min-max to [0, 1] (as pytorch-grad-cam's scale_cam_image does)."""
    cam = np.maximum(cam, 0)
    flat = cam.reshape(len(cam), -1)
    lo = flat.min(1)[:, None, None]
    hi = flat.max(1)[:, None, None]
    return ((cam - lo) / (hi - lo + 1e-7)).astype(np.float32)


def cam_from_grads(activations: torch.Tensor, grads: torch.Tensor, method: str) -> np.ndarray:
    """Grad-CAM or Grad-CAM++ maps (N x h x w, [0, 1]) from a layer's activations and score gradients."""
    if method == "gradcam":  # in numpy: a few small arrays, where torch's threaded kernels only add latency
        acts = activations.detach().float().numpy()
        weights = grads.detach().float().numpy().mean(axis=(2, 3))
        return _normalise(np.einsum("nk,nkhw->nhw", weights, acts, optimize=False))
    if method == "gradcam++":
        g2 = grads ** 2
        g3 = g2 * grads
        sum_act = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_act * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        weights = (grads.clamp(min=0) * aij).sum(dim=(2, 3))
    else:
        raise ValueError(f"the one-pass path computes {FAST_METHODS}, not {method!r}")
    return _normalise((weights[:, :, None, None] * activations).sum(1).float().numpy())


def _linear_head(model: torch.nn.Module, layer: torch.nn.Module) -> Optional[torch.nn.Linear]:
    """The Linear layer that reads the global average of ``layer``'s output, if ``layer`` is the last stage of a
    ResNet whose head is avgpool -> (Dropout) -> Linear; None otherwise."""
    net = getattr(model, "net", model)
    if layer is not getattr(net, "layer4", None) or not isinstance(getattr(net, "avgpool", None), torch.nn.AdaptiveAvgPool2d):
        return None
    head = list(net.fc) if isinstance(net.fc, torch.nn.Sequential) else [net.fc]
    if not isinstance(head[-1], torch.nn.Linear) or not all(isinstance(m, torch.nn.Dropout) for m in head[:-1]):
        return None
    return head[-1]


_STAGES = ("layer1", "layer2", "layer3", "layer4")
_ADJOINTS: "weakref.WeakKeyDictionary[torch.nn.Module, _Adjoint]" = weakref.WeakKeyDictionary()


def _later_blocks(model: torch.nn.Module, layer: torch.nn.Module) -> Optional[list[BasicBlock]]:
    """The residual blocks after ``layer`` when the forward and backward passes through them can be written by
    hand: ``layer`` is a stage before the last of a torchvision ResNet of BasicBlocks (alone, or in a
    TumorClassifier with its own forward) whose BatchNorms keep running statistics, and the head is avgpool ->
    (Dropout) -> Linear. None otherwise (hooks and autograd then do it)."""
    net = getattr(model, "net", model)
    own_forward = getattr(type(model), "forward_with_features", None)
    standard = type(net) is ResNet and (model is net or own_forward is TumorClassifier.forward_with_features)
    stage = next((n for n in _STAGES[:-1] if getattr(net, n, None) is layer), None)
    if not standard or stage is None or _linear_head(model, getattr(net, "layer4", None)) is None:
        return None
    blocks = [b for n in _STAGES[_STAGES.index(stage) + 1:] for b in getattr(net, n)]
    for b in blocks:
        if type(b) is not BasicBlock:
            return None
        pairs = [(b.conv1, b.bn1), (b.conv2, b.bn2)] + ([] if b.downsample is None else [tuple(b.downsample)])
        for pair in pairs:
            if len(pair) != 2 or type(pair[0]) is not torch.nn.Conv2d or pair[0].groups != 1 or \
                    type(pair[1]) is not torch.nn.BatchNorm2d or pair[1].running_var is None:
                return None
    return blocks or None


class _Adjoint:
    """d/d(input) of one eval-mode conv -> BatchNorm pair: the conv's transposed convolution, with the BatchNorm's
    scale folded into the weight (per output channel), in ``dtype``, channels-last.

    The weight is also kept pre-packed in oneDNN's layout per input shape (the few most recent): at batch 1 the
    plain ``conv_transpose2d`` re-lays the weight out on every call, which costs more than the arithmetic
    (benchmarks/heatmap_cost.py: the whole bf16 backward pass 3.2 ms unpacked, 2.0 ms packed). Where that
    private op is missing or fails, the plain call is used. Holds the conv's tensors, never the module (the
    cache is keyed weakly on it)."""

    PACKED_SHAPES = 4

    def __init__(self, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype):
        self.dtype = dtype
        self.stride, self.padding, self.dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
        self.kernel_size, self.groups = list(conv.kernel_size), conv.groups
        self.sources = [t for t in (conv.weight, bn.running_var, bn.weight) if t is not None]
        self.versions = [t._version for t in self.sources]
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps) * (1 if bn.weight is None else bn.weight)
            folded = conv.weight * scale[:, None, None, None]
            self.weight = folded.to(dtype).contiguous(memory_format=torch.channels_last)
        self.packed: dict[tuple, tuple[list[int], Optional[torch.Tensor]]] = {}

    def fresh(self, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype) -> bool:
        """Made from these very tensors, unchanged since, in this dtype?"""
        now = [t for t in (conv.weight, bn.running_var, bn.weight) if t is not None]
        return dtype == self.dtype and len(now) == len(self.sources) and all(
            a is b and a._version == v for a, b, v in zip(now, self.sources, self.versions))

    @classmethod
    def of(cls, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, dtype: torch.dtype) -> "_Adjoint":
        """The cached adjoint of ``conv``, made again when its or the BatchNorm's tensors changed."""
        hit = _ADJOINTS.get(conv)
        if hit is None or not hit.fresh(conv, bn, dtype):
            hit = _ADJOINTS[conv] = cls(conv, bn, dtype)
        return hit

    def _pack(self, shape: tuple, output_padding: list[int]) -> Optional[torch.Tensor]:
        try:
            return torch.ops.mkldnn._reorder_convolution_transpose_weight(
                self.weight, self.padding, output_padding, self.stride, self.dilation, self.groups, list(shape))
        except (AttributeError, RuntimeError, NotImplementedError):
            return None

    def __call__(self, g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The input gradient (N x C_in x size) for the output gradient ``g``."""
        if g.dtype != self.dtype or not g.is_contiguous(memory_format=torch.channels_last):
            g = g.to(self.dtype).contiguous(memory_format=torch.channels_last)
        key = (tuple(g.shape), size)
        entry = self.packed.get(key)
        if entry is None:
            output_padding = [size[i] - ((g.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                                         + self.dilation[i] * (self.kernel_size[i] - 1) + 1) for i in (0, 1)]
            entry = (output_padding, self._pack(key[0], output_padding))
            while len(self.packed) >= self.PACKED_SHAPES:
                self.packed.pop(next(iter(self.packed)), None)
            self.packed[key] = entry
        output_padding, packed = entry
        if packed is not None:
            try:
                return torch.ops.mkldnn._convolution_transpose_pointwise(
                    g, packed, None, self.padding, output_padding, self.stride, self.dilation, self.groups,
                    "none", [], "")
            except (AttributeError, RuntimeError, NotImplementedError):
                self.packed[key] = (output_padding, None)
        return F.conv_transpose2d(g, self.weight, stride=self.stride, padding=self.padding,
                                  output_padding=output_padding, dilation=self.dilation, groups=self.groups)


class OnePass:
    """Forward once, keep the target layer's activations, and differentiate class scores w.r.t. them only.

    >>> run = OnePass(model, "layer3")
    >>> logits = run(x)                    # the prediction
    >>> maps = run.cams(logits.argmax(1))  # its Grad-CAM maps, N x h x w
    Three ways to the gradient, fastest first; the forward pass is the prediction's own in each:
    - At the last stage (layer4 feeding average pooling and a linear head, eval mode) the score is linear in
      the activations, so d score / d A[k, i, j] = W[class, k] / (h * w) exactly: no backward pass at all;
      the forward pass runs in inference mode.
    - At an earlier stage of a ResNet of BasicBlocks (layer3, the default): the later blocks are run and
      differentiated by hand. The forward pass (inference mode, the same modules called stage by stage)
      keeps each ReLU's mask; the backward pass is one transposed convolution per conv, with the BatchNorm
      scale folded into its weight and the weight pre-packed for oneDNN (_Adjoint), in bf16 where the CPU
      computes bf16 natively (``precision="auto"``; fp32 elsewhere). Gradients match autograd's (to bf16
      rounding) and the maps pytorch-grad-cam's (tests). At batch 1 on a 2-core CPU: ~2 ms, against ~6.5 ms
      for autograd.
    - Anywhere else (a sub-module path, other blocks): autograd, from the hooked activations onwards only.
    The backward pass never touches the backbone's parameters.
    Not thread-safe (it holds one pass's tensors): one instance per request, or a lock around it.
    """

    def __init__(self, model: torch.nn.Module, layer: str, precision: str = "auto"):
        self.model = model
        self.layer = target_layer(model, layer)
        self.head = _linear_head(model, self.layer)
        self.blocks = None if self.head is not None else _later_blocks(model, self.layer)
        # the head after the last stage, where the hand-written backward pass starts
        self._last_head = None if self.blocks is None else _linear_head(model, target_layer(model, "layer4"))
        self.dtype = torch.bfloat16 if use_bf16(precision) else torch.float32
        self.activations: Optional[torch.Tensor] = None
        self.logits: Optional[torch.Tensor] = None
        self.features: Optional[torch.Tensor] = None  # pooled features, when the model provides them
        self._masks: dict[tuple[int, str], torch.Tensor] = {}

    @property
    def analytic(self) -> bool:
        """True when the gradients come from the head's weights (no backward pass)."""
        return self.head is not None

    @property
    def by_hand(self) -> bool:
        """True when the backward pass through the later blocks is the hand-written one (no autograd)."""
        return self.blocks is not None

    def _forward(self, x: torch.Tensor) -> None:
        if hasattr(self.model, "forward_with_features"):
            self.logits, features = self.model.forward_with_features(x)
            self.features = features.detach()
        else:
            self.logits = self.model(x)

    def _forward_by_hand(self, x: torch.Tensor) -> None:
        """The model's forward pass, stage by stage (a torchvision ResNet in a TumorClassifier or alone: what
        _later_blocks checked), keeping the target stage's output and, in the later blocks, where each ReLU lets
        gradients through -- without hooks, which cost ~0.4 ms a pass at batch 1. The same modules in the same
        order as forward_with_features (tests check the logits against it)."""
        net = getattr(self.model, "net", self.model)
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for name in _STAGES:
            h = getattr(net, name)(h)
            if getattr(net, name) is self.layer:
                break
        self.activations = h
        for i, b in enumerate(self.blocks):  # BasicBlock.forward, keeping its ReLU masks
            out = b.bn1(b.conv1(h))
            self._masks[i, "relu1"] = out > 0
            out = b.bn2(b.conv2(b.relu(out)))
            out = b.relu(out + (b.downsample(h) if b.downsample is not None else h))
            self._masks[i, "out"] = out > 0
            h = out
        self.features = torch.flatten(net.avgpool(h), 1)
        self.logits = net.fc(self.features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def hook(_module, _inputs, output):
            if self.analytic:
                self.activations = output
                return None
            output = output.detach().requires_grad_(True)
            self.activations = output
            return output

        handles = [] if self.by_hand else [self.layer.register_forward_hook(hook)]
        was_training = self.model.training
        if was_training:  # (.eval()/.train() walk every module: ~0.6 ms each, skipped when already in eval mode)
            self.model.eval()
        try:
            if self.by_hand:
                with torch.inference_mode():
                    self._forward_by_hand(x)
            elif self.analytic:
                with torch.inference_mode():
                    self._forward(x)
            else:
                # parameters stay frozen: gradients flow only from the hooked activations onwards
                flags = [p.requires_grad for p in self.model.parameters()]
                for p in self.model.parameters():
                    p.requires_grad_(False)
                try:
                    with torch.enable_grad():
                        self._forward(x)
                finally:
                    for p, f in zip(self.model.parameters(), flags):
                        p.requires_grad_(f)
        finally:
            for h in handles:
                h.remove()
            if was_training:
                self.model.train()
        return self.logits.detach()

    def _backward_by_hand(self, classes: torch.Tensor) -> torch.Tensor:
        """The gradient at the target layer, through the later BasicBlocks in reverse: for each block
        y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), so with g = dy * [y > 0]
        dx = conv1^T(bn1 * [relu1 > 0] * conv2^T(bn2 * g)) + shortcut^T(g)."""
        blocks, masks = self.blocks, self._masks
        last = masks[len(blocks) - 1, "out"]
        g = None
        for i in range(len(blocks) - 1, -1, -1):
            b = blocks[i]
            size = tuple(self.activations.shape[2:]) if i == 0 else tuple(masks[i - 1, "out"].shape[2:])
            if g is None:  # the head's gradient, spread by the pooling, times the last ReLU's mask: one op
                h, w = last.shape[2:]
                g = (self._last_head.weight[classes] / (h * w)).to(self.dtype)[:, :, None, None] * last
            else:
                g = g * masks[i, "out"]
            inner = _Adjoint.of(b.conv2, b.bn2, self.dtype)(g, tuple(g.shape[2:]))
            inner = inner * masks[i, "relu1"]
            dx = _Adjoint.of(b.conv1, b.bn1, self.dtype)(inner, size)
            if b.downsample is not None:
                dx = dx + _Adjoint.of(b.downsample[0], b.downsample[1], self.dtype)(g, size)
            else:
                dx = dx + g
            g = dx
        return g.float()

    def grads(self, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """d(logit of each image's class) / d(activations), for the last pass."""
        if self.logits is None or self.activations is None:
            raise RuntimeError("call the OnePass object on a batch first")
        classes = torch.as_tensor(classes, dtype=torch.long).view(-1)
        if self.analytic:  # the head's weight row, spread evenly by the average pooling
            with torch.inference_mode():
                n, _, h, w = self.activations.shape
                return (self.head.weight[classes] / (h * w))[:, :, None, None].expand(n, -1, h, w)
        if self.by_hand:
            with torch.inference_mode():
                return self._backward_by_hand(classes)
        score = self.logits.gather(1, classes.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, self.activations, retain_graph=True)
        return grad

    def cams(self, classes: Sequence[int] | torch.Tensor, method: str = "gradcam") -> np.ndarray:
        """Maps of the given class per image, at the layer's resolution, in [0, 1]."""
        with torch.inference_mode(self.analytic or self.by_hand):
            return cam_from_grads(self.activations.detach(), self.grads(classes), method)


def compute_with_library(model: torch.nn.Module, x: torch.Tensor, classes: Sequence[int], method: str,
                         layer: str) -> np.ndarray:
    """Maps from pytorch-grad-cam (any of LIBRARY_METHODS), at input resolution, N x H x W in [0, 1]."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    method = check_method(method)
    cls = getattr(pytorch_grad_cam, LIBRARY_METHODS[method])
    was_training = model.training
    with cls(model=model, target_layers=[target_layer(model, layer)]) as cam:
        # input gradient on: works whether or not the model's parameters are frozen
        maps = cam(input_tensor=x.detach().contiguous().requires_grad_(True), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def upsample(maps: np.ndarray, size: int, centred: bool = True) -> np.ndarray:
    """N x h x w maps -> N x size x size, bilinear, kept in [0, 1].

    ``centred`` (the default) puts each map cell where its receptive field is centred: in a ResNet every
    stride-2 layer (kernel 3 or 7 padded by 1 or 3, or 1x1 unpadded) centres output cell i on input pixel
    2i, so a layer of stride s centres cell i on pixel s*i. A plain image resize (cv2, pytorch-grad-cam) assumes
    s*i + (s-1)/2 and so draws the whole map (s-1)/2 pixels too far right and down: 7.5 px of 128 at layer3,
    15.5 px at layer4. ``centred=False`` gives the plain resize (as pytorch-grad-cam draws it).
    """
    if not len(maps):
        return np.zeros((0, size, size), np.float32)
    if not centred:
        return np.stack([np.clip(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR), 0, 1) for m in maps])
    out = np.empty((len(maps), size, size), np.float32)
    for m, dst in zip(maps, out):
        sy, sx = size / m.shape[0], size / m.shape[1]
        warp = np.float32([[sx, 0, 0], [0, sy, 0]])  # map cell (i, j) -> input pixel (s*i, s*j)
        cv2.warpAffine(np.asarray(m, np.float32), warp, (size, size), dst=dst, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return np.clip(out, 0, 1, out=out)


def recentre(maps: np.ndarray, stride: float) -> np.ndarray:
    """Shift input-resolution maps drawn by a plain resize (pytorch-grad-cam's) back by (stride-1)/2 pixels
    so that they sit where ``upsample(..., centred=True)`` puts them."""
    shift = (stride - 1) / 2
    warp = np.float32([[1, 0, -shift], [0, 1, -shift]])
    return np.stack([cv2.warpAffine(m.astype(np.float32), warp, (m.shape[1], m.shape[0]), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE) for m in maps]) if len(maps) else maps


_JET_RGB = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)[:, :, ::-1].copy()


HEAT_FLOOR = 0.2  # overlay: heat below this share of the slice's peak is left transparent, so the scan shows through


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45, floor: float = HEAT_FLOOR) -> np.ndarray:
    """Blend a [0, 1] heat map (JET colours: blue low, red high) over a grayscale image: H x W x 3 uint8 RGB.

    Heat below ``floor`` is transparent (the scan unchanged there) and fades in over the next 0.1, so faint,
    diffuse heat does not paint the whole slice and its background blue; ``floor=0`` colours everything.
    The map is coloured at its own size (256 levels, straight into RGB order) and the colours are resized to
    the image, as a browser shows a small picture large: faster than colouring a 512 px map, and
    the same picture (mean difference 0.1 of 255 against colouring the resized map; up to 40 in the few pixels
    where the map crosses a corner of the JET scale within one of its own pixels)."""
    heat = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0, 1)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), _JET_RGB)
    weight = np.clip((heat - floor) / 0.1, 0.0, 1.0) if floor > 0 else np.ones_like(heat)
    if colour.shape[:2] != gray.shape:
        size = (gray.shape[1], gray.shape[0])
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_LINEAR)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_LINEAR)
    weight = (weight * float(np.clip(alpha, 0.0, 1.0)))[..., None]
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB).astype(np.float32)
    return np.clip(base + weight * (colour.astype(np.float32) - base) + 0.5, 0, 255).astype(np.uint8)
