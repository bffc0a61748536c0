"""Caption metrics equal pycocoevalcap's on the same inputs (its scorers, its tokenizer's tokens).

``fixtures/captions_official/expected.json`` was computed by pycocoevalcap 1.2 itself: its
``PTBTokenizer`` (Java) on ``captions.json``/``results.json``, then ``Bleu(4)``, ``Rouge()`` and
``Cider()`` as ``COCOEvalCap.evaluate`` calls them. The inputs hold empty and all-punctuation
predictions, case changes, repeated n-grams, 1 to 5 references, unicode.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import pytest

from pali.eval import caption_metrics, score_captions
from pali.eval.formats import read_caption_references, read_caption_results

FIXTURES = Path(__file__).parent / "fixtures" / "captions_official"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def _inputs():
    refs = read_caption_references(FIXTURES / "captions.json")
    return read_caption_results(FIXTURES / "results.json"), refs.captions


def test_equal_to_pycocoevalcap_with_ptb_tokenizer():
    predictions, references = _inputs()
    result = score_captions(predictions, references)
    assert result.metrics == pytest.approx(EXPECTED["metrics"], rel=1e-12, abs=1e-15)
    cider = {str(k): v["CIDEr"] for k, v in result.per_item.items()}
    assert cider == pytest.approx(EXPECTED["CIDEr_per_image"], rel=1e-12, abs=1e-15)
    assert set(result.metrics) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed: --tokenizer ptb cannot run")
def test_ptb_tokenizer_option_runs_the_real_one():
    predictions, references = _inputs()
    assert caption_metrics(predictions, references, tokenizer="ptb") == pytest.approx(EXPECTED["metrics"], rel=1e-12)


def test_metrics_move_the_right_way():
    refs = {1: ["a man riding a wave on a surfboard", "a surfer on a wave"], 2: ["a dog on a couch", "a dog sleeping"]}
    perfect = caption_metrics({1: "a man riding a wave on a surfboard", 2: "a dog on a couch"}, refs)
    wrong = caption_metrics({1: "a plate of food", 2: "a red bus"}, refs)
    assert perfect["Bleu_1"] == pytest.approx(1.0) and wrong["Bleu_4"] < 1e-6
    assert perfect["CIDEr"] > wrong["CIDEr"]


def test_karpathy_split_json(tmp_path):
    data = {"dataset": "coco", "images": [
        {"cocoid": 42, "imgid": 0, "split": "test", "filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg",
         "sentences": [{"raw": "A dog on a couch.", "tokens": ["a", "dog"]}, {"raw": "A sleeping dog."}]},
        {"cocoid": 43, "imgid": 1, "split": "train", "filepath": "train2014", "filename": "x.jpg",
         "sentences": [{"raw": "A cat."}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    refs = read_caption_references(tmp_path / "dataset_coco.json", "test")
    assert refs.captions == {42: ["A dog on a couch.", "A sleeping dog."]}
    assert refs.images == {42: "val2014/COCO_val2014_000000000042.jpg"}


def test_textcaps_json(tmp_path):
    refs = ["A sign that says stop.", "a red stop sign"]
    rows = [{"image_id": "0054c91397f2fe05", "image_path": "train/0054c91397f2fe05.jpg", "caption_str": r,
             "reference_strs": refs} for r in refs]
    (tmp_path / "TextCaps_0.1_val.json").write_text(json.dumps({"dataset_name": "textcaps", "data": rows}))
    out = read_caption_references(tmp_path / "TextCaps_0.1_val.json")
    assert out.captions == {"0054c91397f2fe05": refs} and out.images == {"0054c91397f2fe05": "train/0054c91397f2fe05.jpg"}
