"""Command line: classify MRI slices and volumes (files or folders), optionally writing heat maps and PDF reports.

    python -m brain_tumor.predict examples/                       # a table
    python -m brain_tumor.predict scan.dcm img.png --json         # one JSON array on stdout
    python -m brain_tumor.predict head.nii.gz --slices best       # the most suspicious axial slice of a volume
    python -m brain_tumor.predict examples/ --heatmaps maps/      # + maps/<relative path>.npy (H x W float32)
    python -m brain_tumor.predict x.png --report reports/         # + reports/x.pdf, a one-page report
    python -m brain_tumor.predict x.png --model user/brain-tumor@v1 --device cuda

A volume (NIfTI ``.nii``/``.nii.gz``, or a ``.zip`` of one DICOM series) yields one answer per axial slice,
each with ``"slice": k`` (0-based, inferior to superior) beside its path; a multi-frame DICOM file one per frame,
with ``"frame": k``. ``--slices best`` keeps only the most suspicious one.
Exit status: 0 when every input was answered, 2 when any failed (each failure is reported in place).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .config import IMAGE_SUFFIXES, HelpFormatter
from .decode import ImageReadError, dicom_frame_count, read_frames, read_image
from .datasets import is_image_file
from .explain import check_method
from .inference import BF16_ANSWER_HELP, Prediction, Predictor, most_suspicious
from .metrics import json_ready
from .model import ModelLoadError
from .verdict import DISCLAIMER
from .volume import is_volume, read_volume


def expand_inputs(items: Iterable[str]) -> list[tuple[str, Path, Path]]:
    """Each PATH as (path as shown, file, path relative to where it was found) -- folders walked, sorted; slices
    (images, DICOM) and volumes (NIfTI, zipped DICOM series) alike."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and (is_image_file(f) or is_volume(f))
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            for f in found:
                out.append((str(f), f, f.relative_to(p)))
        else:
            out.append((item, p, Path(p.name)))
    return out


def output_path(root: Path, relative: Path, suffix: str, slice_index: Optional[int] = None,
                kind: str = "slice") -> Path:
    """Where an input's map or report goes: under root, never outside it (a hostile name such as ../x is
    flattened); a volume's slice k gets ``_slice<k>`` in its name (a multi-frame file's frame, ``_frame<k>``)."""
    parts = [part for part in relative.parts if part not in ("..", ".", "/", "")]
    if not parts:
        parts = ["input"]
    name = parts[-1]
    for ext in (".nii.gz", ".nii", ".zip"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        name = Path(name).stem if Path(name).suffix else name
    if slice_index is not None:
        name = f"{name}_{kind}{slice_index:03d}"
    return root.joinpath(*parts[:-1], name + suffix)


def heatmap_path(root: Path, relative: Path) -> Path:
    """Where a slice's map goes (output_path with .npy)."""
    return output_path(root, relative, ".npy")


def _unused(target: Path, taken: set[Path]) -> Path:
    """``target``, or ``name-2.npy``, ``name-3.npy``, ... if another input of this run already wrote there."""
    candidate, n = target, 1
    while candidate in taken:
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
    taken.add(candidate)
    return candidate


def _frames(path: Path) -> int:
    """Frames of a DICOM file (1 for anything else, and for what cannot be read: read_image says why later)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return 1
    try:
        return dicom_frame_count(path)
    except ImageReadError:
        return 1


def _printable(text: str, stream=None) -> str:
    """Text the stream can show: undecodable file names (lone surrogates) and unencodable characters escaped."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brain_tumor.predict",
                                     formatter_class=HelpFormatter,
                                     description="Classify brain MRI slices (JPEG, PNG, BMP, TIFF, WebP, DICOM) and "
                                                 "volumes (NIfTI .nii/.nii.gz, a .zip of one DICOM series).")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (walked recursively)")
    parser.add_argument("--model", default=None, help="model folder or Hub id user/name[@rev] (default: bundled)")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of a table")
    parser.add_argument("--heatmaps", metavar="DIR", help="write each answer's heat map as DIR/<relative path>.npy")
    parser.add_argument("--report", metavar="DIR", help="write each answer's one-page PDF report as DIR/<relative path>.pdf")
    parser.add_argument("--slices", choices=("all", "best"), default="all",
                        help="for volumes: every axial slice, or only the most suspicious one")
    parser.add_argument("--method", default=None,
                        help="heat-map method (gradcam, gradcam++, eigencam, ...; default: the model's own choice)")
    parser.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="where the model runs (auto: a GPU when torch sees one)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--bf16", action="store_true", help=BF16_ANSWER_HELP)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.threads < 0:
        parser.error("--threads must be 0 (torch's default) or more")
    try:
        method = check_method(args.method) if args.method else None
        predictor = Predictor(args.model, threads=args.threads or None, bf16_answer=args.bf16, device=args.device)
    except (ModelLoadError, ValueError) as e:
        print(_printable(f"error: {e}", sys.stderr), file=sys.stderr)
        return 2

    inputs = expand_inputs(args.paths)
    if not inputs:
        print("error: no image or volume files found under the given paths", file=sys.stderr)
        return 2
    run = _Run(predictor, args, method)
    pending: list[tuple[str, Path, Path]] = []
    for item in inputs:
        if is_volume(item[1]) or _frames(item[1]) > 1:
            run.slices(pending)
            pending = []
            run.volume(*item)
        else:
            pending.append(item)
    run.slices(pending)

    try:
        if args.json:
            json.dump(json_ready(run.records), sys.stdout, indent=1, allow_nan=False)
            print()
        else:
            print(_printable(format_table(run.records, predictor)))
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has gone; say nothing more, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 2 if run.failed else 0


