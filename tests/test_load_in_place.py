"""transformers safetensors checkpoints loaded in place: no copy on disk or in memory, the same
mapping as ``pali convert``, bad input named before any weight is assigned, and ``pali cache``."""

from __future__ import annotations

import json
from pathlib import Path
import sys

import pytest
import torch

from blip2_reference import hf_blip2, write_bin_layout, write_safetensors_layout
from pali import CheckpointError, PaliModel
from pali.cli import main
from pali.convert import convert
from pali.hub import cache as hub_cache
from pali.hub.download import Snapshot
from pali.io import INDEX_NAME, loading


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_safetensors_layout(hf_blip2("t5"), tmp_path_factory.mktemp("inplace") / "blip2", shards=2)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _mapped_files() -> dict[int, tuple[int, str]]:
    """start -> (end, path) of every file-backed mapping of this process."""
    out = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5].startswith("/"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            out[start] = (end, parts[5])
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_fp32_weights_are_the_mapped_shards_and_writes_stay_private(folder, tmp_path):
    model = PaliModel.from_pretrained(folder, cache_dir=tmp_path)
    maps = _mapped_files()
    weight = model.text.encoder.layers[0].mlp.wo.weight
    ptr = weight.data_ptr()
    [path] = [p for start, (end, p) in maps.items() if start <= ptr < end]
    assert Path(path).parent == folder.resolve() and path.endswith(".safetensors")  # not a copy
    before = Path(path).read_bytes()
    with torch.no_grad():
        weight.add_(1.0)  # copy-on-write: the file never changes
    assert Path(path).read_bytes() == before
    again = PaliModel.from_pretrained(folder, cache_dir=tmp_path).text.encoder.layers[0].mlp.wo.weight
    assert torch.equal(again + 1.0, weight)


def test_bf16_load_casts_each_tensor_and_matches_fp32(folder, tmp_path):
    fp32 = PaliModel.from_pretrained(folder, cache_dir=tmp_path)
    bf16 = PaliModel.from_pretrained(folder, cache_dir=tmp_path, dtype=torch.bfloat16)
    a, b = fp32.state_dict(), bf16.state_dict()
    assert a.keys() == b.keys()
    assert all(b[k].dtype == torch.bfloat16 and torch.equal(b[k], a[k].bfloat16()) for k in a)


def test_pali_convert_writes_what_the_in_place_load_assigns(folder, tmp_path):
    """One mapping: the converted folder loads to the very tensors read in place."""
    out = tmp_path / "converted"
    convert(folder, out, "hf")
    converted = PaliModel.from_pretrained(out).state_dict()
    in_place = PaliModel.from_pretrained(folder, cache_dir=tmp_path).state_dict()
    assert converted.keys() == in_place.keys()
    assert all(torch.equal(converted[k], in_place[k]) for k in in_place)


class _Stored:
    """A weight as ``pali.io.loading.materialize`` sees one; ``fail`` makes its read raise."""

    def __init__(self, tensor: torch.Tensor, fail: str | None = None) -> None:
        self.tensor, self.fail = tensor, fail
        self.shape, self.dtype = tuple(tensor.shape), tensor.dtype

    def load(self) -> torch.Tensor:
        if self.fail:
            raise CheckpointError(self.fail)
        return self.tensor


def test_casts_on_loading_threads_equal_one_cast_and_a_failure_keeps_its_name():
    from torch import nn

    from pali.nn.meta import meta_device

    torch.manual_seed(0)
    weights = {f"{i}.{leaf}": torch.randn(8 * (i + 1), 8) if leaf == "weight" else torch.randn(8 * (i + 1))
               for i in range(6) for leaf in ("weight", "bias")}

    def build() -> nn.Module:
        with meta_device():
            return nn.Sequential(*[nn.Linear(8, 8 * (i + 1)) for i in range(6)])

    model = loading.materialize(build(), {k: _Stored(v) for k, v in weights.items()},
                                device=torch.device("cpu"), dtype=torch.bfloat16)
    got = model.state_dict()
    assert all(torch.equal(got[k], v.bfloat16()) for k, v in weights.items())
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())

    entries = {k: _Stored(v, fail="shard.safetensors: cannot read (the file shrank)" if k == "3.weight" else None)
               for k, v in weights.items()}
    with pytest.raises(CheckpointError, match="the file shrank"):
        loading.materialize(build(), entries, device=torch.device("cpu"), dtype=torch.bfloat16)


def _no_assignment(monkeypatch) -> list[str]:
    assigned = []
    real = loading._assign
    monkeypatch.setattr(loading, "_assign", lambda model, name, t: (assigned.append(name), real(model, name, t)))
    return assigned


def test_bad_shards_named_before_any_weight_is_assigned(folder, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    assigned = _no_assignment(monkeypatch)
    index = json.loads((folder / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))

    missing = _copy(folder, tmp_path / "missing")
    (missing / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"shard {shards[1]} is named in the index but missing"):
        PaliModel.from_pretrained(missing, cache_dir=tmp_path)

    truncated = _copy(folder, tmp_path / "truncated")
    data = (truncated / shards[0]).read_bytes()
    (truncated / shards[0]).write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=f"{shards[0]}: tensor .* needs .* bytes"):
        PaliModel.from_pretrained(truncated, cache_dir=tmp_path)

    for what, change, match in [
        ("shape", lambda t: torch.zeros(t.shape[0] + 1, *t.shape[1:]), r"q.weight.*checkpoint gives \[25, 24\].*expects \[24, 24\]"),
        ("dtype", lambda t: torch.zeros(t.shape, dtype=torch.int32), r"checkpoint torch.int32, model torch.float32"),
    ]:
        bad = _copy(folder, tmp_path / what)
        name = "language_model.encoder.block.0.layer.0.SelfAttention.q.weight"
        shard = bad / index["weight_map"][name]
        tensors = load_file(str(shard))
        tensors[name] = change(tensors[name])
        save_file(tensors, str(shard), metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=match):
            PaliModel.from_pretrained(bad, cache_dir=tmp_path)
    assert assigned == []
    assert not (tmp_path / "pali-converted").exists()


def test_cache_list_and_clear(tmp_path, capsys):
    source = write_bin_layout(hf_blip2("mt5"), tmp_path / "mblip", shards=2)
    snapshot = Snapshot(source.resolve(), str(source.resolve()))
    with pytest.warns(UserWarning) as record:
        opened = hub_cache.open_source("model", snapshot, hub_cache.entry_folder("model", snapshot, tmp_path))
    said = [str(w.message) for w in record]  # before writing: where; after: where and how big
    assert len(said) == 2 and "cannot be read in place" in said[0] and str(opened.folder) in said[0]
    assert said[1].startswith(f"converted {source.resolve()} into {opened.folder}: ") and said[1].endswith("kB")
    assert opened.plan is None and opened.record["source"] == str(source.resolve())
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'pali-converted'}: 1 entries, ") and out[0].endswith("kB")
    assert opened.folder.name in out[1] and f"{source.resolve()}@local  [hf]" in out[1]
    assert main(["cache", "clear", "--cache-dir", str(tmp_path), "no-such-entry"]) == 2
    assert "not in the pali cache" in capsys.readouterr().err
    assert opened.folder.is_dir()
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out and not opened.folder.exists()
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    assert ": 0 entries, 0 B" in capsys.readouterr().out
