"""A crowd on loopback: K concurrent gradio_client clients x R /predict requests each, none lost, errored or mixed up.

First every image used is sent alone, one after another: those answers are the reference. Then K clients,
each in its own thread with its own connection, start together and send R requests each; at any moment
the clients are sending different images (client i's request j is image (i + j*K) mod the sample). Each
answer's label dict must equal the reference for its image (numbers within --tolerance: the same model on
the same pixels) and its overlay must match the reference overlay (mean absolute difference within
--overlay-tolerance grey levels). Reports p50/p95 latency and throughput; exits 1 on any lost, errored
or mismatched answer. Not part of the test suite's pass/fail.

    python -m benchmarks.load                                        # launches app.py: 16 clients x 25 requests
    python -m benchmarks.load --model runs/shipped --json load.json
    python -m benchmarks.load --url http://127.0.0.1:7860/ --clients 4 --requests 3
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks._harness import (MODEL_HELP, default_data, describe_machine, machine, sample_images, summary, table,
                                 write_json)
from benchmarks._server import APP, App, make_client, predict


@dataclass
class Answer:
    client: int
    request: int
    image: int  # index into the sample
    seconds: float
    output: Any = None
    overlay: Optional[np.ndarray] = None  # read right away: the client's download folder is temporary
    error: Optional[str] = None


def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between the numbers of two nested outputs; inf where their structure or any
    non-numeric value differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return math.inf
        return max((max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b))
    return 0.0 if a == b else math.inf


def _label(output: Any) -> Any:
    """The label dict: the app's first output."""
    return output[0] if isinstance(output, (list, tuple)) and output else output


def _overlay(output: Any) -> Optional[np.ndarray]:
    """The overlay (second output) as pixels, when the client saved it as a file."""
    from PIL import Image

    if not isinstance(output, (list, tuple)) or len(output) < 2:
        return None
    path = output[1].get("path") if isinstance(output[1], dict) else output[1]
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)
    except Exception:  # noqa: BLE001 - no file: the label check still applies
        return None


def _overlay_difference(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).mean())


