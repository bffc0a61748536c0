"""from_pretrained / save_pretrained / push_to_hub against a loopback Hub stand-in (no network)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from hub_fixtures import hub, offline  # noqa: F401  (fixtures)
from pali import CheckpointError, InputError, PaliModel
from pali.testing.checkpoints import read_safetensors
from pali.io import INDEX_NAME, write_safetensors
from pali.hub import HubError


def _model(seed: int = 0) -> PaliModel:
    torch.manual_seed(seed)
    return PaliModel.from_preset("pali-tiny").eval()


def _inputs():
    g = torch.Generator().manual_seed(5)
    return dict(
        pixel_values=torch.randn(2, 3, 32, 32, generator=g),
        input_ids=torch.randint(2, 256, (2, 7), generator=g),
        decoder_input_ids=torch.randint(2, 256, (2, 5), generator=g),
    )


def _logits(model):
    with torch.no_grad():
        return model(**_inputs()).logits


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def pushed(hub, monkeypatch):  # noqa: F811
    """Mock HfApi's upload side: uploads become commits of the stand-in; calls are recorded."""
    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, delete_patterns=(), revision=None, **kwargs):
        from pathlib import Path

        calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
        return hub.commit(repo_id, Path(folder_path), branch=revision or "main", delete_patterns=delete_patterns)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_save_push_load_gives_identical_outputs(pushed, tmp_path):
    model = _model(0)
    sha = model.push_to_hub("org/tiny", private=True, commit_message="first")
    kinds = [c[0] for c in pushed]
    assert kinds == ["create_repo", "upload_folder"]
    assert pushed[0][2]["exist_ok"] is True and pushed[0][2]["private"] is True
    assert pushed[1][2] == ["README.md", "config.json", "model.safetensors"]
    assert pushed[1][3]["commit_message"] == "first"
    loaded = PaliModel.from_pretrained("org/tiny", cache_dir=tmp_path)
    assert loaded.name_or_path == "org/tiny"
    assert _same_weights(model, loaded)
    assert torch.equal(_logits(model), _logits(loaded))
    card = (tmp_path / "models--org--tiny" / "snapshots" / sha / "README.md")
    assert not card.exists()  # only what loading needs is downloaded


def test_sharded_save_and_load(pushed, tmp_path):
    model = _model(1)
    out = model.save_pretrained(tmp_path / "local", max_shard_size="40KB")
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).is_file() for s in shards)
    assert _same_weights(model, PaliModel.from_pretrained(out))
    model.push_to_hub("org/sharded", max_shard_size="40KB")
    loaded = PaliModel.from_pretrained("org/sharded", cache_dir=tmp_path / "cache")
    assert torch.equal(_logits(model), _logits(loaded))


def test_repush_with_fewer_shards_deletes_stale_ones(pushed, hub, tmp_path):  # noqa: F811
    _model(1).push_to_hub("org/reshard", max_shard_size="40KB")
    sha = _model(2).push_to_hub("org/reshard")
    assert [f for f in hub.files("org/reshard", sha) if f.endswith(".safetensors")] == ["model.safetensors"]
    assert INDEX_NAME not in hub.files("org/reshard", sha)


def test_revision_pinning(pushed, hub, tmp_path):  # noqa: F811
    old, new = _model(3), _model(4)
    first = old.push_to_hub("org/revs")
    new.push_to_hub("org/revs")
    old.push_to_hub("org/revs", revision="v1")  # a branch
    assert hub.refs["org/revs"]["main"] != first
    assert _same_weights(new, PaliModel.from_pretrained("org/revs", cache_dir=tmp_path))
    assert _same_weights(old, PaliModel.from_pretrained("org/revs", revision=first, cache_dir=tmp_path))
    assert _same_weights(old, PaliModel.from_pretrained("org/revs", revision="v1", cache_dir=tmp_path))


def test_offline_reads_the_filled_cache_and_nothing_else(pushed, hub, tmp_path, monkeypatch):  # noqa: F811
    model = _model(5)
    model.push_to_hub("org/offline")
    PaliModel.from_pretrained("org/offline", cache_dir=tmp_path)
    before = len(hub.requests)
    assert _same_weights(model, PaliModel.from_pretrained("org/offline", cache_dir=tmp_path, local_files_only=True))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert _same_weights(model, PaliModel.from_pretrained("org/offline", cache_dir=tmp_path))
    assert len(hub.requests) == before
    with pytest.raises(HubError, match="not in the local cache.*offline"):
        PaliModel.from_pretrained("org/offline", cache_dir=tmp_path / "empty")


def test_hub_errors_name_the_problem(pushed, hub, tmp_path):  # noqa: F811
    pushed_model = _model(6)
    pushed_model.push_to_hub("org/errs")
    with pytest.raises(HubError, match="'org/nope' not found"):
        PaliModel.from_pretrained("org/nope", cache_dir=tmp_path)
    with pytest.raises(HubError, match="revision 'v9' does not exist in Hub repo 'org/errs'"):
        PaliModel.from_pretrained("org/errs", revision="v9", cache_dir=tmp_path)
    hub.make_private("org/errs", "secret")
    with pytest.raises(HubError, match="private: pass token"):
        PaliModel.from_pretrained("org/errs", cache_dir=tmp_path)
    assert _same_weights(pushed_model, PaliModel.from_pretrained("org/errs", cache_dir=tmp_path, token="secret"))


