"""Batch inference: ``pali.run`` and ``pali run`` give the one-image pipeline's answers for every
input, an error row for each unreadable one, and files that survive a kill and resume to the same bytes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import pali
from pali import PaliModel, PaliProcessor
from pali.bundled import SAMPLES
from pali.cli import main
from pali.data import ResultsFile, read_rows

SRC = Path(pali.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    model = PaliModel.from_pretrained("pali-demo").eval()
    return model, PaliProcessor.from_pretrained("pali-demo")


@pytest.fixture
def photos(tmp_path):
    """The bundled samples (as PNG and a large JPEG) plus two unreadable files."""
    root = tmp_path / "photos"
    root.mkdir()
    for path in sorted(Path(SAMPLES).glob("*.png")):
        Image.open(path).convert("RGB").save(root / path.name)
    Image.open(root / "shapes2.png").resize((640, 640)).save(root / "big.jpg", quality=95)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    data = (root / "big.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return root


def _images(folder: Path) -> dict[str, Image.Image]:
    good = {}
    for p in sorted(folder.iterdir()):
        try:
            good[p.name] = Image.open(p).convert("RGB")
        except OSError:
            pass
    return good


def test_every_input_gets_one_row_with_the_pipelines_answer(demo, photos):
    model, processor = demo
    rows = list(pali.run(model, processor, "caption", photos, batch_size=3, model_name="demo"))
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in photos.iterdir())
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"corrupt.png", "truncated.jpg"}
    assert "not a readable image" in errors["truncated.jpg"]
    pipe = pali.pipeline(model, processor)
    for row in rows:
        assert row["model"] == "demo" and row["task"] == "caption" and row["options"]["lang"] == "en"
    answers = {r["id"]: r["answer"] for r in rows if "error" not in r}
    images = {k: v for k, v in _images(photos).items() if k != "big.jpg"}  # big.jpg: decoded reduced
    assert answers.items() >= {k: pipe.caption(v).text for k, v in images.items()}.items()


def test_ids_past_the_tokenizer_are_suppressed_as_the_pipeline_suppresses_them(demo, photos):
    """A table padded past the tokenizer (Flan-T5's 32128 rows for 32100 pieces; BLIP-2's <image>):
    pali.run, like pipeline.caption, never generates a padding row's id."""
    from dataclasses import replace

    import torch

    model, processor = demo
    pipe = pali.pipeline(model, processor)
    image = Image.open(photos / "shapes2.png").convert("RGB")
    batch = processor(images=image, text=pipe.prompts.caption_prompt())
    first = int(model.generate(**batch, max_new_tokens=1)[0, 0])
    extra = 4
    text = replace(model.config.text, vocab_size=model.config.text.vocab_size + extra)
    padded = PaliModel(replace(model.config, text=text))
    state = model.state_dict()
    head, embed = state["text.lm_head.weight"], state["text.embed.weight"]
    state["text.lm_head.weight"] = torch.cat([head, 2 * head[first].repeat(extra, 1)])  # they outscore its first word
    state["text.embed.weight"] = torch.cat([embed, embed[:extra]])
    padded.load_state_dict(state)
    padded.eval()
    assert int(padded.generate(**batch, max_new_tokens=1)[0, 0]) >= processor.tokenizer.vocab_size
    rows = list(pali.run(padded, processor, "caption", photos, batch_size=3))
    answers = {r["id"]: r["answer"] for r in rows if "error" not in r}
    pipe = pali.pipeline(padded, processor)
    images = {k: v for k, v in _images(photos).items() if k != "big.jpg"}  # big.jpg: decoded reduced
    assert answers.items() >= {k: pipe.caption(v).text for k, v in images.items()}.items()
    assert answers["shapes2.png"]


def test_workers_give_the_same_rows_in_the_same_order(demo, photos):
    model, processor = demo
    alone = list(pali.run(model, processor, "ocr", photos, batch_size=2))
    assert list(pali.run(model, processor, "ocr", photos, batch_size=2, workers=2)) == alone


