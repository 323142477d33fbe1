"""Run ``python app.py`` for a benchmark: a free loopback port, wait for the first answer, memory, clean stop.

Memory comes from /proc (VmRSS now, VmHWM the peak), summed over the app and its child processes, in MB
(10^6 bytes).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks._harness import REPO

APP = REPO / "app.py"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of the process tree now (VmRSS) and each process's own peak (VmHWM), summed, in MB."""
    pids = process_tree(pid)
    mb = 1024 / 1e6
    return {"rss_mb": sum(_status_kb(p, "VmRSS") for p in pids) * mb,
            "peak_mb": sum(_status_kb(p, "VmHWM") for p in pids) * mb, "processes": len(pids)}


class MemorySampler(threading.Thread):
    """Samples the tree's total RSS every ``interval`` seconds; ``peak_mb`` is the largest total seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_mb = max(self.peak_mb, tree_memory_mb(self.pid)["rss_mb"])
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak_mb


def make_client(url: str, download_dir: os.PathLike | str):
    """A quiet gradio_client (no analytics) that saves output files under ``download_dir``."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=str(download_dir))


def predict(client, path, timeout: Optional[float] = 120.0) -> Any:
    """One /predict round trip for one file; the app's outputs (label dict first, overlay second)."""
    from gradio_client import handle_file

    return client.submit(handle_file(str(path)), api_name="/predict").result(timeout=timeout)


class App:
    """``python app.py`` in its own process group, on a free loopback port. Its log and the clients' downloads
    live in a temp folder; the downloads are deleted when the app stops, the log is kept. ``app``: a script, or
    a module run from the repository with ``python -m`` (``benchmarks.null_app``).

    >>> with App(model="runs/shipped") as app:
    ...     client, connected_s, first_answer_s = app.wait_for_answer("examples/glioma_1.jpg")
    """

    def __init__(self, model: Optional[str] = None, app: os.PathLike | str = APP, host: str = "127.0.0.1",
                 port: Optional[int] = None, python: str = sys.executable):
        self.app, self.host = app, host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}/"
        self.model, self.python = model, python
        self.proc: Optional[subprocess.Popen] = None
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-app-"))
        self.log_path = self.workdir / "app.log"
        self.started_at = 0.0
        self.stop_seconds: Optional[float] = None
        self.exit_code: Optional[int] = None

    def start(self) -> "App":
        script = str(self.app).endswith(".py")
        if script and not Path(self.app).exists():
            raise SystemExit(f"error: {self.app} not found")
        command, cwd = ([str(self.app)], Path(self.app).parent) if script else (["-m", str(self.app)], REPO)
        env = dict(os.environ, GRADIO_SERVER_PORT=str(self.port), GRADIO_SERVER_NAME=self.host,
                   GRADIO_ANALYTICS_ENABLED="False")
        if self.model:
            env["BRAIN_TUMOR_MODEL"] = self.model
        with open(self.log_path, "wb") as log:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen([self.python, *command], cwd=cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"the app exited (code {code}) before answering; its log ends:\n{self.log_tail()}")

    def download_dir(self) -> str:
        """A new folder for one client's output files, removed when the app stops."""
        downloads = self.workdir / "downloads"
        downloads.mkdir(exist_ok=True)
        return tempfile.mkdtemp(dir=downloads)

    def wait_for_answer(self, image, timeout: float = 180.0) -> tuple[Any, float, float]:
        """Poll until the server accepts a client, then ask /predict once.

        Returns (client, seconds from launch to a connected client, seconds from launch to the first answer)."""
        deadline = self.started_at + timeout
        client, folder = None, self.download_dir()
        while client is None:
            self._check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the app did not come up within {timeout:.0f} s; its log ends:\n{self.log_tail()}")
            try:
                client = make_client(self.url, folder)
            except Exception:  # not listening yet: connection refused, or the config is not served yet
                time.sleep(0.1)
        connected = time.perf_counter() - self.started_at
        predict(client, image, timeout=max(deadline - time.perf_counter(), 1.0))
        return client, connected, time.perf_counter() - self.started_at

    def memory(self) -> dict[str, float]:
        self._check_alive()
        return tree_memory_mb(self.proc.pid)

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """Ctrl-C (Gradio closes its server), then SIGTERM, then SIGKILL to the app's own process group."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        t0 = time.perf_counter()
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)  # the group this App started (start_new_session)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # any child of the app that outlived it
        except (ProcessLookupError, PermissionError):
            pass
        self.stop_seconds = time.perf_counter() - t0
        self.exit_code = self.proc.poll()
        shutil.rmtree(self.workdir / "downloads", ignore_errors=True)
        return self.exit_code

    def __enter__(self) -> "App":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
