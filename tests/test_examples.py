"""The examples run: from-scratch training learns, fine-tuning on a folder saves loadable checkpoints,
and the bundled demo model still scores what its model card says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pali import PaliModel, PaliProcessor, bundled

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.mark.slow
def test_train_synthetic_smoke_run_learns(tmp_path):
    out = tmp_path / "model"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "train_synthetic.py"), "--steps", "40", "--vision-steps", "5",
         "--batch-size", "16", "--warmup", "5", "--eval-size", "2", "--log-every", "1", "--threads", "1",
         "--freeze-vision", "--unfreeze-vision-at", "0.5", "--vision-lr", "1e-4", "--mix", "caption=2,ocr=1",
         "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["vision"] * 5 + ["pali"] * 40
    losses = [r["loss"] for r in log if r["stage"] == "pali"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["training"]["steps"] == 40 and evaluation["training"]["vision_steps"] == 5
    assert evaluation["training"]["unfreeze_vision_step"] == 20 and evaluation["training"]["mix"] == {"caption": 2, "ocr": 1}
    assert "frozen until step 20" in (out / "README.md").read_text()
    assert "caption_zh" in evaluation["results"]
    model = PaliModel.from_pretrained(out)  # saved with its processor, loadable as usual
    assert PaliProcessor.from_pretrained(out).tokenizer.vocab_size == model.config.text.vocab_size


def test_vision_pretraining_targets():
    """A square covering whole patches labels exactly those patches; the scene row carries its box."""
    import synthetic

    shape = synthetic.Shape("square", "blue", (16, 8, 32, 24))  # x 16..32, y 8..24: patches (1-2, 2-3)
    example = synthetic.Example(None, "caption", "en", {}, "", [shape])
    patch = synthetic.patch_targets(example, grid=8)
    expected = {(1, 2), (1, 3), (2, 2), (2, 3)}
    assert {tuple(ix) for ix in zip(*patch["kind"].nonzero())} == expected
    assert (patch["kind"][1, 2], patch["color"][1, 2]) == (1 + synthetic.SHAPES.index("square"),
                                                             1 + list(synthetic.COLORS).index("blue"))
    assert patch["box"][2, 3].tolist() == [8 / 64, 16 / 64, 24 / 64, 32 / 64]
    scene = synthetic.scene_targets(example)
    row = synthetic.SHAPES.index("square")
    assert scene["present"].tolist() == [float(i == row) for i in range(len(synthetic.SHAPES))]
    assert scene["box"][row].tolist() == [8 / 64, 16 / 64, 24 / 64, 32 / 64]


def test_letter_targets_cover_the_ink():
    """Every dark pixel of a rendered word lies in a letter box, and the patches under the letters
    carry those letters in reading order (a narrow one, such as ``l``, may own no patch); the scene
    row names the word."""
    import random

    import numpy as np
    import synthetic

    rng = random.Random(3)
    for _ in range(20):
        example = synthetic.make_example(rng, "ocr")
        assert "".join(letter for letter, _ in example.glyphs) == example.target
        ink = np.asarray(example.image).max(-1) < 120
        inside = np.zeros_like(ink)
        for _, (x0, y0, x1, y1) in example.glyphs:
            inside[y0:y1, x0:x1] = True
        assert ink.any() and not (ink & ~inside).any()
        char = synthetic.patch_targets(example, grid=8)["char"]
        letters = [synthetic.ALPHABET[c - 1] for c in char[char.any(1)][0] if c]  # the first labelled row
        rest = iter(example.target)  # read left to right, the row's letters are the word's, in order
        assert letters and all(letter in rest for letter in dict.fromkeys(letters)), (letters, example.target)
        assert synthetic.scene_targets(example)["word"] == 1 + synthetic.WORDS.index(example.target)
    scene = synthetic.make_example(rng, "caption")
    assert not synthetic.patch_targets(scene, grid=8)["char"].any() and synthetic.scene_targets(scene)["word"] == 0


def test_task_mix_parses_and_names_bad_items():
    import argparse

    import train_synthetic

    assert train_synthetic.parse_mix("caption=2,ocr=1") == ("caption", "caption", "ocr")
    for bad in ("caption=two", "speech=1", "caption=0"):
        with pytest.raises(argparse.ArgumentTypeError, match="task=weight|every weight"):
            train_synthetic.parse_mix(bad)


def test_bundled_samples_are_the_seeded_draw(tmp_path):
    """The demo's samples are what examples/make_demo_samples.py draws from its seed, not a pick."""
    import make_demo_samples

    make_demo_samples.main(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (bundled.SAMPLES / path.name).read_bytes(), path.name
    assert sorted(p.name for p in bundled.SAMPLES.iterdir()) == sorted(p.name for p in tmp_path.iterdir())


def folder_data(folder: Path, n: int = 6, prompt: bool = True) -> Path:
    """``n`` synthetic caption pairs as ``finetune_folder.py`` reads them (with PaLI's prompt, or none)."""
    import random

    import synthetic

    folder.mkdir()
    rng = random.Random(0)
    lines = []
    for i in range(n):
        example = synthetic.make_example(rng, "caption", "en")
        example.image.save(folder / f"{i}.png")
        record = {"image": f"{i}.png", "target": example.target}
        if prompt:
            record["prompt"] = "Generate the alt_text in en at 0: <extra_id_0>"
        lines.append(json.dumps(record))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.slow
def test_finetune_folder(tmp_path):
    data = folder_data(tmp_path / "data")
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "finetune_folder.py"), "--model", "pali-demo", "--data", str(data),
         "--out", str(out), "--steps", "3", "--batch-size", "4", "--grad-accum", "2", "--save-every", "2"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "step-2" / "config.json").is_file() and (out / "final" / "spiece.model").is_file()
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2, 3]
    PaliModel.from_pretrained(out / "final")
    card = (out / "final" / "README.md").read_text()
    assert f"fine-tuned on {data}" in card and "- based on: `pali-demo`" in card


