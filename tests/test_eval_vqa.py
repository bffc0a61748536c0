"""VQA accuracy equals the official VQAv2 evaluation script's output on the same files.

``fixtures/vqa_official/{questions,annotations,results}.json`` are inputs written for the awkward
cases (normalization skipped when the answers agree, number words, articles, punctuation, the
comma and period rules, contractions, newlines and tabs, empty answers, 1-4 matching humans,
unicode, more than 32 periods, answer records without ``answer_id``, 5 answers in place of 10).
``expected.json`` is what GT-Vision-Lab/VQA's own code (commit a013f00, ``vqaTools/vqa.py`` and
``vqaEvaluation/vqaEval.py``, unmodified, Python 2.7.18) computed on them:

    vqa = VQA(annotations, questions); res = vqa.loadRes(results, questions)
    e = VQAEval(vqa, res, n=2); e.evaluate()
    json.dump({"accuracy": e.accuracy, "evalQA": e.evalQA}, ...)
"""

from __future__ import annotations

import json
from pathlib import Path

from pali.cli import main
from pali.eval import VqaAnnotation, normalize_answer, score_vqa, vqa_accuracy
from pali.eval.formats import read_vqa_references, read_vqa_results
from pali.eval.vqa import py2_round

FIXTURES = Path(__file__).parent / "fixtures" / "vqa_official"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def test_equal_to_the_official_script():
    refs = read_vqa_references(FIXTURES / "annotations.json", FIXTURES / "questions.json")
    result = score_vqa(read_vqa_results(FIXTURES / "results.json"), refs.annotations)
    assert result.metrics == EXPECTED["accuracy"]
    assert {str(k): v["accuracy"] for k, v in result.per_item.items()} == EXPECTED["evalQA"]


def test_cli_prints_the_official_shape(capsys):
    argv = ["eval", "vqa", "--questions", str(FIXTURES / "questions.json"), "--annotations",
            str(FIXTURES / "annotations.json"), "--predictions", str(FIXTURES / "results.json")]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED["accuracy"]
    assert main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first == ["overall", f"{EXPECTED['accuracy']['overall']:.2f}"]


def test_python2_rounding():
    # what Python 2.7.18 prints for round() of these (ties away from zero on the exact binary
    # value; Python 3 gives 0.12, 2.0 and -0.12 for the exact ties)
    values = [(0.125, 2), (2.675, 2), (2.5, 0), (33.335, 2), (0.375, 2), (-0.125, 2)]
    assert [py2_round(x, n) for x, n in values] == [0.13, 2.67, 3.0, 33.34, 0.38, -0.13]


def test_normalization():
    assert normalize_answer("The Dog!") == "dog"
    assert normalize_answer("two") == "2" and normalize_answer("dont") == "don't"
    assert normalize_answer("1,000") == "1000" and normalize_answer("3.5") == "3.5"
    assert normalize_answer("end.") == "end"


def test_unanimous_answers_are_not_normalized():
    assert vqa_accuracy({1: "Yes"}, {1: ["yes"] * 10})["overall"] == 0.0
    assert vqa_accuracy({1: "Yes"}, {1: ["yes"] * 9 + ["no"]})["overall"] == 100.0


def test_types_and_plain_lists():
    refs = {1: VqaAnnotation(("2",) * 10, "number", "how many"), 2: VqaAnnotation(("red",) * 2 + ("blue",) * 8, "other", "what color")}
    out = vqa_accuracy({1: "2", 2: "red"}, refs)
    assert out == {"overall": 80.0, "perQuestionType": {"how many": 100.0, "what color": 60.0},
                   "perAnswerType": {"number": 100.0, "other": 60.0}}


def test_textvqa_and_vizwiz_formats(tmp_path):
    (tmp_path / "textvqa.json").write_text(json.dumps({"data": [
        {"question_id": 7, "image_id": "abc", "question": "what brand?", "answers": ["nike"] * 6 + ["adidas"] * 4}]}))
    refs = read_vqa_references(tmp_path / "textvqa.json")
    assert vqa_accuracy({7: "Nike"}, refs.annotations)["overall"] == 100.0
    assert refs.questions[7] == ("abc", "what brand?")
    (tmp_path / "vizwiz.json").write_text(json.dumps([
        {"image": "VizWiz_val_00000001.jpg", "question": "what is this?", "answer_type": "other",
         "answers": [{"answer": "soup", "answer_confidence": "yes"}] * 2 + [{"answer": "can", "answer_confidence": "no"}] * 8}]))
    (tmp_path / "pred.json").write_text(json.dumps([{"image": "VizWiz_val_00000001.jpg", "answer": "soup"}]))
    refs = read_vqa_references(tmp_path / "vizwiz.json")
    # identical records leave out together (no answer_id), as the script compares whole records
    out = vqa_accuracy(read_vqa_results(tmp_path / "pred.json"), refs.annotations)
    # so each "soup" leaves no other "soup" (0) and each "can" leaves both (2/3)
    assert out["overall"] == py2_round(100 * (8 * (2 / 3)) / 10, 2) == 53.33
