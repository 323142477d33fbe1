"""The heat map's offset: measured without labels (mirror images, a finer reference map), stored, undone when served."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from brain_tumor import cam_offset
from brain_tumor.explain import translate
from brain_tumor.inference import Predictor
from brain_tumor.model import ModelLoadError, create_model, load_model, save_model
from brain_tumor.preprocess import prepare, to_tensor
from conftest import CLASSES, briefly_trained_model, synthetic_slice


def blobs(xs, size: int = 64, y: int = 30, sigma: float = 4.0) -> np.ndarray:
    """One Gaussian blob per map, centred at column xs[i]."""
    grid = np.arange(size, dtype=np.float32)
    return np.stack([np.exp(-((grid[None, :] - x) ** 2 + (grid[:, None] - y) ** 2) / (2 * sigma ** 2)) for x in xs])


@pytest.mark.parametrize("lag", [-13, -4, 0, 7, 20])
def test_horizontal_lag_finds_a_planted_shift(lag):
    a = np.stack([blobs([30 + k], y=20 + 5 * k)[0] + 0.5 * blobs([40 - 3 * k], y=40)[0] for k in range(3)])
    b = np.zeros_like(a)  # b(x) = a(x + lag): a is b moved right by lag
    if lag >= 0:
        b[:, :, :64 - lag] = a[:, :, lag:]
    else:
        b[:, :, -lag:] = a[:, :, :64 + lag]
    assert cam_offset.horizontal_lag(a, b, max_lag=32).tolist() == [lag] * 3


def brightest_spot(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    img = x[:, 0]
    return img.amax(1).argmax(1).numpy(), img.amax(2).argmax(1).numpy()  # columns, rows


@pytest.mark.parametrize("offset", [(-9, 5), (6, -7)])
def test_a_detector_that_draws_beside_the_object_is_measured_without_labels(offset):
    """A 'network' that always puts its evidence ``offset`` px right of and below the bright spot, mirrored or not,
    and a finer reference map that sits on the spot: the mirror image gives dx, the reference dy, no label
    needed, and moving the map back by them puts it on the spot."""
    ox, oy = offset

    def maps_of(xb, classes=None):
        cols, rows = brightest_spot(xb)
        cls = np.zeros(len(xb), int) if classes is None else np.asarray(classes)
        return cls, {"a": np.stack([blobs([c + ox], y=r + oy)[0] for c, r in zip(cols, rows)])}

    def reference_of(xb, classes):
        cols, rows = brightest_spot(xb)
        return classes, {"finer": np.stack([blobs([c], y=r, sigma=2.0)[0] for c, r in zip(cols, rows)])}

    x = torch.zeros(6, 3, 64, 64)
    spots = [(20, 30), (25, 22), (30, 40), (34, 28), (40, 33), (44, 26)]
    for i, (col, row) in enumerate(spots):
        x[i, :, row, col] = 1.0
    classes, measured = cam_offset.measure(maps_of, x, max_lag=32, reference_of=reference_of, batch_size=4)
    offsets = measured["a"]
    assert classes.tolist() == [0] * 6
    assert np.abs(offsets - np.array(offset)).max() <= 0.5
    _, mirror_only = cam_offset.measure(maps_of, x, max_lag=32)
    assert np.allclose(mirror_only["a"][:, 0], offsets[:, 0]) and not mirror_only["a"][:, 1].any()
    shift, record = cam_offset.summarise(np.zeros(12, int), np.concatenate([offsets, offsets]), ["a", "b"], cell=16)
    assert shift["a"] == [pytest.approx(ox, abs=0.5), pytest.approx(oy, abs=0.5)]
    assert shift["b"] == [0.0, 0.0] and "fewer than" in record["b"]["why"]  # class b: no slices, no shift
    _, drawn = maps_of(x)
    placed = translate(drawn["a"], [-shift["a"][0]] * 6, [-shift["a"][1]] * 6)
    peaks = np.array([np.unravel_index(m.argmax(), m.shape)[::-1] for m in placed])
    assert np.abs(peaks - np.array(spots)).max() <= 1


def test_an_axis_on_which_a_class_disagrees_gets_no_shift():
    spread = np.array([-20.0, -15, -10, 0, 10, 15, 20, 25, 30, 35, 40, 45])
    steady = np.full(12, 7.0) + np.linspace(-2, 2, 12)
    shift, record = cam_offset.summarise(np.zeros(12, int), np.stack([steady, spread], 1), ["glioma"], cell=16)
    assert shift == {"glioma": [pytest.approx(7.0), 0.0]}
    assert "interquartile" in record["glioma"]["y"]["why"] and "why" not in record["glioma"]["x"]


@pytest.fixture(scope="module")
def model():
    m = briefly_trained_model(128, output_stride=16)
    m.config.cam_layer, m.config.cam_method = "layer4", "gradcam++"
    return m


def test_a_network_whose_last_stage_is_moved_one_cell_right_and_down_measures_it(model):
    """The last stage's output rolled one cell (16 px) right and down: the answers stay (the pooled features do
    not move), and every slice's measured offset grows on both axes -- sideways from the mirror image, vertically
    against layer3's map, which the roll leaves alone. (The maps of this barely trained network are broad and the
    roll wraps them at the edge, so less than the whole cell is seen: between half a cell and a cell.)"""
    images = np.stack([prepare(synthetic_slice(300 + i, 144), 128)[0] for i in range(8)])
    x = to_tensor(images)
    maps, reference = cam_offset.model_maps(model, ["gradcam"]), cam_offset.model_maps(model, ["gradcam++"], "layer3")
    plain = cam_offset.measure(maps, x, max_lag=64, reference_of=reference)[1]["gradcam"]
    handle = model.net.layer4.register_forward_hook(lambda _m, _i, out: out.roll((1, 1), dims=(-2, -1)))
    try:
        moved = cam_offset.measure(maps, x, max_lag=64, reference_of=reference)[1]["gradcam"]
    finally:
        handle.remove()
    grew = moved - plain
    assert (grew > 0).all()
    assert (8 <= np.median(grew, axis=0)).all() and (np.median(grew, axis=0) <= 17).all()


def test_fit_stores_a_shift_per_method_that_survives_saving(model, tmp_path):
    m = create_model(CLASSES, init="scratch", img_size=128, output_stride=16)
    m.load_state_dict(model.state_dict())
    m.config.cam_layer, m.config.cam_method, m.config.cam_power = "layer4", "gradcam++", 3.0
    images = torch.from_numpy(np.stack([prepare(synthetic_slice(i, 144), 128)[0] for i in range(24)]))
    records = cam_offset.fit(m, images)
    assert set(records) == set(m.config.cam_shift) == {"layer4/gradcam", "layer4/gradcam++"}
    for target, shift in m.config.cam_shift.items():
        assert set(shift) == set(CLASSES)
        for name, xy in shift.items():
            r = records[target][name]
            assert xy == r["applied"] and len(xy) == 2 and max(map(abs, xy)) <= 64
            for px, axis in zip(xy, "xy"):
                assert px == 0.0 or (r["slices"] >= cam_offset.MIN_SLICES and px == r[axis]["median"])
    assert m.config.metrics["cam_offset"]["slices"] == 24
    save_model(m, tmp_path)
    assert load_model(str(tmp_path)).config.cam_shift == m.config.cam_shift


def test_the_served_map_is_moved_back_by_its_class_shift(model):
    grays = [synthetic_slice(400 + i, 144) for i in range(4)]
    predictor = Predictor(model)
    try:
        model.config.cam_shift = {}
        plain = predictor.predict(grays, heatmaps=True)
        model.config.cam_shift = {"layer4/gradcam++": {c: [6.0, -4.0] for c in CLASSES}}
        moved = predictor.predict(grays, heatmaps=True)
        other = predictor.predict(grays, heatmaps=True, method="gradcam")  # fitted for gradcam++ only
        model.config.cam_shift = {}
        other_plain = predictor.predict(grays, heatmaps=True, method="gradcam")
    finally:
        model.config.cam_shift = {}
    for p, m in zip(plain, moved):
        assert p.label == m.label and p.probabilities == m.probabilities
        expect = translate(p.heatmap[None], [-6.0], [4.0])[0]
        assert np.allclose(m.heatmap, expect, atol=1e-5)
        assert not np.allclose(m.heatmap, p.heatmap, atol=1e-3)
    for o, p in zip(other, other_plain):
        assert np.array_equal(o.heatmap, p.heatmap)


def test_other_methods_take_the_layers_grad_cam_offset_and_eigencam_the_predicted_class(model):
    grays = [synthetic_slice(500 + i, 144) for i in range(3)]
    predictor = Predictor(model)
    shifts = {c: [4.0 + 3 * k, -2.0 - k] for k, c in enumerate(CLASSES)}  # another offset per class
    try:
        model.config.cam_shift = {}
        plain = {m: predictor.predict(grays, heatmaps=True, method=m) for m in ("hirescam", "eigencam")}
        other = next(c for c in CLASSES if c != plain["eigencam"][0].label)  # a class it does not predict
        plain_asked = predictor.predict(grays, heatmaps=True, method="hirescam", target=other)
        model.config.cam_shift = {"layer4/gradcam": shifts, "layer4/gradcam++": {c: [0.0, 9.0] for c in CLASSES}}
        moved = {m: predictor.predict(grays, heatmaps=True, method=m) for m in ("hirescam", "eigencam")}
        asked = predictor.predict(grays, heatmaps=True, method="hirescam", target=other)
        eigen_asked = predictor.predict(grays, heatmaps=True, method="eigencam", target=other)
    finally:
        model.config.cam_shift = {}
    for m in ("hirescam", "eigencam"):
        for p, q in zip(plain[m], moved[m]):
            dx, dy = shifts[p.label]  # the predicted class's Grad-CAM offset, undone
            assert np.allclose(q.heatmap, translate(p.heatmap[None], [-dx], [-dy])[0], atol=1e-5)
            assert not np.allclose(q.heatmap, p.heatmap, atol=1e-3)
    for p, q in zip(plain_asked, asked):  # a class-specific map of another class: that class's offset
        dx, dy = shifts[other]
        assert np.allclose(q.heatmap, translate(p.heatmap[None], [-dx], [-dy])[0], atol=1e-5)
    for m, e in zip(moved["eigencam"], eigen_asked):  # EigenCAM's map is the same whichever class is asked for
        assert np.array_equal(m.heatmap, e.heatmap)


def folder_with_cam_shift(tiny_model_dir, tmp_path, cam_shift):
    """A copy of the tiny model folder whose config.json carries this cam_shift."""
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg["cam_shift"] = cam_shift
    for f in tiny_model_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_a_sideways_only_cam_shift_loads_as_dx_with_no_dy(tiny_model_dir, tmp_path):
    folder = folder_with_cam_shift(tiny_model_dir, tmp_path, {"layer4/gradcam": {"glioma": -8.0,
                                                                                "pituitary": [20.0, 3.0]}})
    assert load_model(folder).config.cam_shift == {"layer4/gradcam": {"glioma": [-8.0, 0.0], "pituitary": [20.0, 3.0]}}


@pytest.mark.parametrize("bad", [[1, 2], {"layer4/gradcam": 3}, {"layer4/gradcam": {"glioma": "left"}},
                                 {"layer4/gradcam": {"glioma": [1.0]}}, {"layer4/gradcam": {"glioma": 1e9}},
                                 {"layer4/gradcam": {"glioma": [float("nan"), 0]}},
                                 {"layer4/gradcam": {"glioma": [0, 1e9]}}])
def test_a_malformed_cam_shift_is_refused_at_load(tiny_model_dir, tmp_path, bad):
    with pytest.raises(ModelLoadError, match="cam_shift"):
        load_model(folder_with_cam_shift(tiny_model_dir, tmp_path, bad))