def test_finetune_precision_follows_what_the_device_does_fast(monkeypatch):
    import finetune_folder
    import torch

    cpu = torch.device("cpu")
    monkeypatch.setattr(finetune_folder, "cpu_flags", lambda: {"avx", "avx2", "fma"})
    bf16, why = finetune_folder.fast_precision(cpu)
    assert not bf16 and "no native bf16" in why
    monkeypatch.setattr(finetune_folder, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert finetune_folder.fast_precision(cpu) == (True, "the CPU multiplies bf16 natively (avx512_bf16)")
    monkeypatch.setattr(finetune_folder, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert finetune_folder.fast_precision(cpu)[0]


def _run(finetune_folder, capsys, *argv) -> list[str]:
    assert finetune_folder.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_finetune_resumed_run_equals_the_uninterrupted_one(tmp_path, capsys, monkeypatch):
    """Two steps, then --resume to four, ends with the same weights, losses and validation as
    four steps in one go (model, optimizer state, step and random state all restored)."""
    import finetune_folder
    import torch

    monkeypatch.setattr(finetune_folder, "cpu_flags", lambda: set())  # fp32 whatever this CPU does
    data = folder_data(tmp_path / "data")
    common = ["--model", "pali-demo", "--data", data, "--batch-size", "2", "--val-fraction", "0.34",
              "--eval-every", "2", "--max-new-tokens", "8", "--lr", "1e-3"]
    whole = _run(finetune_folder, capsys, *common, "--out", tmp_path / "whole", "--steps", "4")
    assert whole[0] == "precision: fp32 on cpu, the CPU has no native bf16 matmul (no avx512_bf16 or amx_bf16): bf16 would be slower"
    first = _run(finetune_folder, capsys, *common, "--out", tmp_path / "parts", "--steps", "2")
    second = _run(finetune_folder, capsys, *common, "--out", tmp_path / "parts", "--steps", "4", "--resume")
    logs = [[json.loads(line) for line in lines if line.startswith("{")] for lines in (whole, first, second)]
    assert logs[0] == logs[1] + logs[2]
    assert {"val_loss", "val_exact_match", "val_cider"} <= set(logs[0][-1]) and [r["step"] for r in logs[0]] == [1, 2, 2, 3, 4, 4]
    a = PaliModel.from_pretrained(tmp_path / "whole" / "final").state_dict()
    b = PaliModel.from_pretrained(tmp_path / "parts" / "final").state_dict()
    start = PaliModel.from_pretrained("pali-demo").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], start[k]) for k in a)
    assert "- based on: `pali-demo`" in (tmp_path / "parts" / "final" / "README.md").read_text()


def test_finetune_resume_without_a_saved_run_is_one_line(tmp_path):
    data = folder_data(tmp_path / "data", n=2)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "finetune_folder.py"), "--model", "pali-demo", "--data", str(data),
         "--out", str(tmp_path / "run"), "--resume"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"finetune_folder.py: error: --resume: {tmp_path / 'run' / 'resume'} holds no saved run "
        "(one is written at every --save-every step and at the end)"]


