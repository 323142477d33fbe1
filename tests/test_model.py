"""The checkpoint: save/load round-trip, Hub layout offline, upload mocked at the client, initialisation."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from brain_tumor.preprocess import to_tensor
from brain_tumor.model import ModelLoadError, create_model, load_model, resolve_source, save_model
from conftest import CLASSES, ROOT, synthetic_slice


def test_round_trip_keeps_predictions_and_config(tmp_path):
    torch.manual_seed(1)
    model = create_model(CLASSES, init="scratch", img_size=64).eval()
    model.config.temperature = 1.7
    save_model(model, tmp_path, fp16=False)
    loaded = load_model(str(tmp_path))
    x = to_tensor(np.stack([synthetic_slice(i, 64) for i in range(3)]))
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-5)
    assert loaded.targets == CLASSES
    assert loaded.config.img_size == 64 and loaded.config.temperature == 1.7
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_classes"] == 4 and cfg["input_size"] == [3, 64, 64] and "mean" in cfg and "preprocessing" in cfg


def strict_json(text: str):
    """JSON as browsers, jq and the Hub read it: NaN and Infinity are not JSON."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_undefined_figures_are_written_as_null_not_nan(tmp_path):
    model = create_model(CLASSES, init="scratch", img_size=64).eval()
    model.config.metrics = {"validation_groups": {"teaching/t1ce": {"n": 78, "tumor_sensitivity": 0.9,
                                                                    "tumor_specificity": float("nan")}},
                            "spread": [np.float32(1.5), float("inf")]}
    save_model(model, tmp_path, fp16=False)
    cfg = strict_json((tmp_path / "config.json").read_text())
    assert cfg["metrics"]["validation_groups"]["teaching/t1ce"] == {"n": 78, "tumor_sensitivity": 0.9,
                                                                   "tumor_specificity": None}
    assert cfg["metrics"]["spread"] == [1.5, None]
    assert load_model(str(tmp_path)).config.metrics["validation_groups"]["teaching/t1ce"]["tumor_specificity"] is None


def test_fp16_storage_changes_outputs_only_slightly(tmp_path):
    torch.manual_seed(2)
    model = create_model(CLASSES, init="scratch", img_size=64).eval()
    save_model(model, tmp_path)  # fp16 by default
    loaded = load_model(str(tmp_path))
    x = to_tensor(np.stack([synthetic_slice(i, 64) for i in range(4)]))
    with torch.no_grad():
        p, q = torch.softmax(model(x), 1), torch.softmax(loaded(x), 1)
    assert (p - q).abs().max() < 1e-2
    assert (p.argmax(1) == q.argmax(1)).all()


def test_missing_and_mismatched_checkpoints_say_why(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(str(tmp_path))
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["class_names"] = ["no", "yes"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="do not match its config"):
        load_model(str(bad))


def _hub_cache(tmp_path, tiny_model_dir, repo="someone/brain-tumor", commit="a" * 40):
    """A Hugging Face cache holding one snapshot of a model repo, as snapshot_download leaves it."""
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(tiny_model_dir, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return cache


@pytest.mark.slow
def test_hub_id_loads_offline_from_the_cache(tmp_path, tiny_model_dir):
    cache = _hub_cache(tmp_path, tiny_model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    code = ("from brain_tumor.model import load_model; m = load_model('someone/brain-tumor'); "
            "print(m.targets, m.source)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "glioma" in out.stdout and "someone/brain-tumor@main" in out.stdout
    code = "from brain_tumor.model import load_model; load_model('someone/other-model')"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "not in the local Hugging Face cache" in out.stderr


def test_revision_is_parsed_from_the_source(monkeypatch, tmp_path):
    calls = {}

    def fake_snapshot(repo_id, revision=None, **kwargs):
        calls["args"] = (repo_id, revision)
        folder = tmp_path / "snap" / "0123456789abcdef"
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    folder, description = resolve_source("user/model@v1.2")
    assert calls["args"] == ("user/model", "v1.2")
    assert "v1.2" in description and "0123456789" in description


def test_push_to_hub_creates_repo_and_uploads_the_folder(monkeypatch, tiny_model_dir):
    import huggingface_hub

    from brain_tumor import hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), kwargs.get("allow_patterns")))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = hub.push_to_hub(tiny_model_dir, "me/brain-tumor")
    assert url.endswith("/commit/1")
    assert ("create_repo", "me/brain-tumor", True) in calls
    upload = [c for c in calls if c[0] == "upload_folder"][0]
    assert "model.safetensors" in upload[2] and "config.json" in upload[2]
    assert "*.safetensors" in upload[3] and not any(p.endswith(".pt") for p in upload[3])
    with pytest.raises(ValueError, match="not a model folder"):
        hub.push_to_hub(tiny_model_dir.parent, "me/x")


def test_imagenet_init_without_weights_says_how_to_get_them(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", lambda self, *a, **k: offline())
    with pytest.raises(ModelLoadError) as err:
        create_model(CLASSES, init="imagenet")
    assert "--init scratch" in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)


def test_imagenet_init_uses_a_file_placed_in_the_torch_cache(monkeypatch, tmp_path):
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), ckpt / "resnet18-f37072fd.pth")
    model = create_model(CLASSES, init="imagenet")
    assert torch.equal(model.net.conv1.weight, reference.conv1.weight)
    assert model.net.fc[1].out_features == 4


