"""The heat-map choice (scripts/heatmaps.py): fused layer targets, several box sets weighed equally, --apply."""
from __future__ import annotations

import json
import shutil

import cv2

from conftest import synthetic_slice
from scripts import heatmaps


def box_root(root, n, seed, box="0 0.5 0.5 0.4 0.4"):
    """n tumour slices with a box file beside each, in two class folders."""
    for i in range(n):
        folder = root / ("glioma", "meningioma")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), synthetic_slice(seed + i, 64))
        (folder / f"{i}.txt").write_text(box + "\n")
    return root


def test_each_box_set_counts_alike_and_the_best_fused_target_is_applied(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    big = box_root(tmp_path / "big", 6, 0)
    small = box_root(tmp_path / "small", 2, 50, box="0 0.3 0.3 0.2 0.2")
    out = tmp_path / "maps.json"
    assert heatmaps.main(["--model", str(model), "--boxes", str(big), "--boxes", str(small), "--layers",
                          "layer4,layer3+layer4,layer3:0.75+layer4", "--methods", "gradcam", "--powers", "1,2",
                          "--json", str(out), "--apply"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == [l for l in ["layer4", "layer3+layer4", "layer3:0.75+layer4"] for _ in (1, 2)]
    for r in rows:
        assert set(r["by_source"]) == {str(big), str(small)} and r["n_boxes"] == 8
        assert [r["by_source"][str(big)]["n_boxes"], r["by_source"][str(small)]["n_boxes"]] == [6, 2]
        for k in ("pointing_game", "heat_in_box", "heat_in_head"):  # the mean over the sets, not over the slices
            assert abs(r[k] - (r["by_source"][str(big)][k] + r["by_source"][str(small)][k]) / 2) < 1e-9
    best = max(rows, key=lambda r: (r["heat_in_head"] >= heatmaps.MIN_HEAT_IN_HEAD,
                                    r["pointing_game"] + 0.5 * r["heat_in_box"]))
    config = json.loads((model / "config.json").read_text())
    assert (config["cam_layer"], config["cam_power"]) == (best["layer"], best["power"])
    assert config["metrics"]["heatmaps"]["by_source"] == best["by_source"]
    card = (model / "README.md").read_text()
    assert best["layer"] in card  # the card names the served map, and each box set's own figures beside the mean
    assert "big: " in card and "(6 slices)" in card and "small: " in card and "(2 slices)" in card