def test_missing_file_in_repo(hub, tmp_path):  # noqa: F811
    folder = tmp_path / "nocfg"
    folder.mkdir()
    write_safetensors(_model(0).state_dict().items(), folder)
    hub.commit("org/noconfig", folder)
    with pytest.raises(CheckpointError, match="no config.json"):
        PaliModel.from_pretrained("org/noconfig", cache_dir=tmp_path / "c")
    # An index that names a shard the repo does not hold.
    saved = _model(0).save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shard = sorted(saved.glob("model-*.safetensors"))[-1]
    shard.unlink()
    hub.commit("org/lostshard", saved)
    with pytest.raises(CheckpointError, match=f"shard {shard.name} is named in the index but missing"):
        PaliModel.from_pretrained("org/lostshard", cache_dir=tmp_path / "c")


def _resave(src, dst, edit):
    """Copy checkpoint ``src`` to ``dst`` with its tensors passed through ``edit(dict)``."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = edit(dict(read_safetensors(src)))
    write_safetensors(tensors.items(), dst)
    return dst


def test_missing_unexpected_and_misshapen_tensors(tmp_path):
    good = _model(7).save_pretrained(tmp_path / "good")
    missing = _resave(good, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != "projection.weight"})
    with pytest.raises(CheckpointError, match=r"missing 1 tensors: projection\.weight.*strict=False"):
        PaliModel.from_pretrained(missing)
    with pytest.warns(UserWarning, match=r"missing 1 tensors: projection\.weight"):
        model = PaliModel.from_pretrained(missing, strict=False)
    assert not any(p.is_meta for p in model.parameters())
    assert model.projection.weight.std() > 0 and torch.isfinite(model.projection.weight).all()
    extra = _resave(good, tmp_path / "extra", lambda t: {**t, "head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensors: head\.weight"):
        PaliModel.from_pretrained(extra)
    bad = _resave(good, tmp_path / "bad", lambda t: {**t, "projection.weight": torch.zeros(32, 31)})
    with pytest.raises(CheckpointError, match=r"projection\.weight: checkpoint \[32, 31\], model \[32, 32\]"):
        PaliModel.from_pretrained(bad, strict=False)  # shapes are never negotiable
    ints = _resave(good, tmp_path / "ints", lambda t: {**t, "projection.bias": torch.zeros(32, dtype=torch.int32)})
    with pytest.raises(CheckpointError, match=r"projection\.bias: checkpoint torch\.int32"):
        PaliModel.from_pretrained(ints)


def test_corrupt_or_foreign_checkpoints(tmp_path):
    good = _model(0).save_pretrained(tmp_path / "good")
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="needs .* bytes"):
        PaliModel.from_pretrained(good)
    (good / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        PaliModel.from_pretrained(good)
    (good / "config.json").write_text(json.dumps({"kind": "vit", "image_size": 32}))
    with pytest.raises(CheckpointError, match="single 'vit' tower.*from_unimodal"):
        PaliModel.from_pretrained(good)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a Hub repo id"):
        PaliModel.from_pretrained(str(tmp_path / "does" / "not" / "exist"))


def test_dtype_device_and_provenance(tmp_path):
    model = _model(8)
    model.weight_sources = [{"tower": "text", "source": "google/mt5-small", "revision": "abc", "format": "hf",
                             "license": "apache-2.0"}]
    out = model.save_pretrained(tmp_path / "m")
    loaded = PaliModel.from_pretrained(out, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.weight_sources == model.weight_sources
    assert not loaded.training
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: pali" in card and "license: apache-2.0" in card
    assert "- google/mt5-small" in card and "pali-tiny" in card and f"{model.num_parameters():,}" in card


def test_torch_dtype_is_dtype_under_transformers_name(tmp_path):
    out = _model(8).save_pretrained(tmp_path / "m")
    loaded = PaliModel.from_pretrained(out, torch_dtype=torch.float16)
    assert {p.dtype for p in loaded.parameters()} == {torch.float16}
    with pytest.raises(InputError, match="disagree"):
        PaliModel.from_pretrained(out, dtype=torch.bfloat16, torch_dtype=torch.float16)


def test_save_is_atomic_and_takes_processor_files(tmp_path):
    class Processor:
        def save_pretrained(self, folder):
            (folder / "preprocessor_config.json").write_text("{}")

    class Broken:
        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    model = _model(0)
    out = model.save_pretrained(tmp_path / "m", processor=Processor())
    assert (out / "preprocessor_config.json").is_file()
    with pytest.raises(FileExistsError):
        model.save_pretrained(out)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path / "broken", processor=Broken())
    assert not (tmp_path / "broken").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.save_pretrained(out, overwrite=True)


def test_save_into_an_empty_folder_or_over_an_earlier_save(tmp_path):
    """Like transformers and timm: an existing empty folder, or an earlier save of ours, is
    written (atomically); a folder with anything else in it needs overwrite=True."""
    model = _model(0)
    empty = tmp_path / "empty"
    empty.mkdir()
    model.save_pretrained(empty)
    assert (empty / "config.json").is_file()
    other = _model(1)
    other.save_pretrained(empty)  # over an earlier save: replaced
    reloaded = type(other).from_pretrained(empty)
    for (name, a), b in zip(other.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(empty)
    assert (empty / "notes.txt").read_text() == "mine"
    model.save_pretrained(empty, overwrite=True)
    assert not (empty / "notes.txt").exists()
