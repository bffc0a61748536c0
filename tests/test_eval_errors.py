"""Bad input: a named error that says which ids or which field, never a silent drop."""

from __future__ import annotations

import json

import pytest

from pali.cli import main
from pali.eval import (
    AnnotationFormatError,
    DuplicateIdsError,
    MissingPredictionsError,
    UnknownIdsError,
    caption_metrics,
    score_captions,
    vqa_accuracy,
)
from pali.eval.formats import read_caption_references, read_caption_results, read_vqa_references
from pali.errors import InputError

REFS = {1: ["a dog"], 2: ["a cat"], 3: ["a bird"]}


def test_missing_predictions_name_the_ids():
    with pytest.raises(MissingPredictionsError, match=r"2 ids \(2, 3\) of 3 have no prediction"):
        caption_metrics({1: "a dog"}, REFS)


def test_allow_partial_scores_the_rest_and_says_so():
    result = score_captions({1: "a dog"}, REFS, allow_partial=True)
    assert result.coverage.scored == 1 and result.coverage.total == 3 and result.coverage.missing == (2, 3)
    assert result.to_json()["scored"] == 1 and result.to_json()["total"] == 3


def test_unknown_ids_are_an_error_even_with_allow_partial():
    with pytest.raises(UnknownIdsError, match=r"1 id \(9\) are not in the references"):
        caption_metrics({1: "a dog", 9: "x"}, REFS, allow_partial=True)
    with pytest.raises(UnknownIdsError, match="another type"):
        caption_metrics({"1": "a dog", "2": "a cat", "3": "a bird"}, REFS)


def test_references_in_the_wrong_shape():
    with pytest.raises(AnnotationFormatError, match=r"1 id \(1\) are not a non-empty list of strings"):
        caption_metrics({1: "a dog"}, {1: "a dog"})
    with pytest.raises(AnnotationFormatError, match="not a non-empty list"):
        caption_metrics({1: "a dog"}, {1: []})
    with pytest.raises(AnnotationFormatError, match="list of answers"):
        vqa_accuracy({1: "yes"}, {1: "yes"})
    with pytest.raises(AnnotationFormatError, match="not strings"):
        caption_metrics({1: None}, {1: ["a dog"]})


def test_duplicate_predictions(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(DuplicateIdsError, match=r"image_id: 1 id \(1\) appear more than once"):
        read_caption_results(tmp_path / "r.json")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1}]}), r"annotations\[0\]: missing field 'caption'"),
    (json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": 5}]}), "field 'caption' should be str"),
    (json.dumps({"images": "x"}), "expected an object with a 'images' list"),
    (json.dumps({"images": [{"id": 1}, {"id": 2}], "annotations": [{"image_id": 1, "caption": "a"}]}),
     r"1 id \(2\) are listed in 'images' with no caption"),
])
def test_malformed_caption_annotations(tmp_path, content, match):
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(AnnotationFormatError, match=match):
        read_caption_references(tmp_path / "a.json")


def test_malformed_vqa_annotations(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [{"question_id": 1, "answers": [{"text": "x"}]}]}))
    with pytest.raises(AnnotationFormatError, match=r"annotations\[0\].answers\[0\]: missing field 'answer'"):
        read_vqa_references(tmp_path / "a.json")


def test_errors_are_input_errors():
    assert issubclass(MissingPredictionsError, InputError) and issubclass(AnnotationFormatError, ValueError)


def test_cli_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "refs.json").write_text(json.dumps({"images": [{"id": 1}, {"id": 2}], "annotations": [
        {"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}]}))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))
    argv = ["eval", "captions", "--references", str(tmp_path / "refs.json"), "--predictions", str(tmp_path / "res.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 id (2) of 2 have no prediction" in err and "--allow-partial" in err
    assert main([*argv, "--allow-partial"]) == 0
    assert "scored 1 of 2 (--allow-partial: 1 had no prediction)" in capsys.readouterr().out
    assert main([*argv, "--allow-partial", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["scored"], out["total"]) == (1, 2)
    assert main(["eval", "captions", "--references", str(tmp_path / "nope.json"), "--predictions", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch):
    import sys

    from pali.eval import MissingExtraError

    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r'pip install "pali-vlm\[eval\]"'):
        caption_metrics({1: "a dog"}, {1: ["a dog"]})
