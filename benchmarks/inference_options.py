"""Which inference options pay on this CPU: the answer's forward pass, several ways, on the same slices.

For each option (all built first, then timed taking turns): milliseconds per forward pass at batch 1 (what
the app and a single-file CLI call do), images per second at batch 32 (what predict/evaluate over a folder
do), and, on a labelled folder, accuracy, calibration (ECE, share below the review threshold) and agreement
with the shipped path (same argmax; largest change of a calibrated probability), so that an option which
changes the arithmetic states what it costs. Options:
  ours           eager fp32, channels-last, inference mode, torch's thread count (what Predictor runs)
  nchw           the same in the default NCHW memory format
  no_grad        torch.no_grad instead of inference mode
  1-thread       ours with one thread
  bf16-autocast  ours under bfloat16 autocast (changes the arithmetic)
  torchscript    torch.jit.trace + freeze + optimize_for_inference (oneDNN pre-packed weights)
  onnxruntime    ONNX export run by ONNX Runtime (only if `pip install onnxruntime onnx` was done)
  torch.compile  inductor (needs a C compiler; the compile time is reported apart)
  int8           static int8 quantization (torch.ao FX, x86 backend: per-channel weights, histogram-calibrated
                 activations) calibrated on --calibration-images slices of the model's TRAINING split (never the
                 slices scored); also reports how far it moves the out-of-distribution detector's distances
Forward pass only: decoding, cropping and the heat map are the same for all (benchmarks/latency.py times those).

    python -m benchmarks.inference_options --model model --json docs/benchmarks/inference_options.json
    python -m benchmarks.inference_options --model model --skip torch.compile,onnxruntime --repeats 20
    python -m benchmarks.inference_options --model model --data DIR   # a plain folder of class folders
The slices scored: the validation images of the model folder's split.json (--split for another), or --data.
int8's calibration slices: --calibration DIR, else the training images of that split.json; without either, int8
is reported unavailable.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from benchmarks._harness import MODEL_HELP, describe_machine, machine, table, take_turns, write_json
from scripts._images import SPLIT_HELP

OPTIONS = ("ours", "nchw", "no_grad", "1-thread", "bf16-autocast", "torchscript", "onnxruntime", "torch.compile",
           "int8")
Forward = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Features(torch.nn.Module):
    """A model's forward_with_features as its forward, which FX traces (through the model's own code)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_features(x)


def int8_model(model, calibration: list[torch.Tensor]) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``model``'s network quantized to int8 (static: weights per channel, activations from histograms of the
    calibration batches), as a function returning (logits, features) like forward_with_features."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration:
        raise ValueError("no calibration slices (--calibration DIR, or the model's split.json and training folder)")
    torch.backends.quantized.engine = "x86"
    copied = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    with warnings.catch_warnings():  # torch.ao's own deprecation notices, once per observer
        warnings.simplefilter("ignore")
        prepared = prepare_fx(_Features(copied), get_default_qconfig_mapping("x86"), (calibration[0][:1],))
        with torch.inference_mode():
            for batch in calibration:
                prepared(batch.contiguous())
        quantized = convert_fx(prepared)
    return lambda x: quantized(x.contiguous())


