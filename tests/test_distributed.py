"""DistributedDataParallel under torchrun, on the CPU with gloo: shares of an epoch, one step equal to a single
process's, a two-process run that writes one model folder. Tiny data, a few seconds per process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from brain_tumor.config import TrainConfig
from brain_tumor.distributed import World, resolve_device
from brain_tumor.engine import train_one_epoch
from brain_tumor.model import create_model, load_model
from conftest import CLASSES, ROOT, synthetic_slice, write_class_folders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_shares_are_disjoint_and_cover_the_batch():
    for n in (2, 7, 32, 33):
        for size in (1, 2, 3):
            covered = []
            for rank in range(size):
                covered += list(range(n))[World(rank, size).share(n)]
            assert covered == list(range(n)), (n, size)
    assert World().main and not World(1, 2).main


def test_device_choice_is_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


def _toy(seed: int = 0):
    """A 2-class model without batch statistics or dropout, so that one step's result does not depend on how
    the batch is split across ranks (batch norm would normalise each rank's share by its own statistics)."""
    torch.manual_seed(seed)
    model = create_model(["glioma", "notumor"], init="scratch", img_size=32, dropout=0.0)
    for name, module in list(model.net.named_modules()):
        for child, sub in list(module.named_children()):
            if isinstance(sub, nn.BatchNorm2d):
                setattr(module, child, nn.Identity())
    return model


def _data():
    x = torch.from_numpy(np.stack([synthetic_slice(i, 32, tumor=i % 2 == 0) for i in range(8)]))
    return x, torch.tensor([i % 2 for i in range(8)])


def _one_step(model, world, net, per_process_batch: int) -> None:
    x, y = _data()
    cfg = TrainConfig(batch_size=per_process_batch, epoch_size=8, precision="fp32", loc_weight=0.0, head_weight=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, x, y, opt, cfg, torch.Generator().manual_seed(5), world=world, net=net)


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank, 2)
    model = _toy()
    _one_step(model, world, world.wrap(model), per_process_batch=4)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_one_step_on_two_processes_equals_one_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    single = _toy()
    _one_step(single, World(), None, per_process_batch=8)  # the same global batch of 8, in one process
    ddp = torch.load(out, weights_only=True)
    start = _toy().state_dict()
    moved = 0
    for k, v in single.state_dict().items():
        assert torch.allclose(ddp[k], v, atol=1e-6, rtol=1e-5), k
        moved += int(not torch.equal(v, start[k]))
    assert moved > 10  # the step changed the weights: the comparison is not of two untouched models


@pytest.mark.slow
@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_torchrun_two_processes_write_one_model_folder(tmp_path, ema):
    data = write_class_folders(tmp_path / "data", per_class=4)
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), "train.py", "--data", str(data), "--out", str(out),
                          "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--init", "scratch",
                          "--val-fraction", "0.25", "--device", "cpu", "--precision", "fp32", "--ema", ema],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote ") == 1  # rank 0 alone logs and writes
    assert "distributed: 2 processes (gloo), global batch 8" in run.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["world_size"] == 2 and cfg["training"]["global_batch"] == 8
    assert cfg["training"]["config"]["ema"] == float(ema)
    model = load_model(str(out))
    assert model.targets == CLASSES
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
