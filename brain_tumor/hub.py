"""Hugging Face Hub: the model card, and pushing a model folder (config.json + model.safetensors + card + plots)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .model import CONFIG_NAME, WEIGHTS_NAME, ModelConfig

_UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png"]


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}" if isinstance(x, float) else str(x)


def _trust_section(config: ModelConfig) -> list[str]:
    """'How far to trust it': heat maps, calibration, abstention, the MRI check -- whatever was measured."""
    m = config.metrics or {}
    lines = ["", "## How far to trust it"]
    h = m.get("heatmaps")
    if h:
        other = h.get("heat_in_head_other_slices")
        lines.append(f"- Heat maps: {h.get('method', config.cam_method)} at {h.get('layer', config.cam_layer)}, raised to the "
                     f"power {h.get('power', config.cam_power):g}, each map cell drawn at the centre of its receptive "
                     f"field. On tumour slices with boxes ({h.get('data', 'figshare sample')}): pointing game "
                     f"{_fmt(h.get('pointing_game'))}, heat inside the box {_fmt(h.get('heat_in_box'))}, heat inside "
                     f"the head {_fmt(h.get('heat_in_head'))}"
                     + (f" ({_fmt(other)} on validation slices)" if other is not None else "") + f". {h.get('why', '')}")
    c = m.get("calibration")
    if c:
        lines.append(f"- Calibration: temperature {c['temperature']:.2f} fitted on the grouped validation split; "
                     f"ECE {_fmt(c['ece_uncalibrated'])} before, {_fmt(c['ece'])} after (same split, so optimistic).")
        lines.append(f"- Abstention: below a calibrated confidence of {c['abstain_below']:.2f} the answer is "
                     f"'uncertain — needs review' ({_fmt(c['abstain_rate'])} of validation images); error on the "
                     f"answered rest {_fmt(c.get('error_when_answering'))}; error on the 90% most confident "
                     f"{_fmt(c['error_at_90_coverage'])}. `uncertainty` is the normalised entropy of the "
                     "calibrated probabilities.")
    d = m.get("mri_detector")
    if d:
        lines.append(f"- 'Looks like a brain MRI': {d['method']}, threshold at the {d['quantile_of_validation_mris']:.1%} "
                     f"quantile of validation MRIs (flags {_fmt(d['validation_mris_flagged'])} of them), plus a blank-"
                     f"image check. On {d.get('non_mri_images', 'n/a')} non-MRI images it never saw (photos, "
                     f"drawings, screenshots, text, noise, CT/ultrasound) it flags {_fmt(d.get('non_mri_flagged'))}."
                     + (f" Missed: {', '.join(d['missed'][:8])}." if d.get("missed") else ""))
    return lines if len(lines) > 2 else []


def model_card(config: ModelConfig, notes: Sequence[str] = ()) -> str:
    """Markdown model card with Hub front matter: data, validation figures, intended use, limitations."""
    m = config.metrics or {}
    val = m.get("validation", {})
    tr = config.training or {}
    lines = [
        "---",
        "license: cc-by-4.0",
        "library_name: pytorch",
        "pipeline_tag: image-classification",
        "tags: [medical-imaging, mri, brain-tumor, resnet18, grad-cam]",
        "datasets: [masoudnickparvar/brain-tumor-mri-dataset]",
        "---",
        "",
        f"# Brain MRI tumour classifier (ResNet18, {config.img_size} px)",
        "",
        "**Research demo, not a diagnostic device.** It must not be used to make clinical decisions.",
        "",
        f"Classes: {', '.join(config.class_names)}. Input: one 2-D MRI slice (JPEG/PNG/DICOM), converted to "
        f"grayscale, cropped to the head, resized to {config.img_size} x {config.img_size}.",
        "",
        "## Data",
        "Training split of the Kaggle *Brain Tumor MRI Dataset* (Nickparvar, CC0; merges figshare/Cheng et al., "
        "SARTAJ and Br35H). Validation is a **grouped** split: images whose 32x32 thumbnails correlate at r >= "
        f"{tr.get('config', {}).get('dup_threshold', 0.95)} form one group, and a group never straddles train and "
        "validation (the dataset is full of near-duplicate slices; a random split overstates accuracy).",
        "",
        "## Validation figures (grouped split: never trained on, but the best epoch and the calibration were chosen on it)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| images | {_fmt(val.get('n'))} |",
        f"| 4-class accuracy | {_fmt(val.get('accuracy'))} |",
        f"| tumour sensitivity / specificity | {_fmt(val.get('tumor_sensitivity'))} / {_fmt(val.get('tumor_specificity'))} |",
        f"| AUROC of tumour probability | {_fmt(val.get('tumor_auroc'))} |",
        f"| ECE before / after temperature scaling (T = {config.temperature:.2f}) | "
        f"{_fmt(m.get('ece_uncalibrated'))} / {_fmt(val.get('ece'))} |",
        f"| error on the 90% most confident | {_fmt(val.get('error_at_90_coverage'))} |",
    ]
    proxy = m.get("inverted_contrast_proxy")
    if proxy:
        lines.append(f"| tumour sensitivity on an inverted-contrast proxy of the validation set | "
                     f"{_fmt(proxy.get('tumor_sensitivity'))} |")
    per_class = val.get("per_class", {})
    if per_class:
        lines += ["", "| class | precision | recall | F1 | n |", "|---|---|---|---|---|"]
        for c, s in per_class.items():
            lines.append(f"| {c} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} | {s['support']} |")
    if "test" in m:
        t = m["test"]
        lines += ["", f"Testing split: accuracy {_fmt(t.get('accuracy'))} on {t.get('n')} images (note: most "
                  "Testing images have a near-duplicate in Training)."]
    lines += _trust_section(config)
    lines += [
        "",
        "## Training",
        f"- epochs run: {tr.get('epochs_run', 'n/a')} (best: {m.get('best_epoch', 'n/a')}); "
        f"time: {_fmt(tr.get('seconds'))} s on {tr.get('hardware', 'n/a')}; torch {tr.get('torch', 'n/a')}",
        f"- settings: `{json.dumps(tr.get('config', {}))}`",
        "- augmentation: flips, rotation, scale, shift; random piecewise-linear intensity curves (which reorder "
        "tissue contrast as a different MRI sequence does), gamma, contrast, blur, noise.",
        "",
        "## Intended use",
        "Teaching and research on explainable classifiers: show which image regions drive a prediction.",
        "",
        "## Limitations",
        "- Trained on one public dataset of 2-D slices. In it, 'no tumour' is mostly axial T2/FLAIR/T1 from other "
        "sources while tumours are mostly T1 contrast-enhanced (many sagittal/coronal): sequence, plane and source "
        "are shortcuts. Intensity augmentation and head cropping fight them; the inverted-contrast proxy above "
        "measures how much is left. Expect lower sensitivity on T2 or photographed-film images.",
        "- Not validated on any clinical population; figures come from a validation split of the same dataset.",
        "- Heat maps show what drove the network, not where the tumour is.",
        "- Uncalibrated outside this data: confidence on other scanners/sequences can be wrong.",
    ]
    for n in notes:
        lines += ["", n]
    if (config.training or {}).get("command"):
        lines += ["", "## Reproduce", "```", config.training["command"], "```"]
    return "\n".join(lines) + "\n"


def write_model_card(folder, config: ModelConfig, notes: Sequence[str] = ()) -> Path:
    path = Path(folder) / "README.md"
    path.write_text(model_card(config, notes))
    return path


def push_to_hub(folder, repo_id: str, private: bool = False, token: Optional[str] = None,
                commit_message: str = "Upload brain tumour classifier") -> str:
    """Create the Hub repo if missing and upload the model folder. Token: argument, HF_TOKEN, or `hf auth login`.

    Returns the URL of the commit.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (folder / name).exists():
            raise ValueError(f"{folder} is not a model folder: {name} is missing")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                             allow_patterns=_UPLOAD_PATTERNS, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


def main(argv=None) -> int:
    """python -m brain_tumor.hub FOLDER REPO_ID [--private]: upload a trained model folder."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m brain_tumor.hub", description="Upload a model folder to the Hub.")
    parser.add_argument("folder")
    parser.add_argument("repo_id", help="user/name")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(push_to_hub(args.folder, args.repo_id, private=args.private))
    except Exception as e:  # network and auth errors: say what happened, the folder is untouched
        print(f"error: upload failed ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
