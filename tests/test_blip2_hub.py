"""``PaliModel.from_pretrained`` on transformers BLIP-2 / InstructBLIP checkpoints, as the Hub holds them.

Tiny random models in both Hub layouts (safetensors shards written by transformers'
``save_pretrained``; mBLIP's sharded ``pytorch_model-*.bin`` with fp16 text and fp32 vision /
Q-Former tensors), served by the loopback Hub or read from a local folder: parity with
transformers, safetensors read in place (nothing written), the conversion cache of ``.bin``
checkpoints (hit, new commit, local edit, interrupted conversion, announced), dtypes, provenance,
and the named errors.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from blip2_reference import (
    batch, hf_blip2, hf_config_dict, hf_inputs, qformer_batch, write_bin_layout, write_safetensors_layout,
)
from hub_fixtures import hub, offline  # noqa: F401  (fixtures)
from pali import CheckpointError, PaliModel
from pali.hub import cache as hub_cache

ATOL = 1e-4
MODELS = {"blip2-t5": ("t5", False), "blip2-mt5": ("mt5", False), "instructblip": ("t5", True)}
CARD = "---\nlicense: mit\n---\n# tiny BLIP-2\n"


def _fp16_text(model):
    """Round the text model's weights to fp16 values, so mBLIP's fp16 text shards hold them exactly."""
    with torch.no_grad():
        for p in model.language_model.parameters():
            p.copy_(p.half().float())
    return model


def _save_safetensors(model, folder):
    """transformers' own sharded save; config.json as the Hub's Flan-T5 / mT0 repos have it (untied
    head: transformers 5 writes ``tie_word_embeddings: true`` for T5 text configs)."""
    model.save_pretrained(folder, max_shard_size="100KB")
    (folder / "config.json").write_text(json.dumps(hf_config_dict(model)))
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (transformers model, {layout: folder})."""
    root = tmp_path_factory.mktemp("blip2")
    out = {}
    for name, (kind, instruct) in MODELS.items():
        ref = _fp16_text(hf_blip2(kind, instruct=instruct))
        out[name] = ref, {
            "safetensors": _save_safetensors(ref, root / name / "safetensors"),
            "bin": write_bin_layout(ref, root / name / "bin", shards=3),
        }
        (out[name][1]["safetensors"] / "README.md").write_text(CARD)
    return out


def _qformer_kwargs(instruct, n):
    if not instruct:
        return {}, None
    ids, mask = qformer_batch(n)
    return dict(qformer_input_ids=ids, qformer_attention_mask=mask), (ids, mask)


