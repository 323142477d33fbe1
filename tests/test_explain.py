"""Heat maps: the one-pass path agrees with pytorch-grad-cam; batch and single-image answers agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brain_tumor.preprocess import to_tensor
from brain_tumor.explain import (HEAT_FLOOR, OnePass, _library, ablation_at_head, compute_with_library, fuse,
                                 layer_stride, library_maps, overlay, parse_layers, recentre, upsample)
from brain_tumor.inference import Predictor
from brain_tumor.model import create_model
from conftest import CLASSES, briefly_trained_model, synthetic_slice


@pytest.fixture(scope="module", params=[32, 16], ids=["stride32", "dilated16"])
def model(request):
    return briefly_trained_model(64, request.param)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_pass_maps_match_pytorch_grad_cam(model, method, layer, precision):
    x = to_tensor(np.stack([synthetic_slice(100 + i, 64) for i in range(4)]))
    run = OnePass(model, layer, precision=precision)
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


def test_layer_specs_parse_to_weights_that_sum_to_one():
    assert parse_layers("layer4") == [("layer4", 1.0)]
    assert parse_layers("layer3+layer4") == [("layer3", 0.5), ("layer4", 0.5)]
    assert parse_layers("layer3:0.75+layer4") == [("layer3", 0.75), ("layer4", 0.25)]
    assert parse_layers("layer2:0.2+layer3:0.3+layer4:0.5") == [("layer2", 0.2), ("layer3", 0.3), ("layer4", 0.5)]
    for bad in ["layer3:0.7+layer4:0.7", "layer3:1+layer4", "layer3+layer3", "layer3:x", "+layer4", "layer4:0"]:
        with pytest.raises(ValueError):
            parse_layers(bad)
    assert layer_stride("layer3+layer4") == 16 and layer_stride("layer4") == 32


def test_fused_map_is_the_weighted_geometric_mean_on_the_finest_grid():
    a = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    b = np.random.default_rng(1).random((2, 4, 4)).astype(np.float32)
    out = fuse([a, b], [0.75, 0.25])
    expect = a ** 0.75 * upsample(b, 8) ** 0.25
    expect /= expect.reshape(2, -1).max(1)[:, None, None]
    assert out.shape == (2, 8, 8) and np.allclose(out, expect, atol=1e-6)
    assert np.allclose(out.reshape(2, -1).max(1), 1.0)
    cold = a.copy()
    cold[:, 2, 3] = 0  # a cell one layer calls cold stays cold, however hot the other
    assert fuse([cold, np.ones_like(cold)], [0.5, 0.5])[:, 2, 3].max() == 0


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_several_layers_from_one_pass_fuse_each_layers_own_map(model, method):
    x = to_tensor(np.stack([synthetic_slice(200 + i, 64, tumor=i % 2 == 0) for i in range(3)]))
    both = OnePass(model, "layer3:0.6+layer4")
    logits = both(x)
    assert not both.analytic  # layer3 needs autograd; layer4's gradient still comes from the head
    classes = logits.argmax(1)
    maps = {}
    for layer in ("layer3", "layer4"):
        one = OnePass(model, layer)
        assert torch.allclose(one(x), logits, atol=1e-5)
        maps[layer] = one.cams(classes, method)
    assert np.allclose(both.cams(classes, method), fuse([maps["layer3"], maps["layer4"]], [0.6, 0.4]), atol=1e-4)
    # the library path fuses its own maps of each layer the same way (each moved to its cells' centres)
    lib = library_maps(model, x, classes.tolist(), method, "layer3:0.6+layer4", model.config.output_stride)
    ref = fuse([recentre(compute_with_library(model, x, classes.tolist(), method, n),
                         layer_stride(n, model.config.output_stride)) for n in ("layer3", "layer4")], [0.6, 0.4])
    assert lib.shape == (3, 64, 64) and np.allclose(lib, ref, atol=1e-5)


def test_predictor_serves_a_fused_target_from_its_config(model):
    p = Predictor(model)
    gray = synthetic_slice(7, 64, tumor=True)
    p.config.cam_layer = "layer3+layer4"
    fused = p.predict([gray], heatmaps=True)[0]
    parts = []
    for layer in ("layer3", "layer4"):
        p.config.cam_layer = layer
        parts.append(p.predict([gray], heatmaps=True)[0].heatmap)
    p.config.cam_layer = "layer4"
    assert fused.heatmap.shape == parts[0].shape
    assert np.corrcoef(fused.heatmap.ravel(), np.sqrt(parts[0] * parts[1]).ravel())[0, 1] > 0.95


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
@pytest.mark.parametrize("size", [72, 90, 100])
def test_one_pass_on_odd_input_sizes(output_stride, size):
    """Odd feature-map sizes (7 -> 4 under a stride-2 conv): the pass's prediction is the model's, and its layer3
    gradients are those of a backward pass through the whole network."""
    torch.manual_seed(1)
    m = create_model(CLASSES, init="scratch", img_size=size, output_stride=output_stride).eval()
    x = torch.randn(2, 3, size, size)
    run = OnePass(m, "layer3")
    assert torch.allclose(run(x), m(x).detach(), atol=1e-5)
    acts = {}
    handle = m.net.layer3.register_forward_hook(lambda _m, _i, out: acts.setdefault("a", out))
    logits = m(x)
    handle.remove()
    score = logits.gather(1, torch.tensor([[0], [3]])).sum()
    (ref,) = torch.autograd.grad(score, acts["a"])
    ours = run.grads([0, 3])
    assert ours.shape == ref.shape and float((ours - ref).norm() / ref.norm()) < 1e-5


def test_sub_module_targets_use_autograd(model):
    x = to_tensor(synthetic_slice(8, 64)[None])
    run = OnePass(model, "layer3.1")
    assert not run.analytic
    logits = run(x)
    ref = compute_with_library(model, x, [int(logits.argmax())], "gradcam", "layer3.1")
    ours = upsample(run.cams(logits.argmax(1)), 64, centred=False)
    if ref[0].std() > 0 and ours[0].std() > 0:
        assert np.corrcoef(ours[0].ravel(), ref[0].ravel())[0, 1] >= 0.99


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
    for p in model.parameters():  # whatever earlier tests left: this test starts from none
        p.grad = None
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
        # the same answer; the same map up to rounding (bf16 where the CPU has it: other kernels per batch size)
        assert np.abs(one.heatmap - b.heatmap).max() < 5e-3


def test_predictor_heatmap_precision(model):
    """Either precision setting gives the same answer and maps that agree; a bad precision is refused."""
    g = synthetic_slice(12, 96, tumor=True)
    [a] = Predictor(model, precision="fp32").predict([g], heatmaps=True)
    [b] = Predictor(model, precision="bf16").predict([g], heatmaps=True)
    assert a.probabilities == b.probabilities
    if a.heatmap.std() > 0:
        assert np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1] >= 0.99
    with pytest.raises(ValueError, match="precision"):
        Predictor(model, precision="fp8")


def test_another_class_or_method_for_the_same_slice_reuses_its_forward_pass(model):
    predictor = Predictor(model)
    g = synthetic_slice(13, 96, tumor=True)
    forwards = []
    handle = model.net.conv1.register_forward_hook(lambda *_: forwards.append(1))
    try:
        [first] = predictor.predict([g], heatmaps=True)
        other = [c for c in CLASSES if c != first.label][0]
        [again] = predictor.predict([g], heatmaps=True, target=other)
        [plus] = predictor.predict([g], heatmaps=True, method="gradcam++")
        assert len(forwards) == 1  # one forward pass for the three maps
        predictor.predict([synthetic_slice(14, 96)], heatmaps=True)
        assert len(forwards) == 2  # another slice: its own pass
        predictor.predict([g], heatmaps=True)
        assert len(forwards) == 3  # the default request always runs its own pass (timings stay honest)
    finally:
        handle.remove()
    assert again.probabilities == first.probabilities and again.heatmap_class == other
    fresh = Predictor(model)
    for reused, kwargs in ((again, {"target": other}), (plus, {"method": "gradcam++"})):
        [want] = fresh.predict([g], heatmaps=True, **kwargs)
        assert np.array_equal(reused.heatmap, want.heatmap)
    for k in range(Predictor.KEEP_PASSES + 3):  # the cache stays small
        predictor.predict([synthetic_slice(600 + k, 64)], heatmaps=True)
    assert len(predictor._passes) == Predictor.KEEP_PASSES


def test_bf16_answer_keeps_answers_and_maps(model, monkeypatch):
    from brain_tumor import inference

    monkeypatch.setattr(inference, "native_bf16", lambda: True)
    fp32, bf16 = Predictor(model), Predictor(model, bf16_answer=True)
    assert bf16.bf16_answer and not fp32.bf16_answer
    grays = [synthetic_slice(800 + i, 96, tumor=i % 2 == 0) for i in range(4)]
    for a, b in zip(fp32.predict(grays, heatmaps=True), bf16.predict(grays, heatmaps=True, target=None)):
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES) < 0.05
        assert b.heatmap is not None and b.heatmap.shape == a.heatmap.shape
        if a.heatmap.std() > 0 and a.label == b.label:
            assert np.corrcoef(a.heatmap.ravel(), b.heatmap.ravel())[0, 1] >= 0.95
    [plain] = bf16.predict(grays[:1])  # the answer without a map goes through the same bf16 forward pass
    [mapped] = bf16.predict(grays[:1], heatmaps=True)
    assert plain.probabilities == pytest.approx(mapped.probabilities, abs=1e-6)


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


def test_ablation_cam_in_closed_form_equals_the_librarys(model):
    """At layer4 AblationCAM is one forward pass; pytorch-grad-cam's own (a pass per channel) gives the same maps,
    for the predicted class and for classes the model scores below zero (where the weights change sign)."""
    x = to_tensor(np.stack([synthetic_slice(200 + i, 64) for i in range(2)]))
    with torch.no_grad():
        logits = model(x)
    classes = [int(logits[0].argmax()), int(logits[1].argmin())]
    assert logits[1, classes[1]] < 0
    ours = ablation_at_head(model, x, classes, "layer4")
    theirs = _library(model, x, classes, "ablationcam", "layer4")
    assert ours is not None and ours.shape == theirs.shape == (2, 64, 64)
    assert theirs.std() > 0.05  # real maps, not blank ones
    assert np.abs(ours - theirs).max() < 1e-3
    assert np.allclose(compute_with_library(model, x, classes, "ablationcam", "layer4"), ours)
    assert ablation_at_head(model, x, classes, "layer3") is None  # not the last stage: the library's per-channel passes


def test_overlay_blends_within_range():
    gray = np.full((20, 30), 100, np.uint8)
    heat = np.zeros((10, 15), np.float32)
    out = overlay(gray, heat, 0.0)
    assert out.shape == (20, 30, 3) and (out == 100).all()
    assert overlay(gray, np.ones((20, 30), np.float32), 1.0)[..., 0].max() > 100
    # JET in RGB order: no heat is blue, full heat is red, whatever the map's size
    cold, hot = overlay(gray, heat, 1.0, floor=0)[0, 0], overlay(gray, np.ones((10, 15), np.float32), 1.0)[0, 0]
    assert cold[2] > 100 and cold[0] == 0 and hot[0] > 100 and hot[2] == 0


def test_overlay_leaves_low_heat_transparent():
    """Below the documented floor the scan shows through unchanged; above it, colour fades in."""
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (20, 1))
    heat = np.zeros((20, 20), np.float32)
    heat[:, 10:] = np.linspace(0.35, 1.0, 10)  # the right half hot
    heat[:, :10] = HEAT_FLOOR * 0.9  # the left half faint: below the floor
    out = overlay(gray, heat, 1.0)
    assert (out[:, :10] == gray[:, :10, None]).all()
    assert (out[:, 10:, 0] != gray[:, 10:]).any()
    half = overlay(gray, np.full((20, 20), HEAT_FLOOR + 0.05, np.float32), 1.0).astype(int)
    full = overlay(gray, np.full((20, 20), HEAT_FLOOR + 0.05, np.float32), 1.0, floor=0).astype(int)
    # halfway up the ramp: half the blend
    assert np.abs((half - gray[..., None]) * 2 - (full - gray[..., None])).max() <= 2