class _Run:
    """One CLI run: answers in input order, with their maps and reports written as they come."""

    def __init__(self, predictor: Predictor, args, method: Optional[str]):
        self.predictor, self.method = predictor, method
        self.heat_root = Path(args.heatmaps) if args.heatmaps else None
        self.report_root = Path(args.report) if args.report else None
        self.best_only = args.slices == "best"
        self.batch_size = args.batch_size
        self.maps = self.heat_root is not None or self.report_root is not None
        self.records: list[dict] = []
        self.failed = 0
        self.taken: set[Path] = set()

    def slices(self, items: list[tuple[str, Path, Path]]) -> None:
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            grays: list = []
            for _, path, _ in chunk:
                try:
                    grays.append(read_image(path))
                except ImageReadError as e:
                    grays.append(e)
            readable = [g for g in grays if not isinstance(g, ImageReadError)]
            preds = iter(self.predictor.predict(readable, heatmaps=self.maps, method=self.method,
                                                batch_size=self.batch_size))
            for (shown, _, relative), gray in zip(chunk, grays):
                if isinstance(gray, ImageReadError):
                    self.records.append({"path": shown, "error": str(gray)})
                    self.failed += 1
                else:
                    self.finish(shown, relative, gray, next(preds))

    def volume(self, shown: str, path: Path, relative: Path) -> None:
        """A volume's axial slices, or a multi-frame DICOM file's frames, each answered (or the most suspicious)."""
        key, notes = "slice", []
        try:
            if is_volume(path):
                vol = read_volume(path)
                slices, notes = list(vol.slices), vol.notes
            else:
                key, slices = "frame", read_frames(path)
        except ImageReadError as e:
            self.records.append({"path": shown, "error": str(e)})
            self.failed += 1
            return
        if self.best_only:
            preds = self.predictor.predict(slices, batch_size=self.batch_size)
            k = most_suspicious(preds)
            chosen = [(k, self.predictor.predict([slices[k]], heatmaps=True, method=self.method)[0]
                       if self.maps else preds[k])]
        else:
            chosen = list(enumerate(self.predictor.predict(slices, heatmaps=self.maps, method=self.method,
                                                           batch_size=self.batch_size)))
        for k, pred in chosen:
            extra = {f"{key}s": len(slices)} | ({"notes": notes} if notes else {})
            self.finish(shown, relative, slices[k], pred, slice_index=k, extra=extra, key=key)

    def finish(self, shown: str, relative: Path, gray: np.ndarray, pred: Prediction,
               slice_index: Optional[int] = None, extra: Optional[dict] = None, key: str = "slice") -> None:
        record = {"path": shown} | ({key: slice_index} if slice_index is not None else {}) | pred.to_json()
        record |= extra or {}
        if self.heat_root is not None:
            target = _unused(output_path(self.heat_root, relative, ".npy", slice_index, key), self.taken)
            self._write(record, "heatmap", target, lambda: np.save(target, pred.heatmap_on_original().astype(np.float32)))
        if self.report_root is not None:
            from .report import write_report

            target = _unused(output_path(self.report_root, relative, ".pdf", slice_index, key), self.taken)
            view = self.predictor.view(gray, pred.crop)
            axial = slice_index if key == "slice" else None  # the report's words: "axial slice k"
            name = str(relative) if key == "slice" or slice_index is None else f"{relative} (frame {slice_index})"
            self._write(record, "report", target, lambda: write_report(
                pred, view, target, file_name=name, model=self.predictor.source,
                version=self.predictor.config.version, slice_index=axial))
        self.records.append(record)

    def _write(self, record: dict, key: str, target: Path, write) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write()
            record[key] = str(target)
        except OSError as e:
            record[f"{key}_error"] = f"could not write {target}: {_why(e, target)}"
            self.failed += 1


def file_in_the_way(path: Path) -> Optional[Path]:
    """The file that stands where one of ``path``'s folders should be, if any (mkdir says only 'File exists')."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _why(e: OSError, target: Path) -> str:
    """An OSError's reason, naming the file that stands where a folder is needed."""
    blocker = file_in_the_way(target)
    return f"{blocker} is a file, not a folder" if blocker else e.strerror or str(e)


def format_table(records: list[dict], predictor: Predictor) -> str:
    def where(r: dict) -> str:
        shown = r["path"].replace("\n", "\\n")
        for key in ("slice", "frame"):
            if key in r and f"{key}s" in r:
                return f"{shown} [{key} {r[key]} of {r[key + 's']}]"
        return shown

    width = max([len(where(r)) for r in records] + [4])
    width = min(width, 60)
    answer = min(max([len(r.get("verdict", "")) for r in records] + [6]), 64)
    lines = [f"model: {predictor.source}",
             f"{'path':<{width}}  {'answer':<{answer}}  {'conf':>5}  {'P(tumour)':>9}"]
    notes: dict[str, list[str]] = {}
    for r in records:
        shown = where(r)
        path = shown if len(shown) <= width else "..." + shown[-(width - 3):]
        if "error" in r:
            lines.append(f"{path:<{width}}  error: {r['error']}")
            continue
        lines.append(f"{path:<{width}}  {r['verdict']:<{answer}}  {r['confidence']:>5.2f}  {r['tumor_probability']:>9.3f}")
        for key in ("heatmap_error", "report_error"):
            if key in r:
                lines.append(f"{'':<{width}}  error: {r[key]}")
        if r.get("notes"):
            notes.setdefault(r["path"], r["notes"])
    for path, said in notes.items():
        lines.append(f"note: {path}: {'; '.join(said)}")
    lines.append(DISCLAIMER)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