def _check_parity(ours: PaliModel, ref, instruct: bool, num_beams: int = 1) -> None:
    px, ids, mask = batch(3)  # right padding in rows 1 and 2
    kwargs, qformer = _qformer_kwargs(instruct, 3)
    dec = torch.randint(0, 120, (3, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = ref(**hf_inputs(px, ids, mask, qformer), decoder_input_ids=dec).logits
        got = ours(px, ids, mask, decoder_input_ids=dec, **kwargs).logits
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        want = ref.generate(**hf_inputs(px, ids, mask, qformer), max_new_tokens=6, num_beams=num_beams,
                            do_sample=False, eos_token_id=1, decoder_start_token_id=0, pad_token_id=0)[:, 1:]
        tokens = ours.generate(px, ids, mask, max_new_tokens=6, num_beams=num_beams, eos_token_id=1, **kwargs)
    assert torch.equal(tokens, want), (tokens, want)


def _weight_requests(hub, repo):  # noqa: F811
    return [path for _, path in hub.requests if f"/{repo}/resolve/" in path and not path.endswith("config.json")]


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
@pytest.mark.parametrize("name", list(MODELS))
def test_hub_checkpoint_matches_transformers(checkpoints, hub, tmp_path, name, layout):  # noqa: F811
    ref, folders = checkpoints[name]
    repo = f"org/{name}-{layout}"
    sha = hub.commit(repo, folders[layout])
    model = PaliModel.from_pretrained(repo, cache_dir=tmp_path)
    instruct = MODELS[name][1]
    _check_parity(model, ref, instruct, num_beams=3 if (name, layout) == ("instructblip", "bin") else 1)
    assert model.name_or_path == repo
    [source] = model.weight_sources
    assert (source["source"], source["revision"], source["format"]) == (repo, sha, "hf")
    assert source["license"] == ("mit" if layout == "safetensors" else None)
    assert model.text.lm_head.weight.data_ptr() != model.text.embed.weight.data_ptr()  # untied stays untied
    assert not torch.equal(model.text.lm_head.weight, model.text.embed.weight)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # mixed fp16/fp32 shards load as fp32
    assert model.config.connector.kind == "qformer" and (model.config.connector.vocab_size > 0) == instruct


def test_safetensors_preferred_when_a_repo_holds_both(checkpoints, hub, tmp_path):  # noqa: F811
    ref, folders = checkpoints["blip2-mt5"]
    hub.commit("org/both", folders["bin"])
    hub.commit("org/both", folders["safetensors"])
    model = PaliModel.from_pretrained("org/both", cache_dir=tmp_path)
    fetched = _weight_requests(hub, "org/both")
    assert any(p.endswith(".safetensors") for p in fetched)
    assert not any(".bin" in p for p in fetched)
    _check_parity(model, ref, instruct=False)


def _cache_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "pali cache" in str(w.message) or "converted " in str(w.message)]


def test_safetensors_read_in_place_write_nothing(checkpoints, hub, tmp_path, monkeypatch):  # noqa: F811
    ref, folders = checkpoints["blip2-t5"]
    sha = hub.commit("org/inplace", folders["safetensors"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = PaliModel.from_pretrained("org/inplace", cache_dir=tmp_path)
    assert _cache_warnings(record) == []
    assert not (tmp_path / "pali-converted").exists()  # the Hub cache holds the checkpoint, once
    assert model.weight_sources[0]["revision"] == sha
    card = (model.save_pretrained(tmp_path / "saved") / "README.md").read_text()
    assert "- org/inplace" in card and "license: mit" in card  # provenance carried into our card
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked = len(hub.requests)
    offline_model = PaliModel.from_pretrained("org/inplace", cache_dir=tmp_path)
    assert len(hub.requests) == asked and offline_model.weight_sources[0]["revision"] == sha
    _check_parity(offline_model, ref, instruct=False)


def test_bin_cache_hit_new_commit_and_offline(checkpoints, hub, tmp_path, monkeypatch):  # noqa: F811
    ref, folders = checkpoints["blip2-t5"]
    conversions = []
    real = hub_cache.convert_source
    monkeypatch.setattr(hub_cache, "convert_source", lambda *a: (conversions.append(a[1].commit), real(*a)))
    first_sha = hub.commit("org/cached", folders["bin"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = PaliModel.from_pretrained("org/cached", cache_dir=tmp_path)
    assert conversions == [first_sha]
    entries = list((tmp_path / "pali-converted").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("org--cached--model--")
    announced, done = _cache_warnings(record)  # said before writing, then where and how big
    assert announced.startswith("org/cached cannot be read in place") and str(entries[0]) in announced
    assert done.startswith(f"converted org/cached into {entries[0]}: ") and done.endswith("kB")
    [listed] = hub_cache.list_entries(tmp_path)
    assert listed.record["source"] == "org/cached" and listed.record["revision"] == first_sha and listed.size > 0
    before = len(_weight_requests(hub, "org/cached"))
    second = PaliModel.from_pretrained("org/cached", cache_dir=tmp_path)
    assert conversions == [first_sha]  # no conversion
    assert len(_weight_requests(hub, "org/cached")) == before  # and no weight file asked for
    assert torch.equal(first.text.lm_head.weight, second.text.lm_head.weight)
    new_sha = hub.commit("org/cached", folders["bin"])  # same files, a new commit
    PaliModel.from_pretrained("org/cached", cache_dir=tmp_path)
    assert conversions == [first_sha, new_sha]
    assert PaliModel.from_pretrained("org/cached", revision=first_sha, cache_dir=tmp_path).weight_sources[0][
        "revision"] == first_sha
    assert conversions == [first_sha, new_sha]
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked = len(hub.requests)
    offline_model = PaliModel.from_pretrained("org/cached", cache_dir=tmp_path)
    assert len(hub.requests) == asked and offline_model.weight_sources[0]["revision"] == new_sha
    _check_parity(offline_model, ref, instruct=False)
    stored = {e.folder.name for e in hub_cache.list_entries(tmp_path)}
    assert len(stored) == 2 and entries[0].name in stored  # one per commit
    assert {e.folder.name for e in hub_cache.clear(tmp_path)} == stored
    assert hub_cache.list_entries(tmp_path) == []


def test_bf16_load_and_cache_keeps_source_dtypes(checkpoints, hub, tmp_path):  # noqa: F811
    _, folders = checkpoints["blip2-mt5"]
    hub.commit("org/bf16", folders["bin"])
    model = PaliModel.from_pretrained("org/bf16", cache_dir=tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    from pali.io import list_tensors

    [entry] = (tmp_path / "pali-converted").iterdir()
    stored, metadata = list_tensors(entry)
    assert metadata["pali.tower"] == "model"
    assert stored["text.lm_head.weight"].dtype == torch.float16  # mBLIP's fp16 text shard, as it was
    assert stored["projection.query_tokens"].dtype == torch.float32
    px, ids, mask = batch(2)
    with torch.no_grad():
        tokens = model.generate(px.bfloat16(), ids, mask, max_new_tokens=4)
        assert torch.isfinite(model(px.bfloat16(), ids, mask, decoder_input_ids=tokens).logits).all()


def test_decoder_only_text_model_refused_before_any_weight(checkpoints, hub, tmp_path):  # noqa: F811
    _, folders = checkpoints["blip2-t5"]
    opt = tmp_path / "opt"
    opt.mkdir()
    config = json.loads((folders["safetensors"] / "config.json").read_text())
    config["text_config"] = {"model_type": "opt", "hidden_size": 24}
    (opt / "config.json").write_text(json.dumps(config))
    (opt / "model.safetensors").write_bytes(b"not weights")  # any read would fail differently
    hub.commit("org/blip2-opt", opt)
    with pytest.raises(CheckpointError, match="'opt', a decoder-only.*t5 or mt5"):
        PaliModel.from_pretrained("org/blip2-opt", cache_dir=tmp_path / "c")
    assert _weight_requests(hub, "org/blip2-opt") == []
    with pytest.raises(CheckpointError, match="'opt', a decoder-only"):
        PaliModel.from_pretrained(opt, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "pali-converted").exists()


def test_local_safetensors_folder_loads_in_place(checkpoints, tmp_path):
    ref, folders = checkpoints["instructblip"]
    local = tmp_path / "local"
    local.mkdir()
    for f in folders["safetensors"].iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    model = PaliModel.from_pretrained(str(local), cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing beside it, nothing cached
    assert model.name_or_path == str(local.resolve()) and model.weight_sources[0]["revision"] is None
    _check_parity(model, ref, instruct=True)


def test_local_bin_folder_cached_by_file_identity(checkpoints, tmp_path, monkeypatch):
    ref, folders = checkpoints["instructblip"]
    local = tmp_path / "local"
    local.mkdir()
    for f in folders["bin"].iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    conversions = []
    real = hub_cache.convert_source
    monkeypatch.setattr(hub_cache, "convert_source", lambda *a: (conversions.append(1), real(*a)))
    with pytest.warns(UserWarning, match="cannot be read in place"):
        model = PaliModel.from_pretrained(str(local), cache_dir=tmp_path)
    assert model.name_or_path == str(local.resolve()) and model.weight_sources[0]["revision"] is None
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in folders["bin"].iterdir())
    _check_parity(model, ref, instruct=True)
    PaliModel.from_pretrained(local, cache_dir=tmp_path)
    assert conversions == [1]
    config = local / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an edit: convert again
    with pytest.warns(UserWarning, match="cannot be read in place"):
        PaliModel.from_pretrained(local, cache_dir=tmp_path)
    assert conversions == [1, 1]


def test_interrupted_conversion_leaves_no_cache_entry(checkpoints, tmp_path, monkeypatch):
    _, folders = checkpoints["blip2-t5"]
    real = hub_cache.convert_source

    def crash(*args):
        real(*args)  # every file written into the temporary folder, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(hub_cache, "convert_source", crash)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="cannot be read in place"):
        PaliModel.from_pretrained(folders["bin"], cache_dir=tmp_path)
    assert list((tmp_path / "pali-converted").iterdir()) == []
    monkeypatch.setattr(hub_cache, "convert_source", real)
    with pytest.warns(UserWarning, match="cannot be read in place"):
        assert PaliModel.from_pretrained(folders["bin"], cache_dir=tmp_path) is not None


def test_missing_qformer_tensor_and_shape_mismatch_named(tmp_path):
    from safetensors.torch import load_file, save_file

    src = write_safetensors_layout(hf_blip2("t5"), tmp_path / "src", shards=1)
    shard = next(src.glob("*.safetensors"))
    tensors = load_file(str(shard))
    save_file({k: v for k, v in tensors.items() if k != "qformer.encoder.layer.1.output_query.dense.weight"},
              str(shard))
    with pytest.raises(CheckpointError, match=r"missing tensors \['projection\.layers\.1\.query_mlp\.fc2\.weight'\]"):
        PaliModel.from_pretrained(src, cache_dir=tmp_path)
    save_file({**tensors, "qformer.layernorm.weight": torch.ones(31)}, str(shard))
    with pytest.raises(CheckpointError, match=r"projection\.embed_norm\.weight \(from 'qformer\.layernorm\.weight'\)"
                                              r": checkpoint gives \[31\].*expects \[32\]"):
        PaliModel.from_pretrained(src, cache_dir=tmp_path)
    assert not (tmp_path / "pali-converted").exists()  # read in place: nothing cached, failed or not


@pytest.mark.slow
def test_load_benchmark_quick(tmp_path):
    """benchmarks/blip2_load.py runs end to end on a tiny shape and writes its JSON (ratios not asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "blip2_load.py"
    out = tmp_path / "blip2_load.json"
    run = subprocess.run([sys.executable, str(script), "--quick", "--reps", "1", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["dtype"], r["which"], r["state"]): r for r in result["rows"]}
    assert len(rows) == 8 and ("bfloat16", "ours", "cold") in rows
    assert all(r["weights_bytes"] > 0 and r["seconds"] > 0 and r["reps"] == 1 for r in result["rows"])
    assert all(r["cache_bytes_written"] == 0 for r in result["rows"])  # loaded in place: nothing written
