"""What a new user still tripped over in the first hour, second pass (issue 25): running from the
checkout root, module paths the docs and messages name, messages of the CLI, drawn detections,
padded vocabularies, fine-tuned model cards."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pali import bundled
from pali.config.registry import CONNECTORS, HEADS, TEXT_STACKS, VISION_ENCODERS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCENE = bundled.SAMPLES / "shapes1.png"  # one green square


def _fresh_python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -c code`` as a user runs it: from ``cwd``, this checkout's ``src`` on the path, no
    safe-path flag (so the current folder, the repository root, comes first on ``sys.path``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    env["PYTHONPATH"] = str(SRC)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


# 2. Running from the checkout root ------------------------------------------------------------


@pytest.mark.slow  # transformers' import alone takes seconds
def test_pali_and_transformers_import_from_the_checkout_root():
    """The repository's top-level ``kernels/`` must not shadow Hugging Face's ``kernels`` package,
    which transformers imports ("cannot import name 'CUDAProperties' from 'kernels'")."""
    pytest.importorskip("transformers")
    run = _fresh_python("import pali; from transformers import Blip2ForConditionalGeneration; print('ok')")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# 5. Every module path the docs, the README and pali's messages name is an attribute ----------------

NAME = re.compile(r"(?<![\w./-])pali(?:\.[A-Za-z_]\w*)+")
ENTRY_POINT_GROUPS = {r.entry_point_group for r in (HEADS, VISION_ENCODERS, TEXT_STACKS, CONNECTORS)}
# Names spelt like module paths that are not: safetensors metadata keys written by conversion.
METADATA_KEYS = {"pali.tower", "pali.dtype", "pali.source_format", "pali.subtree"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def named_paths() -> dict[str, str]:
    """``pali.x.y`` names in README.md, docs/*.md and the strings of pali's code (its messages;
    docstrings aside, and ``_moved``'s table of old names), each with where it was seen first."""
    found: dict[str, str] = {}
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in NAME.finditer(page.read_text()):
            found.setdefault(match.group(0), page.name)
    for path in sorted((SRC / "pali").rglob("*.py")):
        if path.name == "_moved.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for match in NAME.finditer(node.value):
                    found.setdefault(match.group(0), str(path.relative_to(ROOT)))
    return {name: where for name, where in found.items() if name not in ENTRY_POINT_GROUPS | METADATA_KEYS}


def test_the_scan_finds_the_names_users_met():
    names = named_paths()
    assert {"pali.processing.prompts.LANGUAGES", "pali.cli.common.save_image", "pali.train.helpers"} <= set(names)


def test_every_named_module_path_is_an_attribute_after_import_pali():
    """In a fresh interpreter, as a user's ``import pali`` then ``pali.prompts.LANGUAGES``: each
    name is reached attribute by attribute, and the bare import still costs no torch."""
    names = named_paths() | {"pali.prompts.LANGUAGES": "issue 25 (the old path users typed)"}
    code = (
        "import sys, pali\n"
        "assert 'torch' not in sys.modules, 'import pali imported torch'\n"
        "for name in sys.argv[1:]:\n"
        "    obj = pali\n"
        "    for part in name.split('.')[1:]:\n"
        "        try:\n"
        "            obj = getattr(obj, part)\n"
        "        except Exception as e:\n"
        "            print(name, type(e).__name__, e)\n"
        "            break\n"
    )
    run = _fresh_python(code, *sorted(names))
    assert run.returncode == 0, run.stderr[-2000:]
    missing = [f"{line}  (named in {names[line.split()[0]]})" for line in run.stdout.splitlines()]
    assert not missing, "\n".join(missing)


def test_entry_point_groups_in_the_docs_are_the_registries_groups():
    """A plugin declared under the group the docs name must be found (the layout rename once
    turned ``pali.heads`` into ``pali.tasks.heads`` in the docs, not in the code)."""
    pages = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "tests" / "test_plugins.py"])
    declared = set(re.findall(r'\[project\.entry-points\."([^"]+)"\]', pages))
    table = dict(re.findall(r"\| `pali\.config\.registry\.(\w+)` \| `([\w.]+)` \|", (ROOT / "docs" / "plugins.md").read_text()))
    registries = {"HEADS": HEADS, "VISION_ENCODERS": VISION_ENCODERS, "TEXT_STACKS": TEXT_STACKS, "CONNECTORS": CONNECTORS}
    assert declared and declared <= ENTRY_POINT_GROUPS
    assert table == {name: r.entry_point_group for name, r in registries.items()}


# 7. Messages that say what is wrong and where ------------------------------------------------


def test_caption_on_a_folder_says_it_is_a_folder_and_points_to_pali_run(tmp_path, capsys):
    from pali.cli import main

    assert main(["caption", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pali caption: error:") and "is a folder" in err and "pali run" in err
    assert "no such image file" not in err and len(err.splitlines()) == 1


def test_an_empty_model_folder_is_named(tmp_path, capsys):
    from pali.cli import main

    folder = tmp_path / "adir"
    folder.mkdir()
    assert main(["caption", str(SCENE), "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(folder) in err and "empty" in err and len(err.splitlines()) == 1
    (folder / "notes.txt").write_text("not a checkpoint")
    assert main(["caption", str(SCENE), "--model", str(folder)]) == 2
    assert f"{folder}: no config.json" in capsys.readouterr().err


def test_threads_above_the_core_count_warn_once(capsys, monkeypatch):
    import torch

    from pali.cli import main

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the test process keeps its threads
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(["caption", str(SCENE), "--threads", "1000"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warned) == 1 and "--threads 1000" in warned[0] and "2 CPU cores" in warned[0]
    assert main(["caption", str(SCENE), "--threads", "2"]) == 0
    assert "warning:" not in capsys.readouterr().err


# 4. pali detect --draw ------------------------------------------------------------------------


@pytest.fixture
def fixed_box(monkeypatch):
    """``Pipeline.detect`` answering one box over the middle half of whatever image it is given
    (in that image's pixels, as the real head does): the drawing alone is under test."""
    from pali.tasks.heads.detect import Detection
    from pali.tasks.pipeline import Pipeline

    def detect(self, image, label, **kwargs):
        w, h = image.size
        return [Detection(box=(w / 4, h / 4, 3 * w / 4, 3 * h / 4), label=label)]

    monkeypatch.setattr(Pipeline, "detect", detect)


def _lightness_along_the_left_edge(picture):
    """Grey levels on a horizontal line through the left edge of the middle-half box."""
    grey = picture.convert("L")
    w, h = grey.size
    x = w // 4
    return [grey.getpixel((xx, h // 2)) for xx in range(max(0, x - 12), min(w, x + 12))]


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0)])
@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_drawn_boxes_show_on_white_and_black_at_the_inputs_size(tmp_path, capsys, fixed_box, background, suffix, fmt):
    from pali.cli import main

    source = tmp_path / "in.png"
    Image.new("RGB", (300, 200), background).save(source)
    out = tmp_path / f"boxes{suffix}"
    assert main(["detect", str(source), "thing", "--draw", str(out)]) == 0
    with Image.open(out) as drawn:
        assert drawn.format == fmt and drawn.size == (300, 200)
        line = _lightness_along_the_left_edge(drawn)
    assert min(line) < 60 and max(line) > 195  # a dark and a light stroke: seen on either background


def test_a_large_jpeg_is_drawn_at_its_own_size_and_scale_asks_for_another(tmp_path, capsys, fixed_box):
    from pali.cli import main

    source = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 900), (255, 255, 255)).save(source)  # decoded smaller for the 64-pixel model
    out = tmp_path / "boxes.png"
    assert main(["detect", str(source), "thing", "--draw", str(out)]) == 0
    with Image.open(out) as drawn:
        assert drawn.size == (1200, 900)
        assert min(_lightness_along_the_left_edge(drawn)) < 60  # the box where it belongs, at full size
    assert main(["detect", str(source), "thing", "--draw", str(out), "--draw-scale", "0.5"]) == 0
    with Image.open(out) as drawn:
        assert drawn.size == (600, 450) and min(_lightness_along_the_left_edge(drawn)) < 60


def test_an_unknown_draw_suffix_fails_before_the_model_runs(tmp_path, capsys, monkeypatch):
    from pali.cli import main

    monkeypatch.setattr("pali.cli.common.load_pipeline", lambda args: pytest.fail("loaded the model"))
    assert main(["detect", str(SCENE), "square", "--draw", str(tmp_path / "boxes.xyz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pali detect: error: --draw") and "'.xyz'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "boxes.xyz").exists()


# 1. A padded vocabulary: more embedding rows than tokenizer pieces ------------------------------

PADDED_ROWS, PIECES = 96, 64  # as Flan-T5's 32128 rows for 32100 pieces
ENGLISH = ["a photo of a cat sitting on a red sofa", "a green square above a blue circle",
           "two dogs play in the park", "what colour is the car", "a red triangle beside the tree"]


@pytest.fixture(scope="module")
def padded_blip2(tmp_path_factory):
    """A tiny BLIP-2 saved by transformers whose T5 table has 96 rows for a 64-id tokenizer, the
    tokenizer files beside it, and that tokenizer loaded by transformers (the reference decoder)."""
    transformers = pytest.importorskip("transformers")
    import sentencepiece
    from blip2_reference import IMAGE, hf_blip2

    from pali.testing.spm import train_spm

    folder = tmp_path_factory.mktemp("tiny-blip2-t5")
    spiece = train_spm(folder / "spm", vocab_size=54, corpus=ENGLISH)
    sp_size = sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()
    reference = transformers.T5TokenizerFast.from_pretrained(str(spiece.parent), extra_ids=PIECES - sp_size)
    assert len(reference) == PIECES
    reference.save_pretrained(str(folder))  # tokenizer.json, counting its sentinels (a spiece.model implies 100)
    assert not (folder / "spiece.model").exists()
    hf_blip2("t5", vocab_size=PADDED_ROWS).save_pretrained(str(folder))
    transformers.BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}).to_json_file(folder / "preprocessor_config.json")
    (folder / "processor_config.json").write_text('{"num_query_tokens": 4, "processor_class": "Blip2Processor"}')
    return folder, reference


@pytest.fixture
def generated(monkeypatch):
    """Every id row ``PaliModel.generate`` returns during the test, in order."""
    from pali.models.pali import PaliModel as Architecture

    rows: list[list[int]] = []
    generate = Architecture.generate

    def recording(self, *args, **kwargs):
        ids = generate(self, *args, **kwargs)
        rows.extend(ids.tolist())
        return ids

    monkeypatch.setattr(Architecture, "generate", recording)
    return rows


def test_padded_ids_decode_as_transformers_decodes_them(padded_blip2):
    import pali

    folder, reference = padded_blip2
    processor = pali.PaliProcessor.from_pretrained(folder)
    assert processor.tokenizer.vocab_size == PIECES
    for ids in ([5, 88, 6, 1], [70, 95, 64], [9, 63, 10, 90, 1, 0, 0], [PIECES - 1, PADDED_ROWS - 1]):
        assert processor.decode(ids) == reference.decode(ids, skip_special_tokens=True), ids
    assert processor.batch_decode([[5, 88, 6], [88]]) == reference.batch_decode([[5, 88, 6], [88]], skip_special_tokens=True)


def test_pipeline_on_a_padded_table_suppresses_the_padding_rows_and_decodes(padded_blip2, generated):
    import pali

    folder, reference = padded_blip2
    pipe = pali.pipeline(pali.PaliModel.from_pretrained(folder), pali.PaliProcessor.from_pretrained(folder),
                         max_new_tokens=12)
    image = Image.open(SCENE)
    free = pipe.caption(image, suppress_tokens=())  # the caller's choice wins: padding ids come out
    assert any(i >= PIECES for i in generated[-1]), "the model should reach its padding rows unsuppressed"
    assert free.text == reference.decode(generated[-1], skip_special_tokens=True)
    kept = pipe.caption(image)
    assert all(i < PIECES for i in generated[-1]) and len(generated[-1]) > 1
    assert kept.text == reference.decode(generated[-1], skip_special_tokens=True)


def test_cli_caption_on_a_padded_table(padded_blip2, generated, capsys):
    from pali.cli import main

    folder, reference = padded_blip2
    assert main(["caption", str(SCENE), "--model", str(folder), "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert all(i < PIECES for i in generated[-1])
    assert out == reference.decode(generated[-1], skip_special_tokens=True)


@pytest.mark.parametrize("num_beams, do_sample", [(1, False), (1, True), (3, False)])
def test_suppressed_tokens_are_never_generated(num_beams, do_sample):
    import torch

    from pali import PaliModel
    from pali.errors import InputError

    model = PaliModel.from_preset("pali-tiny").eval()
    pixels = torch.randn(2, 3, model.config.vision.image_size, model.config.vision.image_size)
    prompt = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 0]])
    options = dict(max_new_tokens=6, num_beams=num_beams, do_sample=do_sample,
                   generator=torch.Generator().manual_seed(0)) if do_sample else dict(max_new_tokens=6, num_beams=num_beams)
    free = model.generate(pixels, prompt, **options)
    banned = sorted({int(i) for i in free.flatten()} - {0, 1})
    assert banned
    if do_sample:
        options["generator"] = torch.Generator().manual_seed(0)
    kept = model.generate(pixels, prompt, suppress_tokens=banned, **options)
    assert not set(kept.flatten().tolist()) & set(banned)
    with pytest.raises(InputError, match="suppress_tokens"):
        model.generate(pixels, prompt, suppress_tokens=[10**6], max_new_tokens=2)
    with pytest.raises(InputError, match="suppress_tokens"):
        model.generate(pixels, prompt, suppress_tokens=[-3], max_new_tokens=2)


# 8. A saved model's card names what it is --------------------------------------------------------


def test_a_fine_tuned_copy_names_its_base_its_data_and_the_date(tmp_path):
    from datetime import datetime, timezone

    from pali import PaliModel
    from pali.errors import InputError
    from pali.hub.card import CardInfo

    model = PaliModel.from_pretrained("pali-demo")
    card = (model.save_pretrained(tmp_path / "tuned", card={"dataset": "my_data/data.jsonl"}) / "README.md").read_text()
    assert "\n# pali-demo, fine-tuned on my_data/data.jsonl\n" in card
    assert "- based on: `pali-demo`" in card and "- fine-tuned on: my_data/data.jsonl" in card
    assert f"- saved: {datetime.now(timezone.utc).date().isoformat()}" in card
    assert "\n# pali-demo\n" not in card and "preset: `pali-demo`" not in card and "(not recorded)" not in card
    plain = (model.save_pretrained(tmp_path / "copy") / "README.md").read_text()
    assert "\n# A model based on pali-demo\n" in plain and "| model | pali-demo |" in plain
    titled = model.save_pretrained(tmp_path / "titled", card=CardInfo(title="Shapes, tuned", notes="Two epochs."))
    assert "\n# Shapes, tuned\n" in (titled / "README.md").read_text() and "Two epochs." in (titled / "README.md").read_text()
    reloaded = PaliModel.from_pretrained(tmp_path / "tuned")  # a saved copy's base is the folder it came from
    assert f"- based on: `{(tmp_path / 'tuned').resolve()}`" in (reloaded.save_pretrained(tmp_path / "again") / "README.md").read_text()
    with pytest.raises(InputError, match="card must be"):
        model.save_pretrained(tmp_path / "bad", card={"data": "x"})


def test_a_model_built_from_a_preset_says_it_is_randomly_initialised(tmp_path):
    from pali import PaliModel

    card = (PaliModel.from_preset("pali-tiny").save_pretrained(tmp_path / "m") / "README.md").read_text()
    assert "\n# pali-tiny\n" in card and "random initialisation of `pali-tiny`" in card and "(not recorded)" not in card


# 10. The README ---------------------------------------------------------------------------------


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    assert {"getting-started.md", "api.md", "architecture.md"} <= set(pages)
    assert [p for p in pages if f"(docs/{p})" not in readme] == []


def test_readme_says_how_to_get_the_cpu_torch_and_how_big_the_test_venv_grows():
    readme = (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    assert re.search(r"`\[test\]` extra[^.]*measured [\d.]+ GB \(`du -sh \.venv`", readme)


# 3, 6, 9. Fine-tuning a BLIP-2 family model with the example -----------------------------------


def _finetune_folder():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import finetune_folder
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return finetune_folder


def test_finetuning_a_blip2_model_uses_its_familys_prompt(padded_blip2, tmp_path, capsys, monkeypatch):
    import json

    from pali.errors import InputError

    finetune_folder = _finetune_folder()
    monkeypatch.setattr(finetune_folder, "cpu_flags", lambda: set())
    import shutil

    import transformers

    source, _ = padded_blip2
    folder = tmp_path / "no-sentinels"  # the same model; its tokenizer without T5's sentinels, as the issue's had
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("spm", "tokenizer*", "special_tokens_map.json"))
    transformers.T5TokenizerFast.from_pretrained(str(source / "spm"), extra_ids=0).save_pretrained(str(folder))
    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (56, 56), colour).save(data / f"{i}.png")
    records = [{"image": f"{i}.png", "target": f"a {c} square"} for i, c in enumerate(["red", "green", "blue", "white"])]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "run"
    argv = ["--model", str(folder), "--data", str(data), "--out", str(out), "--steps", "2", "--batch-size", "2",
            "--val-fraction", "0.5", "--max-new-tokens", "4"]
    assert finetune_folder.main(argv) == 0
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in logged] == [1, 2, 2] and 0 <= logged[-1]["val_exact_match"] <= 1
    pairs = finetune_folder.load_pairs(data)
    collator = __import__("pali").data.Collator(__import__("pali").PaliProcessor.from_pretrained(folder))
    assert {collator.prompt(pairs[i]) for i in range(len(pairs))} == {"a photo of"}  # BLIP-2's caption prompt, not PaLI's
    records[1]["prompt"] = "Generate the alt_text in en at 0: <extra_id_0>"
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InputError, match=r"data.jsonl:2: prompt .* does not suit this blip2 model: .*sentinels.*leave \"prompt\" out"):
        finetune_folder.main(argv)