def test_init_from_a_local_safetensors_model(tiny_model_dir):
    reference = load_model(str(tiny_model_dir))
    model = create_model(["no", "yes"], init=str(tiny_model_dir))
    assert torch.equal(model.net.layer1[0].conv1.weight, reference.net.layer1[0].conv1.weight)
    with pytest.raises(ValueError, match="imagenet"):
        create_model(CLASSES, init="no/such/path.safetensors")


def test_init_from_a_model_with_the_same_classes_keeps_its_head(tiny_model_dir):
    reference = load_model(str(tiny_model_dir))
    same = create_model(CLASSES, init=str(tiny_model_dir), img_size=64)
    assert torch.equal(same.net.fc[1].weight, reference.net.fc[1].weight)
    other = create_model(["a", "b", "c", "d"], init=str(tiny_model_dir), img_size=64)
    assert not torch.equal(other.net.fc[1].weight, reference.net.fc[1].weight)


def test_dilated_model_starts_from_stride_32_weights_and_describes_itself(tmp_path, tiny_model_dir):
    reference = load_model(str(tiny_model_dir))
    dilated = create_model(CLASSES, init=str(tiny_model_dir), img_size=64, output_stride=16).eval()
    assert torch.equal(dilated.net.layer4[1].conv2.weight, reference.net.layer4[1].conv2.weight)
    feats = {}
    dilated.net.layer4.register_forward_hook(lambda _m, _i, out: feats.__setitem__("l4", out))
    x = to_tensor(np.stack([synthetic_slice(i, 64) for i in range(2)]))
    with torch.no_grad():
        dilated(x)
    assert feats["l4"].shape[-1] == 64 // 16  # the grid of layer3, not 64 // 32
    save_model(dilated, tmp_path, fp16=False)
    loaded = load_model(str(tmp_path))
    assert loaded.config.output_stride == 16
    with torch.no_grad():
        assert torch.allclose(loaded(x), dilated(x), atol=1e-5)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["output_stride"] = 8
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="output_stride"):
        load_model(str(tmp_path))


def test_the_card_keeps_its_notes_through_a_refit(tiny_model_dir, tmp_path):
    """Notes live in config.training: a refit that rewrites the card (trust, cam_offset, heatmaps) keeps them."""
    from brain_tumor.hub import write_model_card

    config = load_model(str(tiny_model_dir)).config
    config.training = {**config.training, "notes": ["Release 9: how these weights were made."]}
    assert "Release 9: how" in write_model_card(tmp_path, config).read_text()
    assert "Release 9: how" not in write_model_card(tmp_path, config, notes=[]).read_text()
    assert "Other words." in write_model_card(tmp_path, config, notes=["Other words."]).read_text()