def build(name: str, model, example: torch.Tensor, sizes: tuple[int, ...] = (1, 32),
          calibration: Optional[list[torch.Tensor]] = None) -> tuple[Forward, float]:
    """The option's forward pass (logits for an N x 3 x S x S batch) and the seconds it took to set up
    (torch.compile: compiling for each batch size in ``sizes``; int8: calibrating on ``calibration``). Options
    that change the arithmetic also give ``fwd.features``, (logits, features) for a batch, for the
    out-of-distribution check."""
    cl = torch.channels_last
    t0 = time.perf_counter()
    if name in ("ours", "1-thread"):
        def fwd(x):
            with torch.inference_mode():
                return model(x.contiguous(memory_format=cl))
        if name == "1-thread":
            def one(x, _f=fwd):
                with threads(1):
                    return _f(x)
            return one, time.perf_counter() - t0
        return fwd, time.perf_counter() - t0
    if name == "nchw":
        plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)

        def fwd(x):
            with torch.inference_mode():
                return plain(x.contiguous())
        return fwd, time.perf_counter() - t0
    if name == "no_grad":
        def fwd(x):
            with torch.no_grad():
                return model(x.contiguous(memory_format=cl))
        return fwd, time.perf_counter() - t0
    if name == "bf16-autocast":
        def fwd(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x.contiguous(memory_format=cl)).float()

        def features(x):  # what Predictor(bf16_answer=True) feeds the out-of-distribution detector
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model.forward_with_features(x.contiguous(memory_format=cl))
        fwd.features = features  # type: ignore[attr-defined]
        return fwd, time.perf_counter() - t0
    if name == "torchscript":
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, example)))

        def fwd(x):
            with torch.no_grad():
                return frozen(x.contiguous(memory_format=cl))
        return fwd, time.perf_counter() - t0
    if name == "onnxruntime":
        import onnxruntime as ort  # optional: pip install onnxruntime onnx

        path = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "model.onnx"
        export = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        torch.onnx.export(export, (example.contiguous(),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting after each run: its threads would otherwise hold the cores while the next option runs
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        def fwd(x):
            return torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])
        return fwd, time.perf_counter() - t0
    if name == "torch.compile":
        compiled = torch.compile(model)

        def fwd(x):
            with torch.inference_mode():
                return compiled(x.contiguous(memory_format=cl))
        for n in sizes:  # compile for each batch size up front: the compile time is reported, not timed below
            fwd(example[:1].expand(n, -1, -1, -1).contiguous())
        return fwd, time.perf_counter() - t0
    if name == "int8":
        quantized = int8_model(model, calibration or [])

        def fwd(x):
            with torch.inference_mode():
                return quantized(x)[0]
        fwd.features = quantized  # type: ignore[attr-defined]
        return fwd, time.perf_counter() - t0
    raise ValueError(f"unknown option {name!r}; choose from {OPTIONS}")


