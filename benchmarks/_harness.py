"""What every benchmark shares: the machine, a fixed image sample, the timing loop, order statistics, a table, JSON.

Not imported by the package or the tests; the scripts beside it run as ``python -m benchmarks.NAME``.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from brain_tumor.metrics import json_ready

REPO = Path(__file__).resolve().parents[1]
TRAINING_DATA = REPO.parent / "shared" / "data" / "brain-tumor-mri" / "Training"
EXAMPLES = REPO / "examples"
MODEL_HELP = "model folder or Hub id user/name[@revision] (default: $BRAIN_TUMOR_MODEL, else the bundled model/)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> Optional[float]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine and software the figures came from (read when called: thread counts may have changed)."""
    import torch

    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return {"cpu": _cpu_model(), "logical_cores": cores, "usable_cores": usable, "memory_gb": _memory_gb(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def describe_machine(m: dict[str, Any]) -> str:
    line = (f"machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
            f"{m['memory_gb']} GB, torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}")
    load = m.get("load_average_1min")
    if load is not None and m["usable_cores"] and load > 0.25 * m["usable_cores"]:
        line += (f"\nWARNING: load average {load} on {m['usable_cores']} cores before the run: something else is "
                 "running, so these timings are pessimistic and noisy. Rerun on an idle machine for figures to "
                 "publish.")
    return line


def default_data() -> Path:
    """The Kaggle training folder beside the repository, else the bundled examples."""
    return TRAINING_DATA if TRAINING_DATA.is_dir() else EXAMPLES


def sample_images(folder: os.PathLike | str, n: int, seed: int = 0) -> tuple[list[Path], int]:
    """``n`` scan files from ``folder`` (walked recursively), a fixed-seed random sample.

    A folder with fewer files is cycled to ``n``. Returns (paths, number of distinct files)."""
    from brain_tumor.datasets import list_images

    pool = list_images(folder)
    if not pool:
        raise SystemExit(f"error: no images under {folder}")
    if n <= 0:
        raise SystemExit(f"error: need at least one image, asked for {n}")
    if len(pool) >= n:
        picks = np.random.default_rng(seed).choice(len(pool), n, replace=False)
        return [pool[int(i)] for i in picks], n
    return [pool[i % len(pool)] for i in range(n)], len(pool)


def take_turns(paths: dict[str, Callable[[Any], object]], inputs: Sequence, warmup: Sequence = (),
               after_round: Optional[Callable[[int, dict[str, list[float]]], None]] = None) -> dict[str, list[float]]:
    """Seconds of each path on each input, the paths taking turns: on input ``i`` they run in an order rotated by
    ``i``, so that no path always runs first and a machine slowing down or speeding up mid-run moves every path
    alike (read the lists with ``summary``). Every path first runs once on each ``warmup`` input, untimed;
    ``after_round(i, times)`` is called after each input (progress lines)."""
    for x in warmup:
        for fn in paths.values():
            fn(x)
    names = list(paths)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, x in enumerate(inputs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            paths[name](x)
            times[name].append(time.perf_counter() - t0)
        if after_round is not None:
            after_round(i, times)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p95, mean, min and max of a list of timings, in the list's unit."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "median": float(np.median(v)), "p95": percentile(v, 95), "mean": float(v.mean()),
            "min": float(v.min()), "max": float(v.max())}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text: first column left, the others right."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(header))]
    lines = []
    for k, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path: Optional[str], benchmark: str, payload: dict[str, Any], machine_info: dict[str, Any]) -> None:
    if not path:
        return
    out = {"benchmark": benchmark, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info, **payload}
    Path(path).write_text(json.dumps(json_ready(out), indent=1, default=str) + "\n")
    print(f"wrote {path}")


def meets(value: float, limit: float, at_most: bool = True) -> str:
    """'yes'/'NO' against a target, for the table (never an exit status)."""
    if value != value:  # NaN
        return "n/a"
    return "yes" if (value <= limit if at_most else value >= limit) else "NO"
