"""The PDF report, the verdict's one set of words, and the command line on volumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brain_tumor import predict
from brain_tumor.decode import read_image
from brain_tumor.inference import Predictor
from brain_tumor.report import report_bytes, safe_name
from brain_tumor.verdict import ANSWERED, NOT_ASSESSED, NOT_MRI, REVIEW, decide
from conftest import synthetic_slice
from test_volume import write_series

ROOT = Path(__file__).resolve().parent.parent


def pdf_text(data: bytes) -> str:
    import io

    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def test_verdict_precedence_and_words():
    shown = {"notumor": "no tumour"}.get
    assert decide("notumor", 0.9, True, False, 0.7, lambda c: shown(c) or c).headline == "no tumour"
    review = decide("glioma", 0.5, True, True, 0.7)
    assert review.status == REVIEW and review.label is None and "leans glioma" in review.headline
    assert "50.0%" in review.detail and "70%" in review.detail and review.needs_review
    withheld = decide("glioma", 0.99, False, False, 0.7)  # not an MRI wins over a confident class
    assert withheld.status == NOT_ASSESSED and withheld.label is None and withheld.headline == NOT_MRI
    assert decide("glioma", 0.99, True, False).status == ANSWERED and not decide("glioma", 0.99, True, False).needs_review


def test_json_table_and_prediction_say_the_same(tiny_model_dir):
    p = Predictor(str(tiny_model_dir))
    [pred] = p.predict([synthetic_slice(0)])
    for looks, review in [(True, False), (True, True), (False, False)]:
        pred.looks_like_mri, pred.needs_review = looks, review
        record = {"path": "x.png", **pred.to_json()}
        assert record["verdict"] == pred.verdict == pred.decision.headline
        assert record["needs_review"] is pred.decision.needs_review
        assert pred.verdict in predict.format_table([record], p)


def test_report_holds_what_a_clinician_needs(tiny_model_dir):
    p = Predictor(str(tiny_model_dir))
    gray = synthetic_slice(1)
    [pred] = p.predict([gray], heatmaps=True)
    text = pdf_text(report_bytes(pred, p.view(gray, pred.crop), file_name="/some/where/case 7.png",
                                 model="user/brain-tumor@v2", version="3"))
    for c in p.classes:
        assert p.config.display(c) in text
    assert "case 7.png" in text and "/some/where" not in text
    assert "user/brain-tumor@v2" in text and "version 3" in text
    assert "not a diagnostic device" in text and "Grad-CAM" in text and "Date:" in text
    pred.looks_like_mri = False
    text = pdf_text(report_bytes(pred, p.view(gray, pred.crop), file_name="x.png", model="m"))
    assert "does not look like a brain MRI" in text and "NEEDS REVIEW" in text


def test_report_from_dicom_carries_no_patient_field(tiny_model_dir, tmp_path, capsys):
    d = np.zeros((40, 40, 3), np.float32)
    d[5:35, 5:35] = 100
    [path, *_] = write_series(tmp_path / "s", d, shuffle=False)  # PatientName SECRET^PATIENT, ID SECRET-ID
    out = tmp_path / "reports"
    assert predict.main([str(path), "--model", str(tiny_model_dir), "--report", str(out), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    text = pdf_text(Path(record["report"]).read_bytes())
    assert "SECRET" not in text and path.name in text


def test_safe_name_strips_paths_and_control_characters():
    assert safe_name("../../x\x1b[31m.png") == "x?[31m.png"
    assert safe_name(None) == "(unnamed upload)" and len(safe_name("a" * 500)) <= 80


def test_cli_volume_gives_one_answer_per_axial_slice_and_the_best(tiny_model_dir, tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    vol = np.stack([synthetic_slice(k, size=64, tumor=k % 2 == 0).astype(np.float32) for k in range(6)], -1)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "head.nii.gz")
    (tmp_path / "one.png").write_bytes((ROOT / "examples" / "glioma_1.jpg").read_bytes())
    assert predict.main([str(tmp_path), "--model", str(tiny_model_dir), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    slices = [r for r in records if r["path"].endswith("head.nii.gz")]
    assert [r["slice"] for r in slices] == list(range(6)) and all(r["slices"] == 6 for r in slices)
    assert [r for r in records if r["path"].endswith("one.png")][0].get("slice") is None
    maps, reports = tmp_path / "maps", tmp_path / "reports"
    assert predict.main([str(tmp_path / "head.nii.gz"), "--model", str(tiny_model_dir), "--json", "--slices", "best",
                         "--heatmaps", str(maps), "--report", str(reports)]) == 0
    [best] = json.loads(capsys.readouterr().out)
    assert best["tumor_probability"] == pytest.approx(max(r["tumor_probability"] for r in slices), abs=1e-5)
    assert Path(best["heatmap"]).name == f"head_slice{best['slice']:03d}.npy"
    assert np.load(best["heatmap"]).shape == (64, 64)
    assert Path(best["report"]).read_bytes()[:5] == b"%PDF-"


def test_cli_unreadable_volume_is_reported_in_place(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really")
    good = tmp_path / "a.png"
    good.write_bytes((ROOT / "examples" / "glioma_1.jpg").read_bytes())
    assert predict.main([str(bad), str(good), "--model", str(tiny_model_dir), "--json"]) == 2
    records = json.loads(capsys.readouterr().out)
    assert "error" in records[0] and records[1]["label"]


def test_predict_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: 32)" in text and "(default: all)" in text and "--report" in text
    # a default the help states itself, or None, or a flag's, is not shown again: "(default: bundled) (default: None)"
    words = " ".join(text.split())
    assert "(default: None)" not in words and "(default: False)" not in words
    assert words.count("(default: bundled)") == 1


def test_command_line_helps_leave_out_empty_defaults(capsys):
    import train
    from brain_tumor import cam_offset, evaluate

    for main, shown in ((lambda: train.parse_args(["--help"]), "(default: 20)"),
                        (lambda: evaluate.main(["--help"]), "(default: 32)"),
                        (lambda: cam_offset.main(["--help"]), "(default: 2000)")):
        with pytest.raises(SystemExit):
            main()
        words = " ".join(capsys.readouterr().out.split())
        assert shown in words  # real defaults are still shown
        for empty in ("(default: None)", "(default: False)", "(default: True)", "(default: )", "(default: [])"):
            assert empty not in words, empty


def test_bundled_examples_decode_for_the_report():
    gray = read_image(ROOT / "examples" / "notumor_1.jpg")
    assert gray.ndim == 2
