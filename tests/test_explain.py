"""Heat maps: the one-pass path agrees with pytorch-grad-cam; batch and single-image answers agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brain_tumor.data import to_tensor
from brain_tumor.explain import OnePass, compute_with_library, layer_stride, overlay, recentre, upsample
from brain_tumor.inference import Predictor
from brain_tumor.model import create_model
from conftest import CLASSES, synthetic_slice


@pytest.fixture(scope="module", params=[32, 16], ids=["stride32", "dilated16"])
def model(request):
    torch.manual_seed(3)
    m = create_model(CLASSES, init="scratch", img_size=64, output_stride=request.param).eval()
    # a few steps of training so the maps are not those of a random network
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    x = to_tensor(np.stack([synthetic_slice(i, 64, tumor=i % 2 == 0) for i in range(16)]))
    y = torch.tensor([i % 2 * 2 for i in range(16)])
    m.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval().requires_grad_(False)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_one_pass_maps_match_pytorch_grad_cam(model, method, layer):
    x = to_tensor(np.stack([synthetic_slice(100 + i, 64) for i in range(4)]))
    run = OnePass(model, layer)
    logits = run(x)
    assert run.analytic == (layer == "layer4")  # the last stage needs no backward pass
    classes = logits.argmax(1)
    cams = run.cams(classes, method)
    ref = compute_with_library(model, x, classes.tolist(), method, layer)
    stride = layer_stride(layer, model.config.output_stride)
    assert cams.shape[-1] == 64 // stride
    compared = 0
    # the library draws maps with a plain resize; ours sit on the receptive-field centres: compare both ways
    for ours, theirs in ((upsample(cams, 64, centred=False), ref), (upsample(cams, 64), recentre(ref, stride))):
        for a, b in zip(ours, theirs):
            if a.std() > 0 and b.std() > 0:
                assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
                compared += 1
    assert compared >= 4
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)  # the same forward pass gives the prediction


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_last_stage_gradients_from_the_head_equal_autograd(model, method):
    x = to_tensor(np.stack([synthetic_slice(300 + i, 64, tumor=i % 2 == 0) for i in range(3)]))
    fast = OnePass(model, "layer4")
    slow = OnePass(model, "layer4")
    slow.head = None  # force the backward pass
    assert torch.allclose(fast(x), slow(x), atol=1e-5)
    classes = [0, 2, 1]
    assert torch.allclose(fast.grads(classes), slow.grads(classes), atol=1e-6, rtol=1e-4)
    assert np.allclose(fast.cams(classes, method), slow.cams(classes, method), atol=1e-4)


@pytest.mark.parametrize("output_stride", [32, 16])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_upsampled_maps_sit_on_the_receptive_field_centres(output_stride, layer):
    """A hot map cell lands where that cell's input gradient is centred; a plain resize lands (s-1)/2 px off."""
    torch.manual_seed(0)
    net = create_model(CLASSES, init="scratch", img_size=256, output_stride=output_stride).eval().net
    acts = {}
    net.get_submodule(layer).register_forward_hook(lambda _m, _i, out: acts.__setitem__("a", out))
    x = torch.randn(1, 3, 256, 256, requires_grad=True)
    net(x)
    h = acts["a"].shape[-1]
    stride = layer_stride(layer, output_stride)
    assert h * stride == 256
    cell = h // 2
    (g,) = torch.autograd.grad(acts["a"][0, :, cell, cell].sum(), x)
    weight = g.abs().sum((0, 1))
    centre = float((weight.sum(1) * torch.arange(256.0)).sum() / weight.sum())  # row centroid
    hot = np.zeros((1, h, h), np.float32)
    hot[0, cell, cell] = 1.0
    peak = np.unravel_index(np.argmax(upsample(hot, 256)[0]), (256, 256))[0]
    plain = np.unravel_index(np.argmax(upsample(hot, 256, centred=False)[0]), (256, 256))[0]
    assert abs(peak - centre) <= 1.5
    assert abs(plain - centre) >= (stride - 1) / 2 - 1.5


def test_one_pass_never_touches_parameter_gradients(model):
    x = to_tensor(synthetic_slice(7, 64)[None])
    run = OnePass(model, "layer3")
    run(x)
    run.cams([0])
    assert all(p.grad is None for p in model.parameters())


def test_batch_and_single_image_predictions_agree(model):
    predictor = Predictor(model)
    grays = [synthetic_slice(200 + i, 80 + 8 * i) for i in range(5)]
    batch = predictor.predict(grays, heatmaps=True)
    for g, b in zip(grays, batch):
        [one] = predictor.predict([g], heatmaps=True)
        assert one.label == b.label
        assert all(abs(one.probabilities[c] - b.probabilities[c]) < 1e-5 for c in CLASSES)
        assert np.abs(one.heatmap - b.heatmap).max() < 1e-4


def test_cam_power_keeps_the_peak(model):
    predictor = Predictor(model)
    g = synthetic_slice(9, 96)
    [plain] = predictor.predict([g], heatmaps=True)
    predictor.config.cam_power = 3.0
    try:
        [sharp] = predictor.predict([g], heatmaps=True)
    finally:
        predictor.config.cam_power = 1.0
    assert np.argmax(plain.heatmap) == np.argmax(sharp.heatmap)
    assert np.allclose(sharp.heatmap, plain.heatmap ** 3, atol=1e-6)


def test_other_class_and_library_method(model):
    predictor = Predictor(model)
    g = synthetic_slice(11, 96)
    [p] = predictor.predict([g], heatmaps=True, target="meningioma", method="eigencam")
    assert p.heatmap_class == "meningioma" and p.heatmap.shape == (64, 64)
    assert 0 <= p.heatmap.min() and p.heatmap.max() <= 1
    with pytest.raises(ValueError, match="unknown class"):
        predictor.predict([g], heatmaps=True, target="cat")
    with pytest.raises(ValueError, match="unknown heat-map method"):
        predictor.predict([g], heatmaps=True, method="magic")


def test_overlay_blends_within_range():
    gray = np.full((20, 30), 100, np.uint8)
    heat = np.zeros((10, 15), np.float32)
    out = overlay(gray, heat, 0.0)
    assert out.shape == (20, 30, 3) and (out == 100).all()
    assert overlay(gray, np.ones((20, 30), np.float32), 1.0)[..., 0].max() > 100
