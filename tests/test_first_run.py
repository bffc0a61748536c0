"""What a new user meets in the first minutes: startup cost, mistyped names, defaults that agree,
large or odd inputs, and the CLI's small edges (issue 15)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import pali
from pali import bundled
from pali.cli import main
from pali.errors import CheckpointError, InputError
from pali.config.registry import PRESETS, TEXT_STACKS, VISION_ENCODERS

SCENE = bundled.SAMPLES / "shapes1.png"  # one green square


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["caption"], ["caption", "x.png", "--threads", "0"]])
def test_cli_help_version_and_argument_errors_import_no_torch(argv):
    code = f"from pali.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert "torch" not in _modules_after(code)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pali {pali.__version__}"


def test_load_path_does_not_import_dynamo():
    loaded = _modules_after("import pali\npali.PaliModel.from_pretrained('pali-demo')")
    assert "torch" in loaded and "torch._dynamo" not in loaded


@pytest.mark.parametrize("name", PRESETS.names())
def test_parameter_counts_from_configs_equal_the_built_model(name):
    config, family = pali.get_config(name), PRESETS.get(name).family
    with torch.device("meta"):
        if family == "pali":
            module = pali.PaliModel(config)
        else:
            module = (VISION_ENCODERS if family == "vision" else TEXT_STACKS).get(config.kind)(config)
    assert config.num_parameters() == sum(p.numel() for p in module.parameters())


def test_presets_builds_nothing(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pali presets built a model")

    monkeypatch.setattr(pali.PaliModel, "__init__", refuse)
    assert main(["presets"]) == 0 and "pali-17b" in capsys.readouterr().out


@pytest.fixture
def hub_down(monkeypatch):
    """A Hub endpoint on a closed loopback port: every connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from huggingface_hub import constants

    url = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sleeps = []
    monkeypatch.setattr("time.sleep", sleeps.append)  # a retry would back off: count instead of waiting
    return sleeps


