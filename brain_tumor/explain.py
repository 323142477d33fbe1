"""Heat maps: Grad-CAM / Grad-CAM++ in one pass, other methods through pytorch-grad-cam, and overlays.

The fast path runs ONE forward pass that gives both the prediction and the target layer's activations,
then differentiates the class score with respect to those activations only: the backward pass covers
the layers after the target layer, never the backbone's parameters. Grad-CAM and Grad-CAM++ for any
class come from the same activations and gradients. pytorch-grad-cam (``compute_with_library``) is the
reference; tests check the fast maps against it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import torch

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


def target_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module named ``name`` inside the ResNet (``layer3``, ``layer4``, ``layer4.1.conv2`` ...)."""
    net = getattr(model, "net", model)
    try:
        return net.get_submodule(name)
    except AttributeError:
        valid = [n for n, _ in net.named_children() if n.startswith("layer")]
        raise ValueError(f"unknown target layer {name!r}; choose one of {valid} (or a sub-module path)") from None


def _normalise_maps(cam: torch.Tensor) -> np.ndarray:
    """ReLU, then per-map min-max to [0, 1] (as pytorch-grad-cam's scale_cam_image does)."""
    cam = cam.clamp(min=0)
    flat = cam.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    return ((cam - lo) / (hi - lo + 1e-7)).numpy().astype(np.float32)


def cam_from_grads(activations: torch.Tensor, grads: torch.Tensor, method: str) -> np.ndarray:
    """Grad-CAM or Grad-CAM++ maps (N x h x w, [0, 1]) from a layer's activations and score gradients."""
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3))
    elif method == "gradcam++":
        g2 = grads ** 2
        g3 = g2 * grads
        sum_act = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_act * g3 + 1e-6)
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        weights = (grads.clamp(min=0) * aij).sum(dim=(2, 3))
    else:
        raise ValueError(f"the one-pass path computes {FAST_METHODS}, not {method!r}")
    return _normalise_maps((weights[:, :, None, None] * activations).sum(1))


class OnePass:
    """Forward once, keep the target layer's activations, and differentiate class scores w.r.t. them only.

    >>> run = OnePass(model, "layer4")
    >>> logits = run(x)                    # the prediction
    >>> maps = run.cams(logits.argmax(1))  # its Grad-CAM maps, N x h x w
    Not thread-safe (it holds one pass's tensors): one instance per request, or a lock around it.
    """

    def __init__(self, model: torch.nn.Module, layer: str):
        self.model = model
        self.layer = target_layer(model, layer)
        self.activations: Optional[torch.Tensor] = None
        self.logits: Optional[torch.Tensor] = None
        self.features: Optional[torch.Tensor] = None  # pooled features, when the model provides them

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def hook(_module, _inputs, output):
            output = output.detach().requires_grad_(True)
            self.activations = output
            return output

        handle = self.layer.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            # parameters stay frozen: gradients flow only from the hooked activations onwards
            flags = [p.requires_grad for p in self.model.parameters()]
            for p in self.model.parameters():
                p.requires_grad_(False)
            try:
                with torch.enable_grad():
                    if hasattr(self.model, "forward_with_features"):
                        self.logits, features = self.model.forward_with_features(x)
                        self.features = features.detach()
                    else:
                        self.logits = self.model(x)
            finally:
                for p, f in zip(self.model.parameters(), flags):
                    p.requires_grad_(f)
        finally:
            handle.remove()
            self.model.train(was_training)
        return self.logits.detach()

    def grads(self, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """d(logit of each image's class) / d(activations), for the last pass."""
        if self.logits is None or self.activations is None:
            raise RuntimeError("call the OnePass object on a batch first")
        classes = torch.as_tensor(classes, dtype=torch.long).view(-1, 1)
        score = self.logits.gather(1, classes).sum()
        (grad,) = torch.autograd.grad(score, self.activations, retain_graph=True)
        return grad

    def cams(self, classes: Sequence[int] | torch.Tensor, method: str = "gradcam") -> np.ndarray:
        """Maps of the given class per image, at the layer's resolution, in [0, 1]."""
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


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """N x h x w maps -> N x size x size, bilinear, kept in [0, 1]."""
    return np.stack([np.clip(cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR), 0, 1) for m in maps]) \
        if len(maps) else np.zeros((0, size, size), np.float32)


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (JET colours) over a grayscale image: H x W x 3 uint8 RGB."""
    if heat.shape != gray.shape:
        heat = cv2.resize(heat.astype(np.float32), (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    alpha = float(np.clip(alpha, 0.0, 1.0))
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)  # uint8 arithmetic, saturating
    return cv2.cvtColor(blended, cv2.COLOR_BGR2RGB)
