"""Hugging Face Hub: the model card, and pushing a model folder (config.json + model.safetensors + card + plots)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from .config import HelpFormatter
from .model import CONFIG_NAME, WEIGHTS_NAME, ModelConfig
from .verdict import DISCLAIMER

_UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.png"]


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}" if isinstance(x, float) else str(x)


def _minutes(training: dict) -> str:
    seconds = training.get("seconds")
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "n/a"


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
                     + (f" ({_fmt(other)} on validation slices)" if other is not None else "")
                     + "".join(f"; {Path(root).name}: {_fmt(r.get('pointing_game'))} / {_fmt(r.get('heat_in_box'))} / "
                               f"{_fmt(r.get('heat_in_head'))} ({r.get('n_boxes')} slices)"
                               for root, r in (h.get("by_source") or {}).items())
                     + f". {h.get('why', '')}")
    shift = config.cam_shift_of(config.cam_method)
    if shift and any(any(xy) for xy in shift.values()):
        lines.append("- Each class's map is drawn with the offset this network's maps of that class carry undone, "
                     "measured without labels on training slices (sideways from mirrored slices, up and down against "
                     "the finer layer3 map; `brain_tumor.cam_offset`): moved by (right, down) "
                     + ", ".join(f"{config.display(c)} ({0.0 - xy[0]:+g}, {0.0 - xy[1]:+g}) px" for c, xy in shift.items() if any(xy))
                     + f" of the {config.img_size} px view.")
    c = m.get("calibration")
    if c:
        lines.append(f"- Calibration: {config.describe_calibration()} fitted on the grouped validation split; "
                     f"ECE {_fmt(c['ece_uncalibrated'])} before, {_fmt(c['ece'])} after (same split, so optimistic).")
        held = c.get("heldout")
        if held:
            lines.append("- One temperature or one per class: each fitted on four fifths of the validation slices and "
                         "scored on the fifth left out (log-loss / ECE): one "
                         f"{_fmt(held['temperature']['log_loss'])} / {_fmt(held['temperature']['ece'])}, per class "
                         f"{_fmt(held['class_temperature']['log_loss'])} / {_fmt(held['class_temperature']['ece'])}; "
                         f"{'per class' if config.class_temperature else 'one'} kept.")
        lines.append(f"- Abstention: below a calibrated confidence of {c['abstain_below']:.2f} the answer is "
                     f"'uncertain — needs review' ({_fmt(c['abstain_rate'])} of validation images); error on the "
                     f"answered rest {_fmt(c.get('error_when_answering'))}; error on the 90% most confident "
                     f"{_fmt(c['error_at_90_coverage'])}. `uncertainty` is the normalised entropy of the "
                     "calibrated probabilities.")
        if (c.get("error_when_answering") or 0) > 0.05:
            lines.append(f"- **Warning:** even above that threshold the model errs on {c['error_when_answering']:.1%} of the "
                         "validation slices it answers (pooled over all sources; the threshold is held at 80% coverage), "
                         "so 'needs review' does not make the other answers safe. Read the per-source figures.")
    d = m.get("mri_detector")
    if d:
        lines.append(f"- 'Looks like a brain MRI': {d['method']}, threshold at the {d['quantile_of_validation_mris']:.1%} "
                     f"quantile of validation MRIs (flags {_fmt(d['validation_mris_flagged'])} of them), plus a blank-"
                     f"image check. On {d.get('non_mri_images', 'n/a')} non-MRI images it never saw (photos, "
                     f"drawings, screenshots, text, noise, CT/ultrasound) it flags {_fmt(d.get('non_mri_flagged'))}."
                     + (f" Missed: {', '.join(d['missed'][:8])}." if d.get("missed") else ""))
    return lines if len(lines) > 2 else []


# What we know of the data roots this project trains on: (description, licence, Hub/Kaggle id). A source the
# table does not know is listed by name, with its licence to be stated by whoever trained on it.
KNOWN_SOURCES: dict[str, tuple[str, str, str]] = {
    "brain-tumor-mri": ("Kaggle *Brain Tumor MRI Dataset*, Training split (Nickparvar; merges figshare/Cheng et al., "
                        "SARTAJ and Br35H): T1 contrast-enhanced tumour slices and mixed-sequence normal slices",
                        "CC0 1.0", "masoudnickparvar/brain-tumor-mri-dataset"),
    "lgg-segmentation": ("LGG segmentation dataset (Buda, Saha, Mazurowski 2019; TCGA-LGG via TCIA): lower-grade "
                         "gliomas on FLAIR, T1 and T1 with contrast, with tumour masks", "CC BY-NC-SA 4.0",
                         "mateuszbuda/lgg-mri-segmentation"),
    "mri-44class-half": ("*Brain Tumor MRI Images 44 Classes* (Kaggle user fernando2rad), half of it: web-collected "
                         "teaching-case slices on T1, T1 with contrast and T2", "not clearly stated by its publisher "
                         "(treated as non-commercial, research use)", "fernando2rad/brain-tumor-mri-images-44c"),
}


def weights_licence(sources: Sequence[str]) -> str:
    """The licence the weights inherit from their training data: CC BY-NC-SA 4.0 once a non-commercial
    share-alike source (or one of unclear, non-commercial terms) is in; 'other' when a source is not in
    KNOWN_SOURCES (whoever trained on it must state its terms); else CC BY 4.0."""
    terms = [KNOWN_SOURCES.get(s.split("/")[0], ("", "unknown", ""))[1] for s in sources]
    if any("NC" in t or "non-commercial" in t for t in terms):
        return "cc-by-nc-sa-4.0"
    return "other" if "unknown" in terms else "cc-by-4.0"


def _sources(config: ModelConfig) -> list[str]:
    tr = config.training or {}
    groups = tr.get("data_sources") or {"brain-tumor-mri": tr.get("data_images")}
    return sorted({g.split("/")[0] for g in groups})


def card_data(config: ModelConfig, model_name: str = "brain-tumor-resnet18") -> "ModelCardData":
    """Hub metadata: licence after the training data, and one model-index entry per validation source/sequence."""
    from huggingface_hub import EvalResult, ModelCardData

    results = []
    groups = (config.metrics or {}).get("validation_groups", {})
    for group, row in groups.items():
        for key, name in (("accuracy", "Accuracy"), ("tumor_sensitivity", "Tumour sensitivity"),
                          ("tumor_specificity", "Tumour specificity"), ("pointing_game", "Pointing game (layer4 CAM)")):
            value = row.get(key)
            if value is not None and value == value:
                results.append(EvalResult(task_type="image-classification", dataset_type=group.split("/")[0],
                                          dataset_name=f"{group} (grouped validation split)", dataset_split="validation",
                                          dataset_config=group.split("/")[1] if "/" in group else None,
                                          metric_type=key, metric_value=round(float(value), 4), metric_name=name))
    sources = _sources(config)
    return ModelCardData(license=weights_licence(sources), library_name="pytorch", pipeline_tag="image-classification",
                         tags=["medical-imaging", "mri", "brain-tumor", "resnet18", "grad-cam"],
                         datasets=[KNOWN_SOURCES[s][2] for s in sources if s in KNOWN_SOURCES],
                         model_name=model_name, eval_results=results or None)


def _data_section(config: ModelConfig) -> list[str]:
    tr = config.training or {}
    counts = tr.get("data_sources") or {}
    lines = ["## Data", "Trained on these sources (images per source/sequence folder, before the split):", ""]
    for source in _sources(config):
        desc, licence, _ = KNOWN_SOURCES.get(source, (source, "not recorded: state it before sharing the weights", ""))
        n = {g: k for g, k in counts.items() if g.split("/")[0] == source}
        lines.append(f"- **{source}**: {desc}. Licence: {licence}. "
                     + (", ".join(f"{g}: {k}" for g, k in n.items()) if n else ""))
    licence = weights_licence(_sources(config))
    if licence == "other":
        lines += ["", "The weights' licence follows their training data; a source above has no recorded terms, so "
                  "state them before sharing the weights."]
    else:
        shown = {"cc-by-nc-sa-4.0": "CC BY-NC-SA 4.0", "cc-by-4.0": "CC BY 4.0"}.get(licence, licence)
        lines += ["", f"The weights are released under **{shown}**"
                  ", following their training data" + (" (non-commercial use only, share alike)." if "nc" in licence
                                                       else ".")]
    share = tr.get("sampling_share")
    if share:
        lines += ["", f"Sampling: each epoch draws its images with replacement so that a source/sequence group of n "
                  f"images has total weight n^{tr.get('config', {}).get('source_balance', 0.5)} (no source dominates): "
                  + ", ".join(f"{g} {v:.0%}" for g, v in share.items()) + "."]
    lines += ["", "Validation is a **grouped** split: slices of one patient (any sequence) and images whose 32x32 "
              f"thumbnails correlate at r >= {tr.get('config', {}).get('dup_threshold', 0.95)} form one group, and a "
              "group never straddles train and validation. Images an earlier model of this line was trained on stay "
              "in training (split.json beside the weights lists every image's side)."]
    return lines


def _group_section(config: ModelConfig) -> list[str]:
    groups = (config.metrics or {}).get("validation_groups")
    if not groups:
        return []
    lines = ["", "### By source and sequence (calibrated; pointing game: the layer4 class activation's peak inside the "
             "tumour mask, the training signal; the served map's figures are under 'How far to trust it')", "", "| source / sequence | n | accuracy | tumour sensitivity | specificity | pointing game |",
             "|---|---|---|---|---|---|"]
    for g, r in groups.items():
        lines.append(f"| {g} | {r['n']} | {_fmt(r.get('accuracy'))} | {_fmt(r.get('tumor_sensitivity'))} | "
                     f"{_fmt(r.get('tumor_specificity'))} | {_fmt(r.get('pointing_game'))} |")
    score = (config.metrics or {}).get("selection_score")
    if score is not None:
        lines += ["", f"Best epoch chosen by the group score ({(config.metrics or {}).get('selection', '')}): "
                  f"{_fmt(score)}."]
    return lines


def model_card(config: ModelConfig, notes: Optional[Sequence[str]] = None) -> str:
    """The model card (huggingface_hub ModelCard): front matter with model-index results per validation source,
    then data, validation figures per source and sequence, trust, training, intended use and limitations."""
    from huggingface_hub import ModelCard

    m = config.metrics or {}
    val = m.get("validation", {})
    tr = config.training or {}
    lines = [
        f"# Brain MRI tumour classifier (ResNet18, {config.img_size} px)",
        "",
        "**" + DISCLAIMER.replace(" It", "** It", 1),
        "",
        f"Classes: {', '.join(config.class_names)}. Input: one 2-D MRI slice (JPEG/PNG/DICOM), converted to "
        f"grayscale, cropped to the head, resized to {config.img_size} x {config.img_size}.",
        "",
        *_data_section(config),
        "",
        "## Validation figures (grouped split: never trained on, but the best epoch and the calibration were chosen on it)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| images | {_fmt(val.get('n'))} |",
        f"| 4-class accuracy | {_fmt(val.get('accuracy'))} |",
        f"| tumour sensitivity / specificity | {_fmt(val.get('tumor_sensitivity'))} / {_fmt(val.get('tumor_specificity'))} |",
        f"| AUROC of tumour probability | {_fmt(val.get('tumor_auroc'))} |",
        f"| ECE before / after calibration ({config.describe_calibration()}) | "
        f"{_fmt(m.get('ece_uncalibrated'))} / {_fmt(val.get('ece'))} |",
        f"| error on the 90% most confident | {_fmt(val.get('error_at_90_coverage'))} |",
    ]
    proxy = m.get("inverted_contrast_proxy")
    if proxy:
        lines.append(f"| tumour sensitivity on an inverted-contrast proxy of the validation set | "
                     f"{_fmt(proxy.get('tumor_sensitivity'))} |")
    lines += _group_section(config)
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
        f"- epochs run: {tr.get('epochs_run', 'n/a')} (best: {m.get('best_epoch', 'n/a')}); time: {_minutes(tr)} on "
        f"{tr.get('hardware', 'n/a')}; torch {tr.get('torch', 'n/a')}",
        f"- settings: `{json.dumps(tr.get('config', {}))}`",
        "- augmentation: flips, rotation, scale, shift; random piecewise-linear intensity curves and tissue "
        "inversion (which reorder tissue contrast as a different MRI sequence does), gamma, contrast, blur, noise"
        + ("; skull stripping, bias field, ghosting, motion, Gibbs ringing, Rician noise, low resolution, "
           "photographed-film looks" if tr.get("config", {}).get("mri_aug") else "") + ".",
        *(["- heat-map objective: on slices with a tumour mask, the softmax over layer4 cells of the true class's "
           f"activation is pushed inside the mask (weight {tr['config']['loc_weight']:g}); on tumour slices without "
           f"one, inside the head (weight {tr['config'].get('head_weight', 0):g})."]
          if tr.get("config", {}).get("loc_weight") else []),
        *([f"- distillation: on the {tr['config'].get('distill_source') or 'training'} slices, the answers of "
           f"`{tr['config']['distill']}` (frozen) were learned too (weight {tr['config']['distill_weight']:g}, "
           f"temperature {tr['config']['distill_temperature']:g}; it read each slice before the contrast "
           "and artefact augmentation)."]
          if tr.get("config", {}).get("distill") else []),
        *([f"- anchor: on the {'other ' if tr['config'].get('distill') else ''}slices, the answers of the initial "
           f"weights `{tr['config']['init']}` (frozen) were learned too (weight {tr['config']['anchor_weight']:g}), "
           "so that what they got right there is kept."]
          if tr.get("config", {}).get("anchor_weight") else []),
        *(["- weights: a model soup, the weighted mean of " + "; ".join(
            f"{i['weight']:.2f} x {i['kind']} (`{i['source']}`)" for i in tr["soup"]["ingredients"])
           + "; the epochs above are the first ingredient's run. Calibration, MRI detector and heat-map offsets were "
           "refitted on the mean."] if tr.get("soup") else []),
        "",
        "## Intended use",
        "Teaching and research on explainable classifiers: show which image regions drive a prediction.",
        "",
        "## Limitations",
        "- Trained on public 2-D slices (see Data). Within each source, sequence, plane and scanner go with the "
        "label (Kaggle's tumours are mostly T1 contrast-enhanced, its normal slices mostly T2/FLAIR): shortcuts that "
        "the several sources, the augmentation and head cropping fight; the per-sequence figures above measure what "
        "is left. The validation groups outside Kaggle are small (tens to a few hundred slices).",
        "- Not validated on any clinical population; figures come from validation splits of the training sources.",
        "- Skull-base and vertex slices, and tumour types outside the four classes, are barely represented.",
        "- Heat maps show what drove the network, not where the tumour is.",
        "- Uncalibrated outside this data: confidence on other scanners/sequences can be wrong.",
    ]
    for n in (config.training or {}).get("notes", []) if notes is None else notes:
        lines += ["", n]
    if (config.training or {}).get("command"):
        soup = config.training.get("soup", {}).get("command")
        lines += ["", "## Reproduce", "```", config.training["command"], *([soup] if soup else []), "```"]
    body = "\n".join(lines) + "\n"
    return str(ModelCard("---\n" + card_data(config).to_yaml() + "\n---\n\n" + body))


def write_model_card(folder, config: ModelConfig, notes: Optional[Sequence[str]] = None) -> Path:
    """The card of a model folder. ``notes`` (default: those kept in ``config.training["notes"]``, so that a refit
    rewriting the card keeps them) follow the limitations."""
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

    parser = argparse.ArgumentParser(prog="python -m brain_tumor.hub", description="Upload a model folder to the Hub.",
                                     formatter_class=HelpFormatter)
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
