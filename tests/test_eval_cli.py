"""``pali eval`` end to end: each benchmark's files, ``--json``, ``--per-item``, and ``--model``
running the bundled demo model on its held-out files (``examples/demo_eval_files.py``), resumable."""

from __future__ import annotations

import json
from pathlib import Path
import sys

import pytest

from pali.cli import main

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = Path(__file__).parent / "fixtures" / "captions_official"


def _json(capsys, argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_captions_table_json_and_per_item(tmp_path, capsys):
    argv = ["eval", "captions", "--references", str(CAPTIONS / "captions.json"),
            "--predictions", str(CAPTIONS / "results.json")]
    out = _json(capsys, [*argv, "--per-item", str(tmp_path / "items.jsonl")])
    assert list(out) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(rows) == 30 and {"id", "CIDEr", "Bleu_4", "prediction"} <= set(rows[0])
    assert sum(r["CIDEr"] for r in rows) / len(rows) == pytest.approx(out["CIDEr"])
    assert main(argv) == 0
    assert f"CIDEr    {out['CIDEr']:.4f}" in capsys.readouterr().out


def test_jsonl_and_ocr(tmp_path, capsys):
    lines = [{"id": 1, "prediction": "a dog", "references": ["a dog"] * 3 + ["the dog"]},
             {"id": 2, "prediction": "two", "references": ["2"] * 5 + ["two"] * 5}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _json(capsys, ["eval", "jsonl", str(tmp_path / "d.jsonl"), "--metric", "vqa"])["overall"] == 100.0
    assert _json(capsys, ["eval", "jsonl", str(tmp_path / "d.jsonl"), "--metric", "anls"])["ANLS"] == 1.0
    (tmp_path / "r.jsonl").write_text('{"id": "a", "text": "STOP"}\n{"id": "b", "text": "exit"}\n')
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prediction": "STOP"}\n{"id": "b", "prediction": "exlt"}\n')
    out = _json(capsys, ["eval", "ocr", "--references", str(tmp_path / "r.jsonl"), "--predictions", str(tmp_path / "p.jsonl")])
    assert out == {"exact_match": 0.5, "CER": 0.125, "ANLS": pytest.approx((1 + 0.75) / 2)}


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "examples"))
    import demo_eval_files

    out = tmp_path_factory.mktemp("demo-eval")
    demo_eval_files.write(out, per_cell=3)
    return out


def test_model_predicts_saves_and_resumes(demo_files, tmp_path, capsys):
    predictions = tmp_path / "results.json"
    argv = ["eval", "captions", "--model", "pali-demo", "--images", str(demo_files / "images"), "--no-progress",
            "--references", str(demo_files / "captions_en.json"), "--predictions", str(predictions), "--batch-size", "2"]
    first = _json(capsys, argv)
    saved = json.loads(predictions.read_text())
    assert [r["image_id"] for r in saved] == [1, 2, 3] and all(isinstance(r["caption"], str) for r in saved)
    assert json.loads(predictions.with_suffix(".metrics.json").read_text()) == first
    # a resumed run keeps what is saved and predicts only what is missing
    saved[0]["caption"] = "a caption no model wrote"
    predictions.write_text(json.dumps(saved[:2]))
    _json(capsys, argv)
    again = json.loads(predictions.read_text())
    assert again[0]["caption"] == "a caption no model wrote" and len(again) == 3
    # the saved file re-scores without the model
    assert _json(capsys, argv[:2] + argv[7:11]) == json.loads(predictions.with_suffix(".metrics.json").read_text())


