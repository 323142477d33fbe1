"""Heat maps: Grad-CAM / Grad-CAM++ from the prediction's own forward pass, other methods through pytorch-grad-cam, overlays.

The fast path (OnePass) runs ONE forward pass that gives both the prediction and the target layer's
activations, then differentiates the class score with respect to those activations only (autograd, from the
hooked layer onwards: the backbone's parameters are never part of the graph). At the last stage no backward
pass is needed at all: the score is linear in layer4's activations. Grad-CAM and Grad-CAM++ for any class come
from the same activations and gradients. pytorch-grad-cam (``compute_with_library``) is the reference; tests
check the fast maps against it.

A target may be several layers, ``"layer3+layer4"`` or with weights ``"layer3:0.75+layer4:0.25"``: each layer's
map is computed from the same pass and the maps are combined by a weighted geometric mean on the finest layer's
grid (a cell is hot only where every layer agrees), so that a deep layer's coarse, class-specific map and a
shallower layer's finer one sharpen each other.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from .config import use_bf16

FAST_METHODS = ("gradcam", "gradcam++")  # (in this order: ModelConfig.cam_shift_of's fallback)
CLASS_AGNOSTIC = ("eigencam",)  # maps that do not depend on the class asked for
LIBRARY_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "eigencam": "EigenCAM",
                   "hirescam": "HiResCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM", "ablationcam": "AblationCAM"}
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "EigenCAM (gradient-free)",
                 "hirescam": "HiResCAM", "layercam": "LayerCAM", "xgradcam": "XGradCAM",
                 "ablationcam": "AblationCAM (gradient-free)"}


def check_method(method: str) -> str:
    m = method.lower().replace("-", "").replace("_", "").replace(" ", "")
    m = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++"}.get(m, m)
    if m not in LIBRARY_METHODS:
        raise ValueError(f"unknown heat-map method {method!r}; choose one of {sorted(LIBRARY_METHODS)}")
    return m


_STRIDES = {"conv1": 2, "bn1": 2, "relu": 2, "maxpool": 4, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def parse_layers(spec: str) -> list[tuple[str, float]]:
    """A heat-map target as (layer, weight) pairs, weights summing to 1: ``"layer4"``, ``"layer3+layer4"`` (equal
    weights) or ``"layer3:0.75+layer4:0.25"`` (a part without a weight shares what the others leave)."""
    parts = []
    for part in str(spec).split("+"):
        name, _, weight = part.strip().partition(":")
        if not name:
            raise ValueError(f"empty layer name in heat-map target {spec!r}")
        try:
            w = float(weight) if weight else None
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in heat-map target {spec!r}") from None
        if w is not None and not (0 < w <= 1):
            raise ValueError(f"layer weights must be in (0, 1], got {w:g} in {spec!r}")
        parts.append((name, w))
    if len({n for n, _ in parts}) != len(parts):
        raise ValueError(f"a layer is named twice in heat-map target {spec!r}")
    given = sum(w for _, w in parts if w is not None)
    free = [n for n, w in parts if w is None]
    if given > 1 + 1e-6 or (not free and abs(given - 1) > 1e-6) or (free and given >= 1):
        raise ValueError(f"layer weights in {spec!r} must sum to 1")
    rest = (1 - given) / len(free) if free else 0.0
    return [(n, w if w is not None else rest) for n, w in parts]


def layer_stride(name: str, output_stride: int = 32) -> int:
    """How many input pixels one cell of a ResNet layer's output spans (layer3: 16, layer4: 32, or 16 when
    the last stage is dilated: ``output_stride`` 16); for several layers, the finest one's."""
    return min(min(_STRIDES.get(n.split(".")[0], 1), output_stride) for n, _ in parse_layers(name))


