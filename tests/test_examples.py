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
         "--batch-size", "16", "--warmup", "5", "--eval-size", "2", "--log-every", "1", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True,
    )
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["vision"] * 5 + ["pali"] * 40
    losses = [r["loss"] for r in log if r["stage"] == "pali"]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["training"]["steps"] == 40 and evaluation["training"]["vision_steps"] == 5
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


@pytest.mark.slow
def test_finetune_folder(tmp_path):
    import random

    import synthetic

    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    lines = []
    for i in range(6):
        example = synthetic.make_example(rng, "caption", "en")
        example.image.save(data / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "prompt": "Generate the alt_text in en at 0: <extra_id_0>",
                                 "target": example.target}))
    (data / "data.jsonl").write_text("\n".join(lines) + "\n")
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


def test_finetune_folder_rejects_bad_data(tmp_path):
    import finetune_folder

    from pali import InputError

    (tmp_path / "data.jsonl").write_text('{"image": "nope.png", "prompt": "p", "target": "t"}\n')
    with pytest.raises(InputError, match="nope.png not found"):
        finetune_folder.load_pairs(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="missing"):
        finetune_folder.load_pairs(tmp_path)


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
