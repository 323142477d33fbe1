"""Seconds per image for an answer with its heat map: the usual peer demo against our one-pass Predictor.

One run, the same images, the paths taking turns on each (_harness.take_turns) so that a busy machine slows
every path alike:
  (a) the peer way, written out below (PeerPipeline): PIL open, RGB, resize to 224, ToTensor, Normalize,
      a prediction forward pass, then pytorch-grad-cam's GradCAM on layer4 (its own forward pass and a full
      backward pass through every parameter), then show_cam_on_image; a plain torchvision resnet18 with
      4 outputs whose parameters require grad, as a default model's do;
  (b) ours, the answer only: Predictor.predict_files([file], heatmaps=False), decoding included;
  (c) ours, answer + Grad-CAM + overlay: read_image, Predictor.predict(heatmaps=True) (what predict_files
      does, keeping the slice) and explain.overlay on Predictor.view at 512 px, as the app shows it;
  (d) ours over a folder: images per second for predict_files(all, batch_size=32), no heat maps.
Medians over the images after a warm-up. Our model runs at its own input size (config.img_size), the
peer at 224 px; the table says which.

    python -m benchmarks.latency                                   # 30 training slices, bundled model
    python -m benchmarks.latency --n 60 --threads 1,2 --json latency.json
    python -m benchmarks.latency --data examples --model runs/shipped --n 30
    python -m benchmarks.latency --bf16-answer                    # the answer's forward pass in bf16 (--bf16)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from benchmarks._harness import (MODEL_HELP, default_data, describe_machine, machine, meets, sample_images,
                                 summary, table, take_turns, write_json)

PEER_SIZE = 224


class PeerPipeline:
    """The typical peer demo, step by step (kept plain on purpose: this is what we are measured against)."""

    def __init__(self, num_classes: int = 4, state_dict: Optional[dict] = None):
        import torchvision
        import torchvision.transforms as T
        from pytorch_grad_cam import GradCAM

        from brain_tumor.config import IMAGENET_MEAN, IMAGENET_STD

        self.model = torchvision.models.resnet18(num_classes=num_classes)
        if state_dict is not None:
            self.model.load_state_dict(state_dict)
        self.model.eval()  # parameters keep requires_grad=True, as in a default model
        self.transform = T.Compose([T.Resize((PEER_SIZE, PEER_SIZE)), T.ToTensor(),
                                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.cam = GradCAM(model=self.model, target_layers=[self.model.layer4])

    def __call__(self, path) -> tuple[int, np.ndarray]:
        from PIL import Image
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        image = Image.open(path).convert("RGB")
        x = self.transform(image).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(self.model(x), dim=1)[0]
        predicted = int(probs.argmax())
        heat = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(predicted)])[0]
        rgb = np.asarray(image.resize((PEER_SIZE, PEER_SIZE)), dtype=np.float32) / 255.0
        return predicted, show_cam_on_image(rgb, heat, use_rgb=True)

    def forward_only(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)

    def close(self) -> None:
        self.cam.activations_and_grads.release()


def peer_weights(predictor) -> dict:
    """Our weights in plain torchvision keys (our head is Dropout + Linear: fc.1.* -> fc.*)."""
    state = predictor.model.net.state_dict()
    return {k.replace("fc.1.", "fc."): v.contiguous() for k, v in state.items() if not k.startswith("fc.0")}


def run_round(predictor, peer: PeerPipeline, paths: list[Path], warmup: list[Path], repeats: int) -> dict:
    """Every path on every image at the current thread count, taking turns; returns per-path timings."""
    from brain_tumor.decode import read_image
    from brain_tumor.explain import overlay
    from brain_tumor.preprocess import to_tensor

    def ours_answer(p):
        [r] = predictor.predict_files([p], heatmaps=False)
        if isinstance(r, Exception):
            raise SystemExit(f"error: {p}: {r}")

    def ours_full(p):
        gray = read_image(p)
        [r] = predictor.predict([gray], heatmaps=True)
        overlay(predictor.view(gray, r.crop), r.heatmap)

    size = predictor.config.img_size
    ours_x = to_tensor(np.zeros((1, size, size), np.uint8), predictor.config.mean, predictor.config.std)
    peer_x = torch.zeros(1, 3, PEER_SIZE, PEER_SIZE)

    def ours_forward(_):
        with torch.inference_mode():
            predictor.model(ours_x)

    times = take_turns({"a_peer": peer, "b_ours_answer": ours_answer, "c_ours_answer_heatmap_overlay": ours_full,
                        "peer_forward_only": lambda _: peer.forward_only(peer_x), "ours_forward_only": ours_forward},
                       paths, warmup)
    predictor.predict_files(paths[:min(len(paths), 32)], batch_size=32)  # warm the batch path
    folder = take_turns({"d": lambda _: predictor.predict_files(paths, batch_size=32)}, range(repeats))["d"]
    out = {k: summary(v) for k, v in times.items()}
    out["d_folder_seconds"] = summary(folder)
    out["d_folder_images_per_second"] = len(paths) / float(np.median(folder))
    a, b, c = (out[k]["median"] for k in ("a_peer", "b_ours_answer", "c_ours_answer_heatmap_overlay"))
    out["ratio_c_over_a"] = c / a
    out["ratio_c_over_b"] = c / b
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help=MODEL_HELP)
    ap.add_argument("--data", default=None, help="folder walked recursively for images (default: the Kaggle "
                    "Training folder beside the repo, else examples/)")
    ap.add_argument("--n", type=int, default=30, help="images timed per path (medians over these)")
    ap.add_argument("--warmup", type=int, default=3, help="images run through every path first, untimed")
    ap.add_argument("--seed", type=int, default=0, help="seed of the image sample")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],  # kept for old command lines
                    help="the heat maps' backward pass (Predictor(precision=...); auto: bf16 where the CPU has it "
                    "natively). The answer is fp32 either way")
    ap.add_argument("--bf16-answer", action="store_true",
                    help="our answer's forward pass under bf16 autocast (Predictor(bf16_answer=True), as --bf16 in "
                    "the CLI; where the CPU has native bf16)")
    ap.add_argument("--threads", default=None, help="comma-separated torch thread counts to compare, e.g. 1,2 "
                    "(default: torch's own choice)")
    ap.add_argument("--repeats", type=int, default=3, help="folder-throughput runs (median)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    from brain_tumor.inference import Predictor

    data = Path(args.data) if args.data else default_data()
    paths, distinct = sample_images(data, args.n + args.warmup, args.seed)
    warmup, paths = paths[:args.warmup], paths[args.warmup:]
    predictor = Predictor(args.model, precision=args.precision, bf16_answer=args.bf16_answer)
    peer = PeerPipeline(len(predictor.classes), peer_weights(predictor))
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]

    info = machine()
    heatmap_precision = "autograd, the forward pass's precision"
    print(describe_machine(info))
    print(f"model:   {predictor.source}: input {predictor.config.img_size} px (the peer way runs at {PEER_SIZE} px); "
          f"answer in {'bf16 autocast' if predictor.bf16_answer else 'fp32'}; heat map at "
          f"{predictor.config.cam_layer}, gradients by {heatmap_precision}")
    print(f"images:  {len(paths)} timed + {len(warmup)} warm-up from {data} ({distinct} distinct, seed {args.seed})",
          flush=True)
    rounds = {}
    for t in thread_counts:
        torch.set_num_threads(t)
        print(f"  timing with {t} thread(s) ...", flush=True)
        rounds[t] = run_round(predictor, peer, paths, warmup, args.repeats)
    peer.close()

    def med(r, k):
        return f"{r[k]['median']:.4f} s"

    rows = [
        [f"(a) peer: PIL + torchvision, predict, GradCAM (own fwd + full bwd), overlay @ {PEER_SIZE} px"]
        + [med(r, "a_peer") for r in rounds.values()],
        [f"(b) ours: predict_files, answer only @ {predictor.config.img_size} px, decode incl."]
        + [med(r, "b_ours_answer") for r in rounds.values()],
        ["(c) ours: answer + Grad-CAM + overlay (512 px view)"]
        + [med(r, "c_ours_answer_heatmap_overlay") for r in rounds.values()],
        ["(d) ours: folder, predict_files batch 32, no heat maps"]
        + [f"{r['d_folder_images_per_second']:.1f} img/s" for r in rounds.values()],
        [f"    ref: bare forward pass, peer model @ {PEER_SIZE} px"]
        + [med(r, "peer_forward_only") for r in rounds.values()],
        [f"    ref: bare forward pass, our model @ {predictor.config.img_size} px"]
        + [med(r, "ours_forward_only") for r in rounds.values()],
        ["(c)/(a)   target: <= 0.35"]
        + [f"{r['ratio_c_over_a']:.3f} {meets(r['ratio_c_over_a'], 0.35)}" for r in rounds.values()],
        ["(c)/(b)   the heat map's cost over the answer alone"]
        + [f"{r['ratio_c_over_b']:.3f}" for r in rounds.values()],
        ["(d)       target: >= 15 img/s"]
        + [meets(r["d_folder_images_per_second"], 15, at_most=False) for r in rounds.values()],
    ]
    print()
    print(table(["median seconds per image"] + [f"{t} thread(s)" for t in rounds], rows))
    write_json(args.json, "latency", {
        "model": predictor.source, "model_img_size": predictor.config.img_size, "peer_img_size": PEER_SIZE,
        "cam_layer": predictor.config.cam_layer, "heatmap_backward_precision": heatmap_precision,
        "answer_forward": "bf16 autocast" if predictor.bf16_answer else "fp32",
        "data": str(data), "images": len(paths), "distinct_images": distinct, "warmup": len(warmup),
        "seed": args.seed, "rounds": {str(t): r for t, r in rounds.items()}}, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