def fuse(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted geometric mean of N x h x w maps in [0, 1] on one grid (each layer's map brought to the finest
    grid first, cells centred as ``upsample`` draws them), rescaled so that each map's peak is 1."""
    if len(maps) == 1:
        return maps[0]
    size = max(m.shape[-1] for m in maps)
    out = np.ones((len(maps[0]), size, size), np.float32)
    for m, w in zip(maps, weights):
        out *= np.power(upsample(m, size) if m.shape[-1] != size else m, w)
    peak = out.reshape(len(out), -1).max(1)[:, None, None] if len(out) else 1.0
    return (out / np.maximum(peak, 1e-7)).astype(np.float32)


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
        acts = activations.detach().float().cpu().numpy()
        weights = grads.detach().float().cpu().numpy().mean(axis=(2, 3))
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
    return _normalise((weights[:, :, None, None] * activations).sum(1).float().cpu().numpy())


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


class OnePass:
    """Forward once, keep the target layers' activations, and differentiate class scores w.r.t. them only.

    >>> run = OnePass(model, "layer3")
    >>> logits = run(x)                    # the prediction
    >>> maps = run.cams(logits.argmax(1))  # its Grad-CAM maps, N x h x w
    - At the last stage (layer4 feeding average pooling and a linear head, eval mode) the score is linear in
      the activations, so d score / d A[k, i, j] = W[class, k] / (h * w) exactly: no backward pass at all;
      the forward pass runs in inference mode.
    - Anywhere else (layer3, or a sub-module path): autograd, from the first hooked activations onwards only;
      the graph is kept, so other classes' maps of the same pass need only another backward pass.
    - Several layers (``"layer3+layer4"``, see ``parse_layers``): every layer's map from the same pass, fused.
    Not thread-safe (it holds one pass's tensors): one instance per request, or a lock around it.
    """

    def __init__(self, model: torch.nn.Module, layer: str, precision: str = "auto"):
        """``precision`` is checked (auto, fp32, bf16) and kept for callers; the gradients are autograd's, in the
        forward pass's own precision."""
        use_bf16(precision)  # validates
        self.model = model
        parts = parse_layers(layer)
        self.weights = [w for _, w in parts]
        self.layers = [target_layer(model, name) for name, _ in parts]
        self.heads = [_linear_head(model, m) for m in self.layers]
        self.acts: list[Optional[torch.Tensor]] = [None] * len(self.layers)
        self.logits: Optional[torch.Tensor] = None
        self.features: Optional[torch.Tensor] = None  # the MRI detector's features, when the model provides them

    @property
    def analytic(self) -> bool:
        """True when every layer's gradients come from the head's weights (no backward pass)."""
        return all(h is not None for h in self.heads)

    @property
    def activations(self) -> Optional[torch.Tensor]:
        """The (first) target layer's activations of the last pass."""
        return self.acts[0]

    def _forward(self, x: torch.Tensor) -> None:
        if hasattr(self.model, "forward_with_features"):
            self.logits, features = self.model.forward_with_features(x)
            self.features = features.detach()
        else:
            self.logits = self.model(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def hook_for(i: int):
            def hook(_module, _inputs, output):
                if self.analytic or output.requires_grad:  # (a later layer: already in the graph)
                    self.acts[i] = output
                    return None
                output = output.detach().requires_grad_(True)  # the graph starts here
                self.acts[i] = output
                return output
            return hook

        handles = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(self.layers)]
        was_training = self.model.training
        if was_training:  # (.eval()/.train() walk every module: ~0.6 ms each, skipped when already in eval mode)
            self.model.eval()
        try:
            if self.analytic:
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

    def layer_grads(self, classes: Sequence[int] | torch.Tensor) -> list[torch.Tensor]:
        """d(logit of each image's class) / d(activations) for every target layer, for the last pass."""
        if self.logits is None or any(a is None for a in self.acts):
            raise RuntimeError("call the OnePass object on a batch first")
        classes = torch.as_tensor(classes, dtype=torch.long).view(-1)
        out: list[Optional[torch.Tensor]] = [None] * len(self.acts)
        for i, (head, act) in enumerate(zip(self.heads, self.acts)):
            if head is not None:  # the head's weight row, spread evenly by the average pooling
                with torch.inference_mode():
                    n, _, h, w = act.shape
                    out[i] = (head.weight[classes] / (h * w))[:, :, None, None].expand(n, -1, h, w)
        todo = [i for i, g in enumerate(out) if g is None]
        if todo:
            score = self.logits.gather(1, classes.view(-1, 1)).sum()
            for i, g in zip(todo, torch.autograd.grad(score, [self.acts[i] for i in todo], retain_graph=True)):
                out[i] = g
        return out

    def grads(self, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """d(logit of each image's class) / d(activations) of the (first) target layer, for the last pass."""
        return self.layer_grads(classes)[0]

    def cams(self, classes: Sequence[int] | torch.Tensor, method: str = "gradcam") -> np.ndarray:
        """Maps of the given class per image, in [0, 1], at the layer's resolution (several layers: fused on the
        finest layer's grid)."""
        with torch.inference_mode(self.analytic):
            grads = self.layer_grads(classes)
            maps = [cam_from_grads(a.detach(), g, method) for a, g in zip(self.acts, grads)]
        return fuse(maps, self.weights)


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Per-map shift to 0 and division by (1e-7 + max), as pytorch-grad-cam's scale_cam_image does."""
    flat = maps.reshape(len(maps), -1)
    maps = maps - flat.min(1)[:, None, None]
    return (maps / (1e-7 + maps.reshape(len(maps), -1).max(1)[:, None, None])).astype(np.float32)


def ablation_is_closed_form(model: torch.nn.Module, layer: str) -> bool:
    """Whether AblationCAM of ``layer`` (every layer of a fused target) takes one pass here (``ablation_at_head``)
    rather than pytorch-grad-cam's forward pass per channel (minutes a slice on a CPU)."""
    return all(_linear_head(model, target_layer(model, name)) is not None for name, _ in parse_layers(layer))


def ablation_at_head(model: torch.nn.Module, x: torch.Tensor, classes: Sequence[int],
                     layer: str) -> Optional[np.ndarray]:
    """AblationCAM in closed form where the target is the last stage feeding average pooling and a linear head
    (as ``OnePass`` analytic gradients): pytorch-grad-cam's maps without its forward pass per channel, or None
    where the closed form does not hold (another layer, another head, activations that are not ReLU's).

    The library sets channel k of the layer's output to 0 (its ablation value when the activations' minimum is
    0), runs the rest of the network and weighs channel k by (score - ablated score) / score. After the layer
    the score is W[c] . mean(A) + b, so the drop is exactly W[c, k] * mean(A_k): one forward pass for all
    channels. The map is then drawn as the library draws it (ReLU, min-max, plain resize to the input, min-max).
    A score of exactly 0 (where the library divides by zero) is taken as 1."""
    module = target_layer(model, layer)
    head = _linear_head(model, module)
    if head is None:
        return None
    kept: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(x)
    finally:
        handle.remove()
        model.train(was_training)
    acts = kept[-1].float()
    if (acts.flatten(1).min(1).values != 0).any():  # not ReLU-like: the library ablates with min - 1e7 instead
        return None
    idx = torch.as_tensor(list(classes), dtype=torch.long).view(-1)
    score = logits.float().gather(1, idx.view(-1, 1))
    score = torch.where(score == 0, torch.ones_like(score), score)
    weights = head.weight.float()[idx] * acts.mean(dim=(2, 3)) / score  # N x K: the relative drop per channel
    cams = np.maximum(torch.einsum("nk,nkhw->nhw", weights, acts).cpu().numpy(), 0)
    h, w = x.shape[-2:]
    maps = np.stack([cv2.resize(m, (w, h)) for m in _minmax(cams)])
    return _minmax(np.maximum(maps, 0))  # (the library's aggregation over layers: ReLU, then min-max again)


def compute_with_library(model: torch.nn.Module, x: torch.Tensor, classes: Sequence[int], method: str,
                         layer: str) -> np.ndarray:
    """Maps from pytorch-grad-cam (any of LIBRARY_METHODS), at input resolution, N x H x W in [0, 1].
    AblationCAM at the last stage is computed in closed form (``ablation_at_head``): the same maps, one pass."""
    method = check_method(method)
    if method == "ablationcam":
        maps = ablation_at_head(model, x, classes, layer)
        if maps is not None:
            return maps
    return _library(model, x, classes, method, layer)


def _library(model: torch.nn.Module, x: torch.Tensor, classes: Sequence[int], method: str, layer: str) -> np.ndarray:
    """pytorch-grad-cam itself."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pytorch_grad_cam, LIBRARY_METHODS[method])
    was_training = model.training
    with cls(model=model, target_layers=[target_layer(model, layer)]) as cam:
        # input gradient on: works whether or not the model's parameters are frozen
        maps = cam(input_tensor=x.detach().contiguous().requires_grad_(True), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def library_maps(model: torch.nn.Module, x: torch.Tensor, classes: Sequence[int], method: str, layer: str,
                 output_stride: int = 32) -> np.ndarray:
    """pytorch-grad-cam's maps of each target layer, each cell moved to its receptive field's centre
    (``recentre``), fused as the one-pass maps are: N x H x W in [0, 1] at input resolution."""
    parts = parse_layers(layer)
    maps = [recentre(compute_with_library(model, x, classes, method, name), layer_stride(name, output_stride))
            for name, _ in parts]
    return fuse(maps, [w for _, w in parts])


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
    return translate(maps, [-shift] * len(maps), [-shift] * len(maps), border=cv2.BORDER_REPLICATE)


def translate(maps: np.ndarray, dx: Sequence[float], dy: Optional[Sequence[float]] = None,
              border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """N x H x W maps, map i moved ``dx[i]`` pixels right and ``dy[i]`` down (bilinear; the uncovered edge gets
    no heat unless ``border`` says otherwise)."""
    dy = [0.0] * len(maps) if dy is None else dy
    return np.stack([m if not (x or y) else
                     cv2.warpAffine(m.astype(np.float32), np.float32([[1, 0, x], [0, 1, y]]), (m.shape[1], m.shape[0]),
                                    flags=cv2.INTER_LINEAR, borderMode=border)
                     for m, x, y in zip(maps, dx, dy)]) if len(maps) else maps


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
    alpha = float(np.clip(alpha, 0.0, 1.0))
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    size = (gray.shape[1], gray.shape[0])
    if colour.shape[:2] != gray.shape:
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_LINEAR)
    if floor <= 0:
        return cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)  # uint8 arithmetic, saturating
    weight = np.clip((heat - floor) * (alpha / 0.1), 0.0, alpha)  # per pixel: 0 below the floor, alpha above it
    if weight.shape != gray.shape:
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_LINEAR)
    return cv2.blendLinear(base, colour, 1.0 - weight, weight)
