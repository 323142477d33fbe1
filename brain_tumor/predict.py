"""Command line: classify MRI slices (files or folders), optionally writing Grad-CAM heat maps.

    python -m brain_tumor.predict examples/                       # a table
    python -m brain_tumor.predict scan.dcm img.png --json         # one JSON array on stdout
    python -m brain_tumor.predict examples/ --heatmaps maps/      # + maps/<relative path>.npy (H x W float32)
    python -m brain_tumor.predict x.png --model user/brain-tumor@v1

Exit status: 0 when every input was answered, 2 when any failed (each failure is reported in place).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .data import ImageReadError, list_images
from .explain import check_method
from .inference import BF16_ANSWER_HELP, Predictor
from .model import ModelLoadError


def expand_inputs(items: Iterable[str]) -> list[tuple[str, Path, Path]]:
    """Each PATH as (path as shown, file, path relative to where it was found) -- folders walked, sorted."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            for f in list_images(p):
                out.append((str(f), f, f.relative_to(p)))
        else:
            out.append((item, p, Path(p.name)))
    return out


def heatmap_path(root: Path, relative: Path) -> Path:
    """Where a map goes: under root, never outside it (a hostile name such as ../x is flattened)."""
    parts = [part for part in relative.parts if part not in ("..", ".", "/", "")]
    target = root.joinpath(*parts).with_suffix(".npy") if parts else root / "map.npy"
    return target


def _unused(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``name-2.npy``, ``name-3.npy``, ... if another input of this run already wrote there."""
    candidate, n = target, 1
    while candidate in taken:
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    taken.add(candidate)
    return candidate


def _printable(text: str, stream=None) -> str:
    """Text the stream can show: undecodable file names (lone surrogates) and unencodable characters escaped."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.predict",
                                     description="Classify brain MRI slices (JPEG, PNG, BMP, TIFF, WebP, DICOM).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image/DICOM files or folders (walked recursively)")
    parser.add_argument("--model", default=None, help="model folder or Hub id user/name[@rev] (default: bundled)")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    parser.add_argument("--heatmaps", metavar="DIR", help="write each input's heat map as DIR/<relative path>.npy")
    parser.add_argument("--method", default=None,
                        help="heat-map method (gradcam, gradcam++, eigencam, ...; default: the model's own choice)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help=BF16_ANSWER_HELP)
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        method = check_method(args.method) if args.method else None
        predictor = Predictor(args.model, threads=args.threads or None, bf16_answer=args.bf16)
    except (ModelLoadError, ValueError) as e:
        print(_printable(f"error: {e}", sys.stderr), file=sys.stderr)
        return 2

    inputs = expand_inputs(args.paths)
    if not inputs:
        print("error: no image files found under the given paths", file=sys.stderr)
        return 2
    heat_root = Path(args.heatmaps) if args.heatmaps else None
    results = predictor.predict_files([f for _, f, _ in inputs], heatmaps=heat_root is not None, method=method,
                                      batch_size=args.batch_size)
    records, failed, taken = [], 0, set()
    for (shown, _, relative), result in zip(inputs, results):
        if isinstance(result, ImageReadError):
            records.append({"path": shown, "error": str(result)})
            failed += 1
            continue
        record = {"path": shown, **result.to_json()}
        if heat_root is not None:
            target = _unused(heatmap_path(heat_root, relative), taken)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(target, result.heatmap_on_original().astype(np.float32))
                record["heatmap"] = str(target)
            except OSError as e:
                record["heatmap_error"] = f"could not write {target}: {e.strerror or e}"
                failed += 1
        records.append(record)

    try:
        if args.json:
            json.dump(records, sys.stdout, indent=1)
            print()
        else:
            print(_printable(format_table(records, predictor)))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has gone; say nothing more, as other Unix tools do
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 2 if failed else 0


def format_table(records: list[dict], predictor: Predictor) -> str:
    width = max([len(r["path"]) for r in records] + [4])
    width = min(width, 60)
    lines = [f"model: {predictor.source}",
             f"{'path':<{width}}  {'answer':<40}  {'conf':>5}  {'P(tumour)':>9}"]
    for r in records:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3):]
        if "error" in r:
            lines.append(f"{path:<{width}}  error: {r['error']}")
            continue
        answer = ("NOT A BRAIN MRI? no diagnosis" if not r.get("looks_like_mri", True) else
                  f"uncertain - needs review (leans {r['label']})" if r.get("needs_review") else r["label"])
        lines.append(f"{path:<{width}}  {answer:<40}  {r['confidence']:>5.2f}  {r['tumor_probability']:>9.3f}")
    lines.append("Research demo, not a diagnostic device.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
