"""The bundled model: it loads, describes itself, and names the bundled examples' classes."""
from __future__ import annotations

import json

from brain_tumor import Predictor, read_image
from brain_tumor.model import BUNDLED_MODEL, cam_shift_key
from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))


def test_the_shipped_model_labels_the_examples():
    predictor = Predictor(str(BUNDLED_MODEL))
    preds = predictor.predict([read_image(p) for p in EXAMPLES], heatmaps=False)
    for path, pred in zip(EXAMPLES, preds):
        expected = path.stem.rsplit("_", 1)[0]
        assert pred.label == expected, f"{path.name}: {pred.label}"
        assert pred.looks_like_mri, path.name


def test_the_shipped_card_reports_every_validation_source():
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    groups = config["metrics"]["validation_groups"]
    assert {"brain-tumor-mri", "lgg-segmentation/flair", "mri-44class-half/t2"} <= set(groups)
    card = (BUNDLED_MODEL / "README.md").read_text()
    assert "license: cc-by-nc-sa-4.0" in card  # trained on the LGG set: non-commercial, share alike
    assert "model-index" in card and "lgg-segmentation/flair (grouped validation split)" in card
    shift = config["cam_shift"][cam_shift_key(config["cam_layer"], config["cam_method"])]  # its maps' offsets
    assert any(any(xy) for xy in shift.values()) and "moved by (right, down)" in card
    notes = config["training"]["notes"]  # how these weights came to be: kept in the config, so every refit keeps them
    assert notes and all(n in card for n in notes)


def test_the_shipped_and_published_json_is_strict_json():
    """NaN is not JSON: the Hub, browsers and jq refuse a file holding it (an undefined figure is written null)."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    files = [BUNDLED_MODEL / "config.json", *sorted((ROOT / "docs").rglob("*.json"))]
    for path in files:
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except ValueError as e:
            raise AssertionError(f"{path.relative_to(ROOT)}: {e}") from None
    assert len(files) > 20
