"""Heat maps: the one-pass path agrees with pytorch-grad-cam; batch and single-image answers agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brain_tumor.data import to_tensor
from brain_tumor.explain import OnePass, compute_with_library, overlay, upsample
from brain_tumor.inference import Predictor
from brain_tumor.model import create_model
from conftest import CLASSES, synthetic_slice


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = create_model(CLASSES, init="scratch", img_size=64).eval()
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
    classes = logits.argmax(1)
    fast = upsample(run.cams(classes, method), 64)
    ref = compute_with_library(model, x, classes.tolist(), method, layer)
    for a, b in zip(fast, ref):
        if a.std() > 0 and b.std() > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)  # the same forward pass gives the prediction


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