@pytest.mark.parametrize("script, argv, message", [
    ("finetune_folder.py", ["--model", "pali-demo", "--data", "my_data", "--out", "run"], "my_data/data.jsonl: not found"),
    ("inference.py", ["missing.png"], "missing.png: no such image file"),
])
def test_examples_print_a_users_mistake_in_one_line(tmp_path, script, argv, message):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and message in lines[0]


def test_finetune_folder_rejects_bad_data(tmp_path):
    import finetune_folder
    from PIL import Image

    from pali import InputError

    (tmp_path / "data.jsonl").write_text('{"image": "nope.png", "prompt": "p", "target": "t"}\n')
    with pytest.raises(InputError, match="nope.png not found"):
        finetune_folder.load_pairs(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="data.jsonl:1: missing the caption target: no target field"):
        finetune_folder.load_pairs(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    for line, message in [('{"image": "x.png", "target": "t"', "data.jsonl:2: not a JSON line"),
                          ('{"image": "../x.png", "target": "t"}', "data.jsonl:2: '../x.png' escapes"),
                          ('{"target": "t"}', "data.jsonl:2: no 'image' column")]:
        (tmp_path / "data.jsonl").write_text('{"image": "x.png", "target": "a"}\n' + line + "\n")
        with pytest.raises(InputError, match=message):
            finetune_folder.load_pairs(tmp_path)
    (tmp_path / "data.jsonl").write_text("\n")
    with pytest.raises(InputError, match="data.jsonl: a manifest with no row in it"):
        finetune_folder.load_pairs(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"image": "x.png", "target": "a"}\n{"image": "x.png", "target": "b"}\n')
    pairs = finetune_folder.load_pairs(tmp_path)  # several captions of one image: several pairs
    assert [pairs[i]["target"] for i in range(len(pairs))] == ["a", "b"]


def test_readme_quotes_the_model_card():
    """The README's accuracy figures for the bundled model are its evaluation.json's, and meet the
    demo's targets (captions 98%, VQA 95%, detection IoU 0.7, OCR 80%)."""
    import re

    results = json.loads((bundled.resolve("pali-demo") / "evaluation.json").read_text())["results"]
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"captions right ([\d.]+)% of the time .*?VQA answers ([\d.]+)%,\s+detection boxes at a mean "
                      r"IoU of ([\d.]+) \((\d+)% at IoU ≥ 0.5\) and OCR (\d+)%", readme, re.S)
    assert found, "README's demo paragraph changed shape"
    caption, vqa, iou, hit, ocr = (float(v) for v in found.groups())
    assert (caption, vqa, iou, hit, ocr) == (round(100 * results["caption"], 1), round(100 * results["vqa"], 1),
                                             round(results["detect_iou"], 2), round(100 * results["detect_hit@0.5"]),
                                             round(100 * results["ocr"]))
    assert results["caption"] >= 0.98 and results["vqa"] >= 0.95 and results["detect_iou"] >= 0.7 and results["ocr"] >= 0.8


@pytest.mark.slow
def test_demo_model_meets_its_model_card():
    """Re-evaluate the bundled model on a held-out sample; allow sampling noise below the card."""
    import train_synthetic

    folder = bundled.resolve("pali-demo")
    card = json.loads((folder / "evaluation.json").read_text())
    model, processor = PaliModel.from_pretrained("pali-demo"), PaliProcessor.from_pretrained("pali-demo")
    results = train_synthetic.evaluate(model, processor, seed=card["training"]["eval_seed"] + 1, per_cell=30)
    for key in ("caption", "vqa", "detect_iou", "detect_hit@0.5", "ocr"):
        assert results[key] >= card["results"][key] - 0.15, (key, results[key], card["results"][key])


def test_finetune_validation_cider_is_pali_eval_captions():
    """The example's validation CIDEr is the one ``pali eval captions`` reports (x100), each
    target the single reference of its pair."""
    import finetune_folder

    import pali.eval

    predictions, targets = ["a red square", "two blue circles", "a cat"], ["a red square", "blue circles", "a dog"]
    scores = finetune_folder.validation_score(predictions, targets)
    expected = pali.eval.caption_metrics(dict(enumerate(predictions)), {i: [t] for i, t in enumerate(targets)})
    assert scores["exact_match"] == 1 / 3 and scores["cider"] == 100 * expected["CIDEr"]