def calibration_files(folder: Optional[str], split: str, n: int, seed: int = 0) -> list[Path]:
    """``n`` images to calibrate int8 on: from ``folder``, else the training images of a model folder's split.json
    (``split``: the folder or the file); [] when neither is there."""
    import random

    from brain_tumor.datasets import list_images
    from scripts._images import split_images

    if folder:
        pool = list_images(folder)
    else:
        try:
            pool = split_images(split, validation=False).paths
        except ValueError:  # no split.json, or its data roots are not here
            return []
    return random.Random(seed).sample(pool, min(n, len(pool)))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--split", metavar="MODEL|SPLIT_JSON", help=SPLIT_HELP + " (default: the --model folder's)")
    ap.add_argument("--data", metavar="DIR", help="a plain folder of class folders to score instead")
    ap.add_argument("--repeats", type=int, default=60, help="batch-1 passes timed per option (median)")
    ap.add_argument("--skip", default="", help="comma-separated options to leave out, e.g. torch.compile")
    ap.add_argument("--calibration", default=None,
                    help="int8's calibration images, a folder walked recursively (default: the model's training split)")
    ap.add_argument("--calibration-images", type=int, default=256, help="int8 calibration slices (random sample)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from brain_tumor.datasets import load_prepared
    from brain_tumor.inference import Predictor
    from brain_tumor.metrics import expected_calibration_error
    from brain_tumor.preprocess import to_tensor
    from scripts._images import labelled_images

    predictor = Predictor(args.model)
    model, cfg = predictor.model, predictor.config
    split = args.split or predictor.source
    try:
        paths, labels, _ = labelled_images(predictor, split, args.data)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, _, errors = load_prepared(paths, cfg.img_size, progress=False)
    keep = np.array([e is None for e in errors])
    images, labels = images[keep], labels[keep]
    batches = [to_tensor(images[i:i + 32], cfg.mean, cfg.std) for i in range(0, len(images), 32)]
    one, full = batches[0][:1].clone(), batches[0]
    calibration_paths = calibration_files(args.calibration, split, args.calibration_images)
    scored = {p.resolve() for p in paths}
    if any(p.resolve() in scored for p in calibration_paths):
        print("error: the int8 calibration images include slices being scored; calibrate on other data",
              file=sys.stderr)
        return 2
    cal_images = load_prepared(calibration_paths, cfg.img_size, progress=False)[0] if calibration_paths else []
    calibration = [to_tensor(cal_images[i:i + 32], cfg.mean, cfg.std) for i in range(0, len(cal_images), 32)]
    info = machine()
    print(describe_machine(info))
    print(f"model:   {predictor.source} ({cfg.img_size} px); {len(images)} labelled slices from {args.data or split}",
          flush=True)

    def probabilities(fwd: Forward) -> np.ndarray:
        return np.concatenate([torch.softmax(fwd(b).float() / cfg.temperature, 1).numpy() for b in batches])

    def ood_distances(features_of: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([model.ood_distance(features_of(b)[1]).numpy() for b in batches])

    ood_reference = ood_distances(
        lambda b: model.forward_with_features(b.contiguous(memory_format=torch.channels_last)))

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, dict] = {}
    forwards: dict[str, Forward] = {}
    reference = None
    for name in OPTIONS:
        if name in skip:
            continue
        print(f"  {name} ...", flush=True)
        try:
            fwd, setup = build(name, model, one, tuple(sorted({1, len(full), len(batches[-1])})), calibration)
            probs = probabilities(fwd)
        except Exception as e:  # noqa: BLE001 - an option that cannot run here is reported, not fatal
            results[name] = {"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
            continue
        if reference is None:
            reference = probs
        forwards[name] = fwd
        results[name] = {
            "setup_s": setup,
            "accuracy": float((probs.argmax(1) == labels).mean()),
            "same_answer_as_ours": float((probs.argmax(1) == reference.argmax(1)).mean()),
            "max_probability_change": float(np.abs(probs - reference).max()),
            "ece": expected_calibration_error(probs.max(1), probs.argmax(1) == labels),
            "needs_review": float((probs.max(1) < cfg.abstain_below).mean())}
        if hasattr(fwd, "features"):  # an option with its own features: how far the OOD detector moves
            distances = ood_distances(fwd.features)
            results[name]["ood"] = {
                "median_relative_change": float(np.median(np.abs(distances - ood_reference) / ood_reference)),
                "flagged": float((distances > cfg.ood_threshold).mean()),
                "flagged_ours": float((ood_reference > cfg.ood_threshold).mean())}
        if name == "int8":
            results[name]["calibration_slices"] = len(cal_images)

    print(f"  timing {len(forwards)} options, taking turns ...", flush=True)
    single = take_turns(forwards, [one] * args.repeats, warmup=[one] * 5)
    folder = take_turns(forwards, [full] * 5, warmup=[full])
    for name in forwards:
        results[name]["batch1_ms"] = 1000 * float(np.median(single[name]))
        results[name]["batch32_images_per_s"] = len(full) / float(np.median(folder[name]))

    rows = []
    for name, r in results.items():
        if "unavailable" in r:
            rows.append([name, "-", "-", "-", "-", "-", r["unavailable"][:60]])
            continue
        rows.append([name, f"{r['batch1_ms']:.1f}", f"{r['batch32_images_per_s']:.0f}", f"{r['accuracy']:.4f}",
                     f"{r['same_answer_as_ours']:.4f}", f"{r['max_probability_change']:.1e}",
                     f"{r['setup_s']:.1f} s" if r["setup_s"] >= 0.5 else ""])
    print()
    print(table(["forward pass", "ms @ batch 1", "img/s @ 32", "accuracy", "same answer", "max dP", "setup"], rows))
    print()
    print(table(["forward pass", "ECE", "needs review"],
                [[n, f"{r['ece']:.4f}", f"{r['needs_review']:.1%}"] for n, r in results.items() if "ece" in r]))
    for name, r in results.items():
        if "ood" in r:
            o = r["ood"]
            print(f"{name}: out-of-distribution distances move by {o['median_relative_change']:.1%} (median); slices "
                  f"flagged as not an MRI {o['flagged']:.1%} against {o['flagged_ours']:.1%} for ours")
    write_json(args.json, "inference_options", {
        "model": predictor.source, "img_size": cfg.img_size, "data": str(args.data or split), "images": len(images),
        "repeats": args.repeats, "options": results}, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