def _client_thread(client, k: int, requests: int, n_clients: int, paths: list[Path], start: threading.Barrier,
                   timeout: float, out: list[Answer]) -> None:
    start.wait()
    for j in range(requests):
        idx = (k + j * n_clients) % len(paths)
        t0 = time.perf_counter()
        try:
            output = predict(client, paths[idx], timeout=timeout)
            answer = Answer(k, j, idx, time.perf_counter() - t0, output=output)
            answer.overlay = _overlay(output)  # after the clock stopped
        except Exception as e:  # noqa: BLE001 - an errored request is a finding, not a crash
            answer = Answer(k, j, idx, time.perf_counter() - t0, error=f"{type(e).__name__}: {str(e)[:200]}")
        out.append(answer)  # list.append is atomic under the GIL


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=None, help="a running app; without it, app.py is launched on a free port")
    ap.add_argument("--model", default=None, help=MODEL_HELP + " (when launching)")
    ap.add_argument("--app", default=str(APP), help="the app script launched (default: %(default)s)")
    ap.add_argument("--data", default=None, help="folder of images, walked recursively (default: the Kaggle "
                    "Training folder beside the repo, else examples/)")
    ap.add_argument("--images", type=int, default=100, help="distinct images in the sample (fixed seed)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest difference allowed in the label dict")
    ap.add_argument("--overlay-tolerance", type=float, default=1.0, help="mean grey-level difference allowed "
                    "between an overlay and its reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--launch-timeout", type=float, default=180.0)
    ap.add_argument("--request-timeout", type=float, default=300.0, help="seconds one request may take, queue "
                    "included (a request past it counts as errored)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    data = Path(args.data) if args.data else default_data()
    paths, distinct = sample_images(data, args.images, args.seed)
    paths = paths[:distinct]
    used = sorted({(k + j * args.clients) % len(paths) for k in range(args.clients) for j in range(args.requests)})
    info = machine()
    print(describe_machine(info))
    print(f"target:  {args.url or f'{args.app} (launched), model ' + (args.model or '(default)')}")
    print(f"load:    {args.clients} clients x {args.requests} requests, {len(used)} distinct images from {data}",
          flush=True)

    app = None
    downloads = tempfile.TemporaryDirectory(prefix="bench-load-")
    try:
        if args.url:
            url = args.url
            first = make_client(url, Path(downloads.name) / "reference")
        else:
            app = App(model=args.model, app=args.app).start()
            print(f"  launched {app.url}, waiting for the first answer ...", flush=True)
            first, _, first_s = app.wait_for_answer(paths[used[0]], timeout=args.launch_timeout)
            url = app.url
            print(f"  first answer after {first_s:.1f} s", flush=True)

        print(f"  reference: {len(used)} requests, one at a time ...", flush=True)
        reference, reference_s, reference_errors = {}, [], {}
        for idx in used:
            t0 = time.perf_counter()
            try:
                output = predict(first, paths[idx], timeout=args.request_timeout)
            except Exception as e:  # noqa: BLE001
                reference_errors[idx] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            reference_s.append(time.perf_counter() - t0)
            reference[idx] = (_label(output), _overlay(output))

        print(f"  crowd: {args.clients} clients connecting ...", flush=True)
        clients = [make_client(url, Path(downloads.name) / f"client{k}") for k in range(args.clients)]
        answers: list[Answer] = []
        barrier = threading.Barrier(args.clients + 1)
        threads = [threading.Thread(target=_client_thread, daemon=True,
                                    args=(c, k, args.requests, args.clients, paths, barrier, args.request_timeout,
                                          answers)) for k, c in enumerate(clients)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        deadline = t0 + args.request_timeout * args.requests + 60
        for t in threads:
            t.join(timeout=max(deadline - time.perf_counter(), 0.1))
        wall = time.perf_counter() - t0
        answers = list(answers)  # a thread still running past the deadline adds no more to what is judged
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if app is not None:
            app.stop()
            print(f"  app stopped in {app.stop_seconds or 0:.1f} s (exit code {app.exit_code}); log: {app.log_path}")
        downloads.cleanup()

    expected = args.clients * args.requests
    errored = [a for a in answers if a.error]
    mismatched, mixed_up, worst_label, worst_overlay = [], [], 0.0, 0.0
    for a in answers:
        if a.error:
            continue
        if a.image not in reference:
            mismatched.append((a, "no reference answer for this image"))
            continue
        ref_label, ref_overlay = reference[a.image]
        label_diff = max_difference(_label(a.output), ref_label)
        overlay_diff = _overlay_difference(a.overlay, ref_overlay)
        worst_label = max(worst_label, label_diff)
        worst_overlay = max(worst_overlay, overlay_diff)
        if label_diff > args.tolerance or overlay_diff > args.overlay_tolerance:
            others = [i for i, (lbl, _) in reference.items()
                      if i != a.image and max_difference(_label(a.output), lbl) <= args.tolerance]
            why = f"label differs by {label_diff:.3g}, overlay by {overlay_diff:.3g}"
            if others:
                mixed_up.append(a)
                why += f"; equals the answer for image {others[0]} ({paths[others[0]].name})"
            mismatched.append((a, why))
    lost = expected - len(answers)
    ok = len(answers) - len(errored) - len(mismatched)
    lat = summary([a.seconds for a in answers if not a.error])
    ref = summary(reference_s)
    throughput = len(answers) / wall if wall > 0 else float("nan")

    rows = [
        ["requests answered correctly", f"{ok} / {expected}"],
        ["lost (no answer by the deadline)", str(lost)],
        ["errored", str(len(errored))],
        ["mismatched (of which another image's answer)", f"{len(mismatched)} ({len(mixed_up)})"],
        ["largest label / overlay difference from reference", f"{worst_label:.2g} / {worst_overlay:.2g}"],
        ["latency p50 under load", f"{lat.get('median', float('nan')):.3f} s"],
        ["latency p95 under load", f"{lat.get('p95', float('nan')):.3f} s"],
        ["latency max under load", f"{lat.get('max', float('nan')):.3f} s"],
        ["throughput", f"{throughput:.2f} requests/s ({wall:.1f} s wall)"],
        ["alone (reference pass): p50 / p95", f"{ref.get('median', float('nan')):.3f} / "
                                              f"{ref.get('p95', float('nan')):.3f} s"],
    ]
    if reference_errors:
        rows.append(["reference requests that errored", str(len(reference_errors))])
    print()
    print(table([f"{args.clients} clients x {args.requests} requests, loopback", "value"], rows))
    for a in errored[:5]:
        print(f"  error: client {a.client} request {a.request} ({paths[a.image].name}): {a.error}")
    for a, why in mismatched[:5]:
        print(f"  mismatch: client {a.client} request {a.request} ({paths[a.image].name}): {why}")
    for idx, e in list(reference_errors.items())[:5]:
        print(f"  reference error: {paths[idx].name}: {e}")
    write_json(args.json, "load", {
        "url": args.url, "app": None if args.url else args.app, "model": args.model, "data": str(data),
        "clients": args.clients, "requests_per_client": args.requests, "distinct_images": len(used),
        "expected": expected, "answered_ok": ok, "lost": lost, "errored": len(errored),
        "mismatched": len(mismatched), "mixed_up": len(mixed_up), "largest_label_difference": worst_label,
        "largest_overlay_difference": worst_overlay, "latency_s": lat, "throughput_rps": throughput, "wall_s": wall,
        "reference_latency_s": ref, "reference_errors": len(reference_errors),
        "problems": [a.error for a in errored[:20]] + [why for _, why in mismatched[:20]]}, info)
    bad = lost or errored or mismatched or reference_errors
    print("FAIL: some requests were lost, errored or mixed up" if bad else "OK: every request answered, none mixed up")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