def test_model_on_vqa_and_xm3600(demo_files, tmp_path, capsys):
    common = ["--model", "pali-demo", "--images", str(demo_files / "images"), "--no-progress"]
    out = _json(capsys, ["eval", "vqa", *common, "--lang", "fr", "--questions", str(demo_files / "vqa_fr_questions.json"),
                         "--annotations", str(demo_files / "vqa_fr_annotations.json"),
                         "--predictions", str(tmp_path / "vqa.json")])
    assert set(out) == {"overall", "perQuestionType", "perAnswerType"} and 0 <= out["overall"] <= 100
    assert {"question_id", "answer"} == set(json.loads((tmp_path / "vqa.json").read_text())[0])
    out = _json(capsys, ["eval", "xm3600", *common, "--languages", "en,zh", "--references",
                         str(demo_files / "xm3600_captions.jsonl"), "--predictions", str(tmp_path / "xm.jsonl")])
    assert set(out["CIDEr"]) == {"en", "zh"}
    rows = [json.loads(line) for line in (tmp_path / "xm.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["lang"] for r in rows} == {"en", "zh"}


def test_model_without_images_is_an_error(demo_files, tmp_path, capsys):
    assert main(["eval", "captions", "--model", "pali-demo", "--references", str(demo_files / "captions_en.json"),
                 "--predictions", str(tmp_path / "p.json")]) == 2
    assert "--model needs --images" in capsys.readouterr().err


def test_model_on_ocr_and_detection(demo_files, tmp_path, capsys):
    common = ["--model", "pali-demo", "--images", str(demo_files / "images"), "--no-progress"]
    out = _json(capsys, ["eval", "ocr", *common, "--references", str(demo_files / "ocr.jsonl"),
                         "--predictions", str(tmp_path / "ocr.jsonl")])
    assert set(out) == {"exact_match", "CER", "ANLS"}
    assert len((tmp_path / "ocr.jsonl").read_text().splitlines()) == 3
    out = _json(capsys, ["eval", "detect", *common, "--references", str(demo_files / "detect_instances.json"),
                         "--predictions", str(tmp_path / "detections.json")])
    assert set(out) == {"mAP@0.5", "mAP", "mean_IoU"} and 0 <= out["mean_IoU"] <= 1
    saved = json.loads((tmp_path / "detections.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score"} == set(r) for r in saved)
    # re-scored from the saved COCO results without the model: the same numbers
    again = _json(capsys, ["eval", "detect", "--references", str(demo_files / "detect_instances.json"),
                           "--predictions", str(tmp_path / "detections.json")])
    assert again == out


@pytest.mark.slow
def test_demo_card_numbers_come_from_pali_eval(tmp_path, capsys):
    """The model card's pali eval figures (English captions, VQA, detection) are what pali eval
    prints on the held-out files, and agree with evaluation.json where both measure one thing."""
    import re

    sys.path.insert(0, str(ROOT / "examples"))
    import demo_eval_files

    demo_eval_files.write(tmp_path, per_cell=100)
    card = (ROOT / "src" / "pali" / "bundled" / "pali-demo" / "README.md").read_text(encoding="utf-8")
    truth = json.loads((ROOT / "src" / "pali" / "bundled" / "pali-demo" / "evaluation.json").read_text())["results"]
    common = ["--model", "pali-demo", "--images", str(tmp_path / "images"), "--no-progress"]
    captions = _json(capsys, ["eval", "captions", *common, "--references", str(tmp_path / "captions_en.json"),
                              "--predictions", str(tmp_path / "c.json")])
    cider_en = re.search(r"\| caption CIDEr \(x100\) \| ([\d.]+) \|", card)[1]
    assert f"{100 * captions['CIDEr']:.1f}" == cider_en
    vqa = _json(capsys, ["eval", "vqa", *common, "--lang", "en", "--questions", str(tmp_path / "vqa_en_questions.json"),
                         "--annotations", str(tmp_path / "vqa_en_annotations.json"), "--predictions", str(tmp_path / "v.json")])
    assert vqa["overall"] == pytest.approx(100 * truth["vqa_en"])  # ten equal answers: exact match
    detect = _json(capsys, ["eval", "detect", *common, "--references", str(tmp_path / "detect_instances.json"),
                            "--predictions", str(tmp_path / "d.json")])
    assert detect["mean_IoU"] == pytest.approx(truth["detect_iou"])
    assert f"mAP@0.5 {detect['mAP@0.5']:.3f}" in " ".join(card.split())


def test_scoring_files_imports_no_torch():
    """Scoring saved predictions is light: the model side (and torch) loads only with --model."""
    import subprocess

    code = ("import sys, io, contextlib; from pali.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['eval', 'captions', '--references', {str(CAPTIONS / 'captions.json')!r}, "
            f"'--predictions', {str(CAPTIONS / 'results.json')!r}]) == 0\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
