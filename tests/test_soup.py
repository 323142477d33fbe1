"""scripts/soup.py: the soup's weights are the weighted mean of its ingredients', read from model folders and from a
run's train state (its moving average), and it loads as a model folder with the --like folder's config and split."""
from __future__ import annotations

import pytest
import torch

from brain_tumor.model import create_model, load_model, save_model
from scripts.soup import ingredient, main

from conftest import CLASSES


def _model(seed: int):
    torch.manual_seed(seed)
    return create_model(CLASSES, init="scratch", img_size=64).eval()


def test_soup_is_the_weighted_mean_of_a_folder_and_a_train_state(tmp_path):
    a, b = _model(1), _model(2)
    b.net.layer3[0].bn1.running_var.fill_(3.0)  # batch-norm statistics are averaged too
    save_model(a, tmp_path / "a", fp16=False)
    (tmp_path / "a" / "split.json").write_text("{}\n")
    ema = torch.optim.swa_utils.AveragedModel(b, use_buffers=True)  # what train.py's --ema keeps in its state
    torch.save({"model": a.state_dict(), "ema": ema.state_dict(), "epoch": 5,
                "config": '{"init": "a", "epochs": 5, "lr": 0.0003, "seed": 19}'}, tmp_path / "run.train_state.pt")
    assert torch.equal(ingredient(str(tmp_path / "run.train_state.pt"))[0]["fc.1.weight"], b.net.fc[1].weight)

    main([str(tmp_path / "a"), str(tmp_path / "run.train_state.pt"), "--weights", "3,1", "--like",
          str(tmp_path / "a"), "--out", str(tmp_path / "soup")])
    soup = load_model(str(tmp_path / "soup"))
    for name in ("conv1.weight", "layer3.0.bn1.running_var", "fc.1.bias"):
        want = 0.75 * a.net.state_dict()[name] + 0.25 * b.net.state_dict()[name]
        got = soup.net.state_dict()[name].float()
        assert torch.allclose(got, want, atol=2e-3 * want.abs().max().item() + 1e-4), name  # fp16 on disk
        assert not torch.allclose(got, a.net.state_dict()[name])
    assert soup.config.class_names == a.config.class_names
    assert (tmp_path / "soup" / "split.json").read_text() == "{}\n"
    record = soup.config.training["soup"]  # what it is made of travels with it, and its card says so
    assert [i["weight"] for i in record["ingredients"]] == [0.75, 0.25]
    assert record["ingredients"][1]["run"] == {"init": "a", "epochs": 5, "lr": 0.0003, "seed": 19}
    assert "moving average after epoch 5" in record["ingredients"][1]["kind"]
    assert record["command"].startswith("python -m scripts.soup ") and "--weights 3,1" in record["command"]
    from brain_tumor.hub import model_card
    assert "model soup" in model_card(soup.config) and "0.75 x a model folder" in model_card(soup.config)


def test_soup_refuses_ingredients_of_different_shapes_and_bad_weights(tmp_path):
    save_model(_model(1), tmp_path / "a")
    torch.manual_seed(0)
    save_model(create_model(["notumor", "tumor"], init="scratch", img_size=64).eval(), tmp_path / "two")
    with pytest.raises(SystemExit, match="weights"):
        main([str(tmp_path / "a"), str(tmp_path / "a"), "--weights", "1", "--like", str(tmp_path / "a"),
              "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="differ"):
        main([str(tmp_path / "a"), str(tmp_path / "two"), "--like", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="not a model"):
        main([str(tmp_path / "nothing"), "--like", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="not a model"):
        main([str(tmp_path / "gone.train_state.pt"), "--like", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit, match="numbers separated by commas"):
        main([str(tmp_path / "a"), "--weights", "half", "--like", str(tmp_path / "a"), "--out", str(tmp_path / "s")])
    assert not (tmp_path / "s").exists()  # nothing written on a refusal