@pytest.mark.parametrize("load", [pali.PaliModel.from_pretrained, pali.PaliProcessor.from_pretrained])
def test_mistyped_name_fails_at_once_saying_what_it_is_not(hub_down, load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        load("pali-dem")
    message = str(e.value)
    assert "cannot reach the Hub" in message and "not a bundled model" in message
    assert "did you mean 'pali-demo'" in message and "local folder" in message
    assert hub_down == []  # one attempt, no backoff


@pytest.mark.parametrize("load", [pali.PaliModel.from_pretrained, pali.PaliProcessor.from_pretrained])
def test_a_preset_name_points_to_from_preset(hub_down, load):
    with pytest.raises(CheckpointError, match=r"'pali-tiny' is a preset.*PaliModel.from_preset\('pali-tiny'\)"):
        load("pali-tiny")


def test_cli_mistyped_model(hub_down, capsys):
    assert main(["caption", str(SCENE), "--model", "pali-dem"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'pali-demo'" in err and "Traceback" not in err and hub_down == []


@pytest.fixture(scope="module")
def pipe():
    return pali.pipeline(pali.PaliModel.from_pretrained("pali-demo"), pali.PaliProcessor.from_pretrained("pali-demo"))


def test_classify_uses_the_models_template(pipe):
    ranked = pipe.classify(Image.open(SCENE), ["dog", "cat", "green square"])
    assert ranked[0].label == "green square"
    assert pipe.processor.config.classify_template == "a {label}"


def test_old_processor_configs_keep_the_old_defaults(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    data = json.loads((bundled.HERE / "pali-demo" / "processor_config.json").read_text())
    for key in ("classify_template", "languages"):
        data.pop(key)
    (folder / "processor_config.json").write_text(json.dumps(data))
    (folder / "spiece.model").write_bytes((bundled.HERE / "pali-demo" / "spiece.model").read_bytes())
    config = pali.PaliProcessor.from_pretrained(folder).config
    assert config.classify_template == "{label}" and config.languages == []
    with pytest.raises(pali.ConfigError, match="classify_template"):
        pali.ProcessorConfig(classify_template="no placeholder")


def test_huge_image_is_a_named_error_and_rc_2(tmp_path, monkeypatch, capsys):
    path = tmp_path / "huge.png"
    Image.new("RGB", (200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200 x 200 is then over twice the limit
    assert main(["caption", str(path)]) == 2
    err = capsys.readouterr().err
    assert "huge.png: too large to decode safely" in err and "Traceback" not in err


def test_large_images_are_reduced_before_the_float_conversion(tmp_path, monkeypatch):
    from pali import image_processing

    path = tmp_path / "large.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8)).resize((2400, 2000)).save(path)
    image = Image.open(path)
    seen = []
    convert = image_processing.to_rgb_tensor
    monkeypatch.setattr(image_processing, "to_rgb_tensor", lambda im, index=0: seen.append(im.size) or convert(im, index=index))
    processor = image_processing.ImageProcessor(64)
    reduced = processor(image)
    assert len(seen) == 1 and all(128 <= side < 256 for side in seen[0])  # never the full 2400 x 2000
    monkeypatch.setattr(image_processing, "to_rgb_tensor", convert)
    exact = torch.nn.functional.interpolate(convert(image)[None], size=(64, 64), mode="bilinear", antialias=True)[0] * 2 - 1
    error = (reduced[0] - exact).abs()  # pixel noise, the worst case for a box filter: still the same picture
    assert error.mean() < 0.02 and error.max() < 0.15
    assert processor.original_sizes(image) == [(2000, 2400)]


def test_truncated_prompts_warn_or_raise(pipe):
    processor = pipe.processor
    question = " ".join(["word"] * 600)
    with pytest.warns(UserWarning, match=r"text 0 has \d+ tokens > max_length 32: truncated"):
        batch = processor(text=question)
    assert batch["input_ids"].shape[1] == 32 and batch["input_ids"][0, -1] == processor.tokenizer.eos_id
    with pytest.raises(InputError, match="truncation=False"):
        processor(text=question, truncation=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text=question, truncation=True)  # asked for: silent
        processor(text="short")


def test_cli_warns_about_truncation(capsys):
    assert main(["vqa", str(SCENE), " ".join(["how many shapes"] * 100)]) == 0
    assert "pali vqa: warning: text 0 has" in capsys.readouterr().err


def test_a_chw_tensor_names_the_missing_batch_dimension():
    model = pali.PaliModel.from_preset("pali-tiny")
    size = model.config.vision.image_size
    with pytest.raises(InputError, match=r"pixel_values has shape \[3, .*batch dimension is missing"):
        model.generate(torch.zeros(3, size, size), torch.tensor([[5, 1]]), max_new_tokens=2)


def test_threads_option(capsys, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    assert main(["caption", str(SCENE), "--threads", "3"]) == 0
    assert threads == [3]
    threads.clear()
    assert main(["caption", str(SCENE)]) == 0
    assert threads == [1]  # the bundled model is small


def test_draw_into_a_missing_folder_fails_before_inference(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pali.cli.common.load_pipeline", lambda args: pytest.fail("loaded the model"))
    assert main(["detect", str(SCENE), "circle", "--draw", str(tmp_path / "no" / "x.png")]) == 2
    assert f"folder {tmp_path / 'no'} does not exist" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "no" / "demo.png")]) == 2


def test_classify_help_has_no_max_new_tokens(capsys):
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    out = capsys.readouterr().out
    assert "--max-new-tokens" not in out and "--threads" in out


def test_boxes_print_rounded():
    det = pali.tasks.heads.Detection((12.345678901234, 3.0, 40.987654321, 50.5), "circle")
    assert repr(det) == "Detection(box=(12.3, 3.0, 41.0, 50.5), label='circle')"


def test_read_only_numpy_images_give_no_warning(pipe):
    array = np.asarray(Image.open(SCENE).convert("RGB"))
    assert not array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.processor(images=array, text="caption en")


def test_unlearned_languages_warn(pipe, capsys):
    image = Image.open(SCENE)
    with pytest.warns(UserWarning, match=r"language 'es' is not one this model learned \(en, fr, de, zh, hi\)"):
        pipe.caption(image, lang="es")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.caption(image, lang="fr")
    assert main(["caption", str(SCENE), "--lang", "ja"]) == 0
    assert "warning: language 'ja'" in capsys.readouterr().err


def test_demo_png_is_ignored_by_git():
    from pathlib import Path

    ignore = Path(__file__).resolve().parents[1] / ".gitignore"
    assert "pali-demo.png" in ignore.read_text().split()
