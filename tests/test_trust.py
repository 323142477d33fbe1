"""Calibration, abstention and the 'looks like a brain MRI' detector."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brain_tumor.preprocess import prepare
from brain_tumor.trust import choose_calibration, fit_class_temperature, fit_temperature
from brain_tumor.inference import NOT_MRI, Predictor
from brain_tumor.model import ModelConfig, ModelLoadError, TumorClassifier, create_model
from brain_tumor.trust import calibrate, choose_abstain_threshold, fit_ood, non_mri_images
from conftest import CLASSES, synthetic_slice


def test_temperature_scaling_recovers_an_overconfident_scale():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 4) * 1.5
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1).squeeze(1)
    t = fit_temperature(true_logits * 3.0, labels)  # a model 3x too confident
    assert t == pytest.approx(3.0, rel=0.1)


def _labelled(temperatures: list[float], n: int = 6000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a model whose class k is 1 / temperatures[k] times too confident (bias-free), with labels drawn
    from the true probabilities."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, len(temperatures), generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g).squeeze(1)
    return true * torch.tensor(temperatures), labels


def test_class_temperatures_recover_each_class_own_overconfidence():
    planted = [3.0, 1.0, 0.5, 2.0]
    logits, labels = _labelled(planted)
    assert fit_class_temperature(logits, labels) == pytest.approx(planted, rel=0.15)
    assert fit_class_temperature(logits[:0], labels[:0]) == []  # nothing to fit
    assert fit_class_temperature(logits, torch.zeros_like(labels)) == []  # one class alone: no scale is identified


def test_calibration_keeps_per_class_temperatures_only_where_they_predict_held_out_slices_better():
    uneven = choose_calibration(*_labelled([3.0, 1.0, 0.5, 2.0]))
    held = uneven["heldout"]
    assert held["class_temperature"]["log_loss"] < held["temperature"]["log_loss"]
    assert len(uneven["class_temperature"]) == 4
    even = choose_calibration(*_labelled([2.0, 2.0, 2.0, 2.0], seed=1))
    assert even["class_temperature"] == [] and even["temperature"] == pytest.approx(2.0, rel=0.1)
    few = choose_calibration(*_labelled([3.0, 1.0, 0.5, 2.0], n=30))
    assert few["class_temperature"] == [] and few["heldout"] is None  # too few slices to tell the two apart


def test_served_answers_use_the_per_class_temperatures(tiny_model_dir):
    from brain_tumor.model import load_model

    model = load_model(str(tiny_model_dir))
    model.config.class_temperature = [0.5, 1.0, 2.0, 4.0]
    pred = Predictor(model).predict([synthetic_slice(1, 96)])[0]
    expected = torch.softmax(torch.from_numpy(pred.logits) / torch.tensor([0.5, 1.0, 2.0, 4.0]), 0).numpy()
    assert [pred.probabilities[c] for c in CLASSES] == pytest.approx(expected.tolist(), abs=1e-5)
    assert "glioma 0.50" in model.config.describe_calibration().lower()
    for bad in ([1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, "x", 1.0], [1e-300, 1.0, 1.0, 1.0], [True] * 4):
        with pytest.raises(ModelLoadError, match="class_temperature"):
            ModelConfig.from_dict({"class_names": CLASSES, "class_temperature": bad})


def test_abstain_threshold_meets_the_error_target():
    conf = np.linspace(1.0, 0.5, 100)
    correct = np.ones(100, bool)
    correct[[85, 90, 95, 99]] = False  # all mistakes are among the least confident
    t = choose_abstain_threshold(conf, correct, target_error=0.01, min_coverage=0.8)
    accepted = conf >= t
    assert accepted.mean() >= 0.8
    assert 1 - correct[accepted].mean() <= 0.01
    assert not accepted[85]


def test_mahalanobis_detector_separates_far_points():
    rng = np.random.default_rng(0)
    model = create_model(["a", "b"], init="scratch")
    width = model.ood_mean.shape[1]
    assert width == 256  # new models read layer3's channel means
    feats = torch.tensor(np.concatenate([rng.normal(0, 1, (200, width)), rng.normal(3, 1, (200, width))]),
                         dtype=torch.float32)
    labels = torch.tensor([0] * 200 + [1] * 200)
    means, precision = fit_ood(feats, labels, 2)
    model.ood_mean.copy_(means)
    model.ood_precision.copy_(precision)
    near = model.ood_distance(torch.tensor(rng.normal(3, 1, (20, width)), dtype=torch.float32))
    far = model.ood_distance(torch.tensor(rng.normal(-6, 1, (20, width)), dtype=torch.float32))
    assert far.min() > near.max()


def test_detector_reads_layer3_means_and_older_configs_keep_pooled(tmp_path):
    """The detector's features are layer3's channel means, from the answer's own pass; a config.json from before
    the field loads with the pooled-feature detector its weights carry, and refitting moves it to layer3."""
    model = create_model(["a", "b"], init="scratch").eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
        n = model.net
        mid = n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x)))))))
    assert torch.allclose(feats, mid.mean((2, 3)), atol=1e-5) and torch.allclose(logits, model(x), atol=1e-5)
    old = ModelConfig.from_dict({"class_names": ["a", "b"]})
    assert old.ood_features == "pooled" and TumorClassifier(old).ood_mean.shape == (2, 512)
    model.config.ood_features = "pooled"
    with torch.no_grad():
        assert model.forward_with_features(x)[1].shape == (3, 512)
    with pytest.raises(ModelLoadError, match="ood_features"):
        ModelConfig.from_dict({"class_names": ["a", "b"], "ood_features": "layer9"})


@pytest.fixture(scope="module")
def calibrated_predictor():
    torch.manual_seed(0)
    model = create_model(CLASSES, init="scratch", img_size=64).eval()
    slices = [synthetic_slice(i, 96, tumor=i % 4 != 2) for i in range(120)]
    x = torch.from_numpy(np.stack([prepare(s, 64)[0] for s in slices]))
    y = torch.tensor([i % 4 for i in range(120)])
    figures = calibrate(model, x[:80], y[:80], x[80:], y[80:], measure_negatives=True)
    return Predictor(model), figures


def test_photos_text_and_noise_are_flagged_and_slices_are_not(calibrated_predictor):
    predictor, figures = calibrated_predictor
    det = figures["mri_detector"]
    assert det["non_mri_images"] >= 40 and det["validation_mris_flagged"] <= 0.05
    negatives = dict(non_mri_images())
    photo = negatives.get("skimage:astronaut", negatives["text:0"])
    preds = predictor.predict([photo, negatives["noise:uniform0"], negatives["blank:0"],
                               synthetic_slice(1000, 96), synthetic_slice(1001, 96)])
    assert [p.looks_like_mri for p in preds] == [False, False, False, True, True]
    assert preds[0].verdict == NOT_MRI
    assert 0 <= preds[3].uncertainty <= 1


def test_blank_input_is_never_called_an_mri(tiny_model_dir):
    predictor = Predictor(str(tiny_model_dir))  # no detector fitted: only the blank check applies
    [blank, slice_] = predictor.predict([np.full((80, 80), 7, np.uint8), synthetic_slice(3, 80)])
    assert not blank.looks_like_mri and slice_.looks_like_mri
    record = slice_.to_json()
    assert set(record) >= {"uncertainty", "looks_like_mri", "needs_review"}


def test_uncalibrated_ece_scores_the_raw_answers_when_per_class_temperatures_change_them(monkeypatch):
    """ECE before calibration is the raw softmax's: its confidence against its own answers, not the calibrated ones."""
    from brain_tumor import trust
    from brain_tumor.metrics import expected_calibration_error

    torch.manual_seed(0)
    model = create_model(CLASSES, init="scratch", img_size=64).eval()
    x = torch.from_numpy(np.stack([prepare(synthetic_slice(i, 96, tumor=i % 4 != 2), 64)[0] for i in range(60)]))
    y = torch.tensor([i % 4 for i in range(60)])
    monkeypatch.setattr(trust, "choose_calibration", lambda lo, la: {  # a strong per-class pull: answers change
        "temperature": 1.0, "class_temperature": [0.05, 19.0, 19.0, 19.0], "heldout": None})
    figures = calibrate(model, x[:30], y[:30], x[30:], y[30:], measure_negatives=False)
    raw = torch.softmax(trust.predict_logits(model, x[30:]), 1).numpy()
    calibrated = torch.softmax(trust.predict_logits(model, x[30:]) / model.config.logit_scale(), 1).numpy()
    assert (raw.argmax(1) != calibrated.argmax(1)).any()
    assert figures["ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(raw.max(1), raw.argmax(1) == y[30:].numpy()))
