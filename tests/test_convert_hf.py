"""Hugging Face checkpoint directories -> our towers, and the ``pali convert`` command end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pali.testing.hf_reference import _randomize, hf_mt5, transformers
from pali.testing.checkpoints import read_safetensors
from pali.convert import convert_hf, detect_format, load_config, read_hf
from pali.errors import CheckpointError
from pali.models.pali import shift_right
from pali.models.text.mt5 import MT5
from pali.models.vision.vit import ViT


def _hf_dir(path: Path, model, weights: str = "safetensors", drop=()) -> Path:
    """What the Hub holds: config.json + weights (lm_head kept: real mT5 checkpoints are untied)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(model.config.to_dict()))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in drop}
    if weights == "safetensors":
        save_file(state, str(path / "model.safetensors"))
    else:
        torch.save(state, path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="module")
def mt5():
    return hf_mt5(seed=0)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_mt5_logits_match(mt5, tmp_path, weights):
    src = _hf_dir(tmp_path / "hf", mt5, weights)
    assert detect_format(src) == "hf"
    out = tmp_path / "out"
    convert_hf(src, out, verify=True)
    ours = MT5(load_config(out)).eval()
    ours.load_state_dict(dict(read_safetensors(out)))
    assert not torch.equal(ours.lm_head.weight, ours.embed.weight)  # never tied
    ids = torch.randint(2, 256, (2, 20))
    labels = torch.randint(2, 256, (2, 9))
    with torch.no_grad():
        ref = mt5(input_ids=ids, labels=labels).logits
        logits = ours.decode(shift_right(labels, 0, 0), ours.encode(ours.embed(ids)), None)
    assert (logits - ref).abs().max().item() <= 1e-5


def test_missing_lm_head_of_an_untied_config_is_an_error_not_a_tie(mt5, tmp_path):
    src = _hf_dir(tmp_path / "hf", mt5, drop={"lm_head.weight"})
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match=r"missing tensors \['lm_head.weight'\]"):
        read_hf(src)


@pytest.mark.parametrize(
    "model_cls, fields",
    [
        ("MT5ForConditionalGeneration", dict(feed_forward_proj="gated-gelu")),  # tied in memory by transformers 5
        ("T5ForConditionalGeneration", dict()),  # the original T5: ReLU, tied head, scaled decoder output
    ],
    ids=["mt5-tied", "t5-v1.0"],
)
def test_tied_head_saved_by_transformers_matches_its_reload(model_cls, fields, tmp_path):
    """transformers leaves a tied head out of its files; the embedding is then the head (scaled
    for the original T5), as transformers itself reads the same folder."""
    cls = getattr(transformers, model_cls)
    config_cls = transformers.MT5Config if model_cls.startswith("MT5") else transformers.T5Config
    torch.manual_seed(0)
    model = cls(config_cls(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                           dropout_rate=0.0, **fields)).eval()
    _randomize(model)
    model.save_pretrained(tmp_path / "hf")
    reloaded = cls.from_pretrained(tmp_path / "hf").eval()
    convert_hf(tmp_path / "hf", tmp_path / "out")
    ours = MT5(load_config(tmp_path / "out")).eval()
    ours.load_state_dict(dict(read_safetensors(tmp_path / "out")))
    ids, labels = torch.randint(2, 256, (2, 12)), torch.randint(2, 256, (2, 7))
    with torch.no_grad():
        ref = reloaded(input_ids=ids, decoder_input_ids=shift_right(labels, 0, 0)).logits
        logits = ours.decode(shift_right(labels, 0, 0), ours.encode(ours.embed(ids)), None)
    assert (logits - ref).abs().max().item() <= 1e-5


def _vision(model_cls, config_cls, seed, **fields):
    torch.manual_seed(seed)
    model = model_cls(config_cls(**fields)).eval()
    _randomize(model)
    return model


TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)


def test_hf_vit_matches(tmp_path):
    hf = _vision(transformers.ViTModel, transformers.ViTConfig, 4, **TINY)
    hf.save_pretrained(tmp_path / "vit")
    out = tmp_path / "out"
    conversion = convert_hf(tmp_path / "vit", out)
    assert conversion.config.class_token and conversion.config.act == "gelu" and conversion.config.norm_eps == 1e-12
    ours = ViT(load_config(out)).eval()
    ours.load_state_dict(dict(read_safetensors(out)))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(px) - hf(pixel_values=px).last_hidden_state[:, 1:]).abs().max().item()
    assert diff <= 1e-5


def test_two_tower_siglip_vision_subtree(tmp_path):
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    hf = _vision(transformers.SiglipModel, transformers.SiglipConfig, 5, vision_config=TINY, text_config=text)
    hf.save_pretrained(tmp_path / "siglip")
    conversion = read_hf(tmp_path / "siglip", image_size=48)
    ours = ViT(conversion.config).eval()
    ours.load_state_dict(conversion.state_dict())
    same_res = read_hf(tmp_path / "siglip")
    ours32 = ViT(same_res.config).eval()
    ours32.load_state_dict(same_res.state_dict())
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (ours32(px) - hf.vision_model(pixel_values=px).last_hidden_state).abs().max().item()
        assert ours(torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)
    assert diff <= 1e-5
    with pytest.raises(CheckpointError, match="the other tower"):
        read_hf(tmp_path / "siglip", text_preset="mt5-tiny")


def test_bad_hf_directories(mt5, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type 'llama' is not supported"):
        read_hf(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "mt5"}))
    with pytest.raises(CheckpointError, match="missing or malformed field 'num_layers'"):
        read_hf(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps(mt5.config.to_dict()))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_hf(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_hf(tmp_path / "a")
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        detect_format(tmp_path)


def _pali(*args):
    script = Path(sys.executable).with_name("pali")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True)


def test_cli_end_to_end(mt5, tmp_path, capsys):
    from pali.cli import main

    src = _hf_dir(tmp_path / "hf", mt5)
    out = tmp_path / "out"
    run = _pali("convert", src, out, "--dtype", "bf16", "--verify", "--text-preset", "mt5-tiny", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "verified" in run.stdout
    assert json.loads((out / "config.json").read_text())["kind"] == "mt5"
    assert {t.dtype for _, t in read_safetensors(out)} == {torch.bfloat16}
    # The rest in-process (each subprocess pays torch's import): same argparse and error handling.
    assert main(["convert", "--verify", str(src), str(out)]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["convert", str(src), str(out), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "x"), "--text-preset", "mt5-small", "--quiet"]) == 2
    assert "preset 'mt5-small' expects" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
