"""The app as a user meets it: launch to first answer, /predict round trips, resident memory, and a soak.

Starts ``python app.py`` on a free loopback port (benchmarks/_server.py), then through gradio_client:
  - seconds from launch to the first answered /predict (an example image);
  - p50/p95 of --requests sequential /predict round trips (upload, answer + heat map + overlay, and the
    client fetching the overlay image), cycling through the example images;
  - the app's peak resident memory (largest sampled RSS, and the sum of each process's VmHWM), children included;
  - with --soak N: N requests in all, RSS after the first 50 and after N (target: within 10%);
  - then, once the app has stopped, the same round trips to benchmarks/null_app.py: the same /predict API
    served with no work at all (no decoding, model call or rendering), the floor any server reaches through
    gradio_client on this machine (--no-null-app skips it).
For comparison it first times the peer way (benchmarks/latency.py, (a)) on the same images in this process,
before the app starts. Each app is always stopped at the end (Ctrl-C, then SIGTERM, then SIGKILL).

    python -m benchmarks.app                                        # bundled model, 50 requests
    python -m benchmarks.app --model runs/shipped --json app.json
    python -m benchmarks.app --soak 500 --json soak.json
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks._harness import (EXAMPLES, MODEL_HELP, describe_machine, machine, meets, sample_images, summary,
                                 table, take_turns, write_json)
from benchmarks._server import APP, App, MemorySampler, predict

NULL_APP = "benchmarks.null_app"

SOAK_BASE = 50  # the soak check compares RSS after this many requests with RSS after all of them


def time_peer(paths: list[Path], n: int, warmup: int = 2) -> dict:
    """Median seconds per image of the peer way (random weights: the cost is what matters)."""
    import torch

    from benchmarks.latency import PeerPipeline

    peer = PeerPipeline()
    times = take_turns({"peer": peer}, [paths[i % len(paths)] for i in range(n)], warmup=paths[:warmup])["peer"]
    peer.close()
    del peer
    gc.collect()
    return {**summary(times), "threads": torch.get_num_threads()}


def time_requests(client, paths: list[Path], n: int, timeout: float, errors: list[str], name: str) -> list[float]:
    """Seconds of each of ``n`` sequential /predict round trips (paths cycled); failures are added to ``errors``."""
    latencies = []
    for k in range(1, n + 1):
        t0 = time.perf_counter()
        try:
            predict(client, paths[k % len(paths)], timeout=timeout)
            latencies.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - counted and reported, then the run goes on
            errors.append(f"{name} request {k}: {type(e).__name__}: {str(e)[:200]}")
    return latencies


def time_null_app(paths: list[Path], n: int, timeout: float, errors: list[str], model: Optional[str]) -> dict:
    """p50/p95 of /predict round trips to benchmarks/null_app.py (no work behind the API)."""
    with App(model=model, app=NULL_APP) as null:
        client, _, _ = null.wait_for_answer(paths[0])
        out = summary(time_requests(client, paths, n, timeout, errors, "null app"))
        client.close()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--app", default=str(APP), help="the app script (default: %(default)s)")
    ap.add_argument("--data", default=str(EXAMPLES), help="images sent, cycled (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=50, help="sequential /predict calls timed")
    ap.add_argument("--soak", type=int, default=0, metavar="N",
                    help=f"N requests in all, RSS after {SOAK_BASE} and after N (0: off)")
    ap.add_argument("--no-peer", action="store_true", help="skip timing the peer way for comparison")
    ap.add_argument("--no-null-app", action="store_true", help="skip timing benchmarks/null_app.py afterwards")
    ap.add_argument("--peer-images", type=int, default=30, help="peer-way timings (median)")
    ap.add_argument("--launch-timeout", type=float, default=180.0, help="seconds to wait for the first answer")
    ap.add_argument("--request-timeout", type=float, default=120.0, help="seconds one request may take")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.soak and args.soak <= SOAK_BASE:
        ap.error(f"--soak must be more than {SOAK_BASE} (or 0)")

    paths, distinct = sample_images(args.data, max(args.requests, args.soak, 1))
    paths = paths[:distinct]  # the distinct files, in sample order; cycled below
    info = machine()
    print(describe_machine(info))
    print(f"app:     {args.app}, model {args.model or '(default: $BRAIN_TUMOR_MODEL or model/)'}")
    print(f"images:  {distinct} distinct from {args.data}, cycled", flush=True)

    peer = None
    if not args.no_peer:
        print("  timing the peer way (before the app starts) ...", flush=True)
        peer = time_peer(paths, args.peer_images)

    total = max(args.requests, args.soak)
    latencies, errors, rss_after = [], [], {}
    app = App(model=args.model, app=args.app)
    sampler = None
    try:
        app.start()
        sampler = MemorySampler(app.proc.pid)
        sampler.start()
        print(f"  launched {app.url}, waiting for the first answer ...", flush=True)
        client, connected_s, first_s = app.wait_for_answer(paths[0], timeout=args.launch_timeout)
        print(f"  first answer after {first_s:.1f} s; {total} sequential requests ...", flush=True)
        rss_after[0] = app.memory()["rss_mb"]
        for k in range(1, total + 1):
            t0 = time.perf_counter()
            try:
                predict(client, paths[k % len(paths)], timeout=args.request_timeout)
            except Exception as e:  # noqa: BLE001 - counted and reported, then the run goes on
                errors.append(f"request {k}: {type(e).__name__}: {str(e)[:200]}")
                app.memory()  # raises if the app died
            if k <= args.requests:
                latencies.append(time.perf_counter() - t0)
            if k % SOAK_BASE == 0 or k == total:
                rss_after[k] = app.memory()["rss_mb"]
                if args.soak:
                    print(f"    {k} requests: RSS {rss_after[k]:.0f} MB", flush=True)
        memory = app.memory()
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        sampled_peak = sampler.stop() if sampler else 0.0
        app.stop()
        print(f"  app stopped in {app.stop_seconds or 0:.1f} s (exit code {app.exit_code}); log: {app.log_path}")

    null = None
    if not args.no_null_app:
        print(f"  the same requests to {NULL_APP} (no work behind the API) ...", flush=True)
        try:
            null = time_null_app(paths, args.requests, args.request_timeout, errors, args.model)
        except Exception as e:  # noqa: BLE001 - the app's figures above are still reported
            errors.append(f"null app: {type(e).__name__}: {str(e)[:300]}")

    lat = summary(latencies)
    peak = max(memory["peak_mb"], sampled_peak)
    rows = [
        ["launch to first answered /predict", f"{first_s:.2f} s", f"<= 15 s: {meets(first_s, 15)}"],
        ["  of which launch to server accepting a client", f"{connected_s:.2f} s", ""],
        [f"/predict round trip p50 ({lat['n']} sequential)", f"{lat['median']:.4f} s",
         f"<= peer (a): {meets(lat['median'], peer['median'])}" if peer else ""],
        ["/predict round trip p95", f"{lat['p95']:.4f} s", ""],
        ["peak resident memory (app + children)", f"{peak:.0f} MB", f"<= 1500 MB: {meets(peak, 1500)}"],
        ["  sampled peak RSS / sum of VmHWM", f"{sampled_peak:.0f} / {memory['peak_mb']:.0f} MB", ""],
        [f"RSS after first answer / after {total} requests", f"{rss_after[0]:.0f} / {rss_after[total]:.0f} MB", ""],
    ]
    if peer:
        rows.insert(4, [f"peer way (a), same images, this process ({peer['threads']} threads)",
                        f"{peer['median']:.4f} s", ""])
    soak = None
    if args.soak:
        growth = rss_after[total] / rss_after[SOAK_BASE] - 1
        soak = {"requests": total, "rss_after_base_mb": rss_after[SOAK_BASE], "rss_after_all_mb": rss_after[total],
                "growth": growth}
        rows.append([f"soak: RSS after {SOAK_BASE} -> after {total} requests",
                     f"{rss_after[SOAK_BASE]:.0f} -> {rss_after[total]:.0f} MB ({growth:+.1%})",
                     f"within 10%: {meets(abs(growth), 0.10)}"])
    if null:
        rows.append(["null app (same API, no work): /predict round trip p50", f"{null['median']:.4f} s",
                     f"the floor of any server; <= peer (a): {meets(null['median'], peer['median'])}"
                     if peer else "the floor of any server"])
    rows.append(["errors", str(len(errors)), ""])
    print()
    print(table(["app (gradio_client, loopback)", "value", "target"], rows))
    for e in errors[:5]:
        print(f"  {e}")
    write_json(args.json, "app", {
        "app": args.app, "model": args.model, "data": args.data, "distinct_images": distinct,
        "launch_to_connected_s": connected_s, "launch_to_first_answer_s": first_s,
        "requests": lat, "latencies_s": latencies, "peer_a_s": peer,
        "null_app": null,
        "peak_rss_mb": peak, "sampled_peak_rss_mb": sampled_peak, "sum_vmhwm_mb": memory["peak_mb"],
        "processes": memory["processes"], "rss_after_requests_mb": rss_after, "soak": soak,
        "errors": errors, "stop_seconds": app.stop_seconds, "exit_code": app.exit_code}, info)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
