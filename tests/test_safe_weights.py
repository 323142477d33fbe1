"""Safe weights: a pickle given as a model is refused and never unpickled; broken model folders give a clear
ModelLoadError. Each malicious file would create a marker file if anything unpickled it."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from brain_tumor import predict
from brain_tumor.model import CONFIG_NAME, WEIGHTS_NAME, ModelLoadError, create_model, load_model, save_model
from conftest import CLASSES


class Payload:
    """Unpickling this opens (creates) the marker file: proof that the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture()
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a malicious pickle was executed"


def malicious(path: Path, marker: Path, torch_format: bool = True) -> Path:
    """A torch.save zip (.pt) or a bare pickle whose loading would run Payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:
        torch.save({"state_dict": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    assert not marker.exists()
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Guard: if this stops creating the marker, the tests below prove nothing."""
    path = malicious(tmp_path / "evil.pkl", tmp_path / "ran", torch_format=False)
    pickle.loads(path.read_bytes())
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "pytorch_model.bin", "EVIL.CKPT"])
def test_pickle_file_as_model_is_refused(tmp_path, marker, name):
    path = malicious(tmp_path / name, marker)
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(str(path))


def test_pickle_in_a_model_folder_without_safetensors_is_refused(tmp_path, tiny_model_dir, marker):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / CONFIG_NAME, folder)
    malicious(folder / "pytorch_model.bin", marker)
    with pytest.raises(ModelLoadError, match=f"no {WEIGHTS_NAME}.*pytorch_model.bin.*pickle"):
        load_model(str(folder))


@pytest.mark.parametrize("name", [WEIGHTS_NAME, "weights"])
def test_pickle_disguised_as_safetensors_is_not_unpickled(tmp_path, tiny_model_dir, marker, name):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / CONFIG_NAME, folder)
    path = malicious(folder / name, marker)
    with pytest.raises(ModelLoadError):
        load_model(str(path if name != WEIGHTS_NAME else folder))


@pytest.mark.parametrize("name", ["evil.pt", "model.safetensors", "folder"])
def test_pickle_as_init_is_refused(tmp_path, marker, name):
    target = tmp_path / "folder" if name == "folder" else tmp_path / name
    malicious(target / "pytorch_model.bin" if name == "folder" else target, marker)
    with pytest.raises(ModelLoadError) as info:
        create_model(CLASSES, init=str(target))
    assert "pickle" in str(info.value) or "not a valid safetensors" in str(info.value)


def test_tampered_imagenet_cache_is_not_unpickled(tmp_path, marker, monkeypatch):
    """--init imagenet reads torchvision's cached .pth: torch.load must use weights_only (the default now)."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    malicious(cached, marker)
    with pytest.raises(ModelLoadError):
        create_model(CLASSES, init="imagenet")


def test_cli_refuses_a_pickle_model(tmp_path, marker, capsys):
    evil = malicious(tmp_path / "evil.pt", marker)
    image = tmp_path / "x.png"
    image.write_bytes(b"unused")
    assert predict.main([str(image), "--model", str(evil), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: refusing to load evil.pt") and "Traceback" not in err


# --------------------------------------------------------------------------------------- broken model folders

@pytest.fixture()
def model_copy(tmp_path, tiny_model_dir) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def test_class_count_mismatch_is_named(model_copy):
    config = json.loads((model_copy / CONFIG_NAME).read_text())
    config["class_names"] = CLASSES[:3]
    (model_copy / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(model_copy))
    assert "4-class head" in str(info.value) and "3 classes" in str(info.value) and "\n" not in str(info.value)


def test_missing_config_is_named(model_copy):
    (model_copy / CONFIG_NAME).unlink()
    with pytest.raises(ModelLoadError, match=f"no {CONFIG_NAME}"):
        load_model(str(model_copy))


@pytest.mark.parametrize("content", [b"", b"not json {", b"\xff\xfe\x00binary", b"null", b"[1, 2]",
                                     b'{"class_names": "glioma"}', b'{"class_names": ["a", "b"], "img_size": "big"}',
                                     b'{"class_names": ["a", "b"], "architecture": "vit"}',
                                     b'{"class_names": ["a", "b"], "dropout": "high"}',
                                     b'{"class_names": ["a", "b", "c", "d"], "mean": "x"}',
                                     b'{"class_names": ["a", "b", "c", "d"], "temperature": 0}',
                                     b'{"class_names": ["a", "b", "c", "d"], "std": [0, 0, 0]}',
                                     b'{"class_names": ["a", "b", "c", "d"], "abstain_below": "high"}',
                                     b'{"class_names": ["a", "b", "c", "d"], "abstain_below": NaN}',
                                     b'{"class_names": ["a", "b", "c", "d"], "ood_threshold": "x"}',
                                     b'{"class_names": ["a", "b", "c", "d"], "cam_power": 0}',
                                     b'{"class_names": ["a", "b", "c", "d"], "cam_layer": "nope"}',
                                     b'{"class_names": ["a", "b", "c", "d"], "cam_method": 7}'])
def test_broken_config_is_a_clear_error(model_copy, content):
    (model_copy / CONFIG_NAME).write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(model_copy))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert "do not match" not in str(info.value)  # refused for the broken field, before the weights are compared


@pytest.mark.parametrize("key, value", [("temperature", float("nan")), ("temperature", True), ("temperature", -1),
                                        ("mean", [0.5, float("nan"), 0.5]), ("std", [0.2, float("inf"), 0.2]),
                                        ("abstain_below", float("nan")), ("cam_power", float("inf")),
                                        ("ood_threshold", "x"), ("cam_method", 7)])
def test_one_bad_field_in_a_sound_config_is_named(model_copy, key, value):
    config = json.loads((model_copy / CONFIG_NAME).read_text())
    config[key] = value  # everything else as saved, so only this field can be the reason
    (model_copy / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(model_copy))
    assert key in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong_tensors"])
def test_corrupt_safetensors_is_a_clear_error(model_copy, damage):
    weights = model_copy / WEIGHTS_NAME
    data = weights.read_bytes()
    if damage == "garbage":
        weights.write_bytes(b"\x00" * 64 + data[64:])
    elif damage == "truncated":
        weights.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        from safetensors.torch import save_file
        save_file({"conv1.weight": torch.zeros(3, 3)}, str(weights))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(model_copy))
    assert WEIGHTS_NAME in str(info.value) or "do not match" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_sound_copy_still_loads(model_copy):
    model = load_model(str(model_copy))
    assert model.targets == CLASSES and not model.training
    save_model(model, model_copy / "again")
    assert load_model(str(model_copy / "again")).targets == CLASSES