def test_vqa_questions_from_a_manifest_and_the_run(demo, photos):
    model, processor = demo
    lines = [{"image": "shapes1.png", "question": "what colour is the square?", "id": "q1"},
             {"image": "shapes3.png", "id": "q2"}]
    (photos / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = list(pali.run(model, processor, "vqa", photos / "m.jsonl", question="how many shapes?"))
    pipe = pali.pipeline(model, processor)
    by_id = {r["id"]: r for r in rows}
    assert by_id["q1"]["question"] == "what colour is the square?"
    assert by_id["q1"]["answer"] == pipe.answer(Image.open(photos / "shapes1.png"), "what colour is the square?").text
    assert by_id["q2"]["answer"] == pipe.answer(Image.open(photos / "shapes3.png"), "how many shapes?").text
    rows = list(pali.run(model, processor, "vqa", photos / "m.jsonl"))
    assert "no question" in {r["id"]: r for r in rows}["q2"]["error"]


def test_detect_and_classify_match_the_pipeline(demo, photos):
    model, processor = demo
    pipe = pali.pipeline(model, processor)
    image = Image.open(photos / "shapes3.png").convert("RGB")
    (row,) = pali.run(model, processor, "detect", [str(photos / "shapes3.png")], labels="circle")
    expected = pipe.detect(image, "circle")
    assert row["boxes"] == [[round(v, 2) for v in d.box] for d in expected] and row["labels"] == [d.label for d in expected]
    (row,) = pali.run(model, processor, "classify", [str(photos / "shapes3.png")], labels=["circle", "square", "word"])
    ranked = pipe.classify(image, ["circle", "square", "word"])
    assert row["labels"] == [c.label for c in ranked] and row["answer"] == ranked[0].label
    assert row["scores"] == pytest.approx([c.score for c in ranked], abs=1e-4)


def test_a_large_jpegs_boxes_are_in_its_own_pixels(demo, photos):
    model, processor = demo
    (row,) = pali.run(model, processor, "detect", [str(photos / "big.jpg")], labels="triangle")
    assert row["boxes"], row
    assert max(max(b) for b in row["boxes"]) > 64  # 640 px image: boxes are not in the 64 px decoded scale


def test_rows_without_labels_are_error_rows(demo, photos):
    model, processor = demo
    rows = list(pali.run(model, processor, "classify", [str(photos / "shapes1.png")]))
    assert "no labels" in rows[0]["error"]


# -- the command -----------------------------------------------------------------------------------


def _cli(*args) -> int:
    return main(["run", *map(str, args), "--quiet", "--workers", "0", "--threads", "1"])


def test_the_command_writes_rows_and_says_how_many_failed(photos, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _cli("caption", photos, "--out", out, "--batch-size", "4") == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"{len(list(photos.iterdir()))} results in {out}: 2 failed (see their error field)"
    rows = read_rows(out)
    assert len(rows) == len(list(photos.iterdir())) and len({r["id"] for r in rows}) == len(rows)
    assert _cli("caption", photos / "shapes1.png", "--out", tmp_path / "one.jsonl") == 0


def test_an_existing_output_needs_resume_or_force(photos, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    assert _cli("ocr", photos / "shapes1.png", "--out", out) == 2
    assert "exists: --resume to finish it, or --force" in capsys.readouterr().err
    assert out.read_text() == "precious\n"
    assert _cli("ocr", photos / "shapes1.png", "--out", out, "--resume") == 2
    assert "not a pali results line" in capsys.readouterr().err
    assert _cli("ocr", photos / "shapes1.png", "--out", out, "--force") == 0
    assert [r["id"] for r in read_rows(out)] == [str(photos / "shapes1.png")]
    assert _cli("ocr", photos / "shapes1.png", "--out", out, "--resume", "--lang", "fr") == 2
    assert "was made by" in capsys.readouterr().err


def test_bad_input_is_one_line_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"img": "a.png"}\n')
    assert _cli("caption", tmp_path / "m.jsonl", "--out", tmp_path / "r.jsonl") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pali run: error:") and "no 'image' column" in err and "\n" not in err
    assert not (tmp_path / "r.jsonl").exists()


def test_parquet_output(photos, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _cli("caption", photos, "--out", tmp_path / "r.jsonl")
    assert _cli("caption", photos, "--out", tmp_path / "r.parquet") == 1
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    expected = read_rows(tmp_path / "r.jsonl")
    assert [(r["id"], r["answer"], r["error"]) for r in table] == [
        (r["id"], r.get("answer"), r.get("error")) for r in expected]
    assert json.loads(table[0]["options"]) == expected[0]["options"]
    assert not list(tmp_path.glob("*.partial.jsonl"))
    assert _cli("caption", photos, "--out", tmp_path / "r.parquet", "--resume") == 2  # nothing left to resume


def test_a_torn_last_line_is_dropped_on_resume(photos, tmp_path):
    out = tmp_path / "r.jsonl"
    _cli("caption", photos, "--out", out, "--batch-size", "2")
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:20])  # a crash in the middle of a line
    _cli("caption", photos, "--out", out, "--batch-size", "2", "--resume")
    assert out.read_bytes() == whole


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_killed_run_resumes_to_the_same_file(photos, tmp_path, suffix):
    """A run killed (SIGKILL, no cleanup) at a random point, then resumed, writes the bytes an
    uninterrupted run writes."""
    for i in range(12):  # enough batches to be killed among
        Image.open(photos / "shapes1.png").rotate(30 * i).save(photos / f"rot{i:02d}.png")
    whole, cut = tmp_path / f"whole{suffix}", tmp_path / f"cut{suffix}"
    command = [sys.executable, "-m", "pali", "run", "caption", str(photos), "--batch-size", "2", "--workers", "1",
               "--quiet", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([*command, "--out", str(whole)], env=env, check=False, capture_output=True)
    rows = cut.with_name(cut.name + ".partial.jsonl") if suffix == ".parquet" else cut
    child = subprocess.Popen([*command, "--out", str(cut)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop_after = random.Random().randint(1, 14)
    while child.poll() is None and (not rows.exists() or rows.read_bytes().count(b"\n") < stop_after):
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = rows.read_bytes().count(b"\n") if rows.exists() else 0
    run = subprocess.run([*command, "--out", str(cut), "--resume"], env=env, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr  # the two unreadable images
    assert cut.read_bytes() == whole.read_bytes(), f"killed after {done} rows"


@pytest.mark.slow
def test_the_benchmark_runs_quick():
    """benchmarks/batch_inference.py --quick: every engine's answers equal the loop's (it exits 1 otherwise)."""
    script = SRC.parent / "benchmarks" / "batch_inference.py"
    run = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("pali.run,") == 6 and "ANSWERS DIFFER" not in run.stdout
    assert 'transformers pipeline("image-text-to-text")' in run.stdout and "tokens 100.0%" in run.stdout


def test_help_answers_without_importing_torch():
    code = ("import sys\nfrom pali.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules, 'torch imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert run.returncode == 0, run.stderr
    assert "--resume" in run.stdout and "--engine" in run.stdout


def test_ctrl_c_leaves_a_resumable_file(photos, tmp_path, monkeypatch, capsys):
    import pali.data.results as results

    out = tmp_path / "r.jsonl"
    _cli("caption", photos, "--out", out, "--batch-size", "2")
    whole = out.read_bytes()
    out.unlink()
    write = results.ResultsFile.write
    calls = []

    def interrupt_on_the_third_batch(self, rows):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(self, rows)

    monkeypatch.setattr(results.ResultsFile, "write", interrupt_on_the_third_batch)
    assert _cli("caption", photos, "--out", out, "--batch-size", "2") == 130
    assert "interrupted with 4 results" in capsys.readouterr().err
    monkeypatch.setattr(results.ResultsFile, "write", write)
    _cli("caption", photos, "--out", out, "--batch-size", "2", "--resume")
    assert out.read_bytes() == whole


def test_a_task_the_prompt_set_cannot_word_fails_once(demo, photos):
    from pali.processing.processor import PaliProcessor, ProcessorConfig

    model, processor = demo
    blip2 = PaliProcessor(processor.tokenizer, ProcessorConfig(**{**processor.config.to_dict(), "prompt_set": "blip2"}))
    with pytest.raises(pali.InputError, match="blip2"):
        list(pali.run(model, blip2, "ocr", photos))


def test_shards_and_datasets_give_the_folders_answers(demo, photos, tmp_path):
    """The same images as a webdataset shard and a save_to_disk dataset: the same answers per id."""
    datasets = pytest.importorskip("datasets")
    import webdataset as wds

    model, processor = demo
    names = ["shapes1.png", "shapes2.png", "word1.png"]
    folder = {r["id"]: r["answer"] for r in pali.run(model, processor, "caption", [str(photos / n) for n in names])}
    with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
        for n in names:
            sink.write({"__key__": n.split(".")[0], "png": (photos / n).read_bytes()})
    data = datasets.Dataset.from_dict({"image": [str(photos / n) for n in names], "id": names},
                                      features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("string")}))
    data.save_to_disk(str(tmp_path / "ds"))
    expected = {n: folder[str(photos / n)] for n in names}
    shard = {r["id"] + ".png": r["answer"] for r in pali.run(model, processor, "caption", tmp_path / "s.tar", workers=2)}
    hf = {r["id"]: r["answer"] for r in pali.run(model, processor, "caption", tmp_path / "ds", workers=2)}
    assert shard == expected and hf == expected


def test_bf16_is_recorded_and_not_mixed_with_fp32_rows(photos, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert _cli("ocr", photos / "shapes1.png", "--out", out, "--dtype", "bf16") == 0
    assert read_rows(out)[0]["options"]["dtype"] == "bfloat16" and "answer" in read_rows(out)[0]
    assert _cli("ocr", photos / "shapes1.png", "--out", out, "--resume") == 2
    assert "was made by" in capsys.readouterr().err


def test_quantized_weights_are_recorded_and_packed_fp32_keeps_the_answers(photos, tmp_path, capsys):
    """``--quantize fp32`` packs the same weights (the same answers, recorded as such); int8 runs
    and is recorded, so a resume without it is refused; it refuses a half-precision or GPU model."""
    names = [photos / "shapes1.png", photos / "word1.png"]
    plain, packed, int8 = (tmp_path / f"{n}.jsonl" for n in ("plain", "packed", "int8"))
    assert _cli("caption", *names, "--out", plain) == 0
    assert _cli("caption", *names, "--out", packed, "--quantize", "fp32") == 0
    assert [r["answer"] for r in read_rows(packed)] == [r["answer"] for r in read_rows(plain)]
    assert read_rows(packed)[0]["options"]["weights"] == "fp32" and "weights" not in read_rows(plain)[0]["options"]
    assert _cli("caption", *names, "--out", int8, "--quantize", "int8") == 0
    assert all("answer" in r and r["options"]["weights"] == "int8" for r in read_rows(int8))
    assert _cli("caption", *names, "--out", int8, "--resume") == 2
    assert "was made by" in capsys.readouterr().err
    assert _cli("caption", *names, "--out", tmp_path / "x.jsonl", "--quantize", "int8", "--dtype", "bf16") == 2
    assert "--quantize int8 converts an fp32 model's weights for the CPU" in capsys.readouterr().err
