"""T5X checkpoints (msgpack + zarr v2, written in the real format) -> our MT5."""

import os
from pathlib import Path

import msgpack
import pytest
import torch

from pali.testing.hf_reference import hf_mt5, pali_mt5_from_hf
from pali.testing.checkpoints import read_safetensors
from pali.convert import convert_t5x, detect_format, load_config, read_t5x, verify
from pali.errors import CheckpointError
from pali.models.pali import shift_right
from pali.config.presets import get_config
from pali.models.text.mt5 import MT5
from pali.testing.t5x import spec, t5x_names, write_t5x, write_zarr


@pytest.fixture(scope="module")
def hf_and_params():
    hf = hf_mt5(seed=0)
    return hf, t5x_names(pali_mt5_from_hf(hf).state_dict())


def _layouts(name: str) -> dict:
    """Spread the zarr variants over the parameters: every one is exercised by the parity test."""
    h = sum(map(ord, name))
    return {"compressor": ["gzip", "zstd", "zlib", None][h % 4], "order": "CF"[h // 4 % 2],
            "separator": "./"[h // 8 % 2]}


@pytest.fixture(scope="module")
def t5x_dir(tmp_path_factory, hf_and_params):
    _, params = hf_and_params
    norms = [n for n in params if n.endswith("/scale")]
    return write_t5x(
        tmp_path_factory.mktemp("t5x") / "checkpoint_100", params, inline_names=norms,
        compressor=lambda n: _layouts(n)["compressor"], order=lambda n: _layouts(n)["order"],
        separator=lambda n: _layouts(n)["separator"],
    )


def _same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_converted_weights_match_hf_logits(hf_and_params, t5x_dir, tmp_path):
    hf, _ = hf_and_params
    assert detect_format(t5x_dir) == "t5x"
    out = tmp_path / "mt5"
    convert_t5x(t5x_dir, out, max_shard_size="20KB", verify=True)
    assert (out / "model.safetensors.index.json").exists()  # several shards
    ours = MT5(load_config(out)).eval()
    ours.load_state_dict(dict(read_safetensors(out)))
    torch.manual_seed(1)
    ids = torch.randint(2, 256, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    labels = torch.randint(2, 256, (2, 12))
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, labels=labels).logits
        logits = ours.decode(shift_right(labels, 0, 0), ours.encode(ours.embed(ids), mask.bool()), mask.bool())
    assert (logits - ref).abs().max().item() <= 1e-5


def test_round_trip_is_bit_exact_and_optimizer_state_skipped(hf_and_params, t5x_dir):
    _, params = hf_and_params
    ours = pali_mt5_from_hf(hf_and_params[0]).state_dict()
    conversion = read_t5x(t5x_dir)
    assert not any("param_states" in i.source for i in conversion.items)
    converted = conversion.state_dict()
    assert converted.keys() == ours.keys()
    assert all(_same(converted[k], ours[k]) for k in ours)


def test_bf16_inline_and_zarr_missing_chunks_and_state_layout(tmp_path):
    torch.manual_seed(0)
    ours = MT5(get_config("mt5-tiny")).state_dict()
    ours = {k: v.to(torch.bfloat16) for k, v in ours.items()}
    ours["embed.weight"][:128] = 0  # whole chunks equal to fill_value: not written
    params = t5x_names(ours)
    directory = write_t5x(tmp_path / "checkpoint_1", params, inline_names=["encoder/relpos_bias/rel_embedding"],
                          compressor=lambda n: "zstd", chunks=lambda s: tuple(max(1, x // 3) for x in s),
                          state_layout=True)
    assert not (directory / "target.token_embedder.embedding" / "0.0").exists()
    converted = read_t5x(directory).state_dict()
    assert all(_same(converted[k], ours[k]) for k in ours)


def test_dtype_cast_and_verify_cli_api(t5x_dir, tmp_path):
    out = tmp_path / "bf16"
    convert_t5x(t5x_dir, out, dtype="bf16")
    tensors = dict(read_safetensors(out))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert verify(t5x_dir, out) == len(tensors)
    # a tampered output fails verification, naming the tensor
    from safetensors.torch import save_file

    tensors["embed.weight"] = tensors["embed.weight"].clone()
    tensors["embed.weight"][0, 0] += 1
    save_file(tensors, str(out / "model.safetensors"), metadata={"pali.tower": "text", "pali.dtype": "bfloat16",
                                                                 "pali.source_format": "t5x"})
    with pytest.raises(CheckpointError, match="embed.weight"):
        verify(t5x_dir, out)


def test_tensorstore_written_zarr_reads_identically(tmp_path):
    ts = pytest.importorskip("tensorstore")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    torch.manual_seed(0)
    ours = {k: v.to(torch.bfloat16) for k, v in MT5(get_config("mt5-tiny")).state_dict().items()}
    params = t5x_names(ours)
    directory = tmp_path / "checkpoint_7"
    directory.mkdir()
    leaves = {}
    for name, t in params.items():
        rel = "target." + name.replace("/", ".")
        array = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        store = ts.open({
            "driver": "zarr", "kvstore": {"driver": "file", "path": str(directory / rel)},
            "metadata": {"shape": list(array.shape), "chunks": [max(1, s // 2) for s in array.shape],
                         "dtype": "bfloat16", "compressor": {"id": "zstd", "level": 1}},
        }, create=True).result()
        store.write(array).result()
        leaves[name] = spec(rel + "/", "bfloat16")  # TensorStore's to_json() keeps a trailing slash
    tree: dict = {}
    for name, leaf in leaves.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    (directory / "checkpoint").write_bytes(msgpack.packb({"version": 3, "optimizer": {"target": tree}}))
    converted = read_t5x(directory).state_dict()
    assert all(_same(converted[k], ours[k]) for k in ours)


# -- bad input -----------------------------------------------------------------------------------


def _small(tmp_path, **kw):
    torch.manual_seed(0)
    params = t5x_names(MT5(get_config("mt5-tiny")).state_dict())
    return write_t5x(tmp_path / "checkpoint_1", params, **kw), params


def _no_output(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_truncated_zarr_chunk(tmp_path):
    directory, _ = _small(tmp_path, compressor=lambda n: None)
    chunk = directory / "target.decoder.logits_dense.kernel" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:-5])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"logits_dense.*truncated or corrupt"):
        convert_t5x(directory, out)
    _no_output(out)


@pytest.mark.parametrize("compressor", ["gzip", "zstd", "zlib"])
def test_corrupt_compressed_chunk(tmp_path, compressor):
    directory, _ = _small(tmp_path, compressor=lambda n: compressor)
    chunk = directory / "target.token_embedder.embedding" / "1.1"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)
    chunk.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="token_embedder.embedding"):
        read_t5x(directory).state_dict()


def test_truncated_msgpack(tmp_path):
    directory, _ = _small(tmp_path)
    file = directory / "checkpoint"
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="not a valid msgpack"):
        read_t5x(directory)


def _rewrite_path(directory: Path, name: str, path: str):
    tree = msgpack.unpackb((directory / "checkpoint").read_bytes(), strict_map_key=False)
    node = tree["optimizer"]["target"]
    for part in name.split("/")[:-1]:
        node = node[part]
    node[name.split("/")[-1]] = spec(path)
    (directory / "checkpoint").write_bytes(msgpack.packb(tree, use_bin_type=True))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_zarr_path_escaping_the_checkpoint_is_rejected(tmp_path, kind):
    directory, params = _small(tmp_path)
    outside = tmp_path / "elsewhere"
    write_zarr(outside, params["encoder/encoder_norm/scale"], (4,))
    name = "encoder/encoder_norm/scale"
    if kind == "dotdot":
        _rewrite_path(directory, name, "../elsewhere")
    elif kind == "absolute":
        _rewrite_path(directory, name, str(outside))
    else:
        os.symlink(outside, directory / "link")
        _rewrite_path(directory, name, "link")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory|escapes the checkpoint directory"):
        read_t5x(directory).state_dict()


def test_symlinked_chunk_out_of_the_checkpoint_is_rejected(tmp_path):
    directory, params = _small(tmp_path, compressor=lambda n: None)
    chunk = directory / "target.encoder.encoder_norm.scale" / "0"
    (tmp_path / "secret").write_bytes(chunk.read_bytes())
    chunk.unlink()
    os.symlink(tmp_path / "secret", chunk)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        read_t5x(directory).state_dict()


def test_orbax_checkpoint_is_refused(tmp_path):
    directory = tmp_path / "checkpoint_5"
    directory.mkdir()
    (directory / "_CHECKPOINT_METADATA").write_text("{}")
    (directory / "manifest.ocdbt").write_bytes(b"x")
    assert detect_format(directory) == "t5x"
    with pytest.raises(CheckpointError, match="Orbax/OCDBT"):
        read_t5x(directory)


def test_missing_and_unknown_tensors_are_listed(tmp_path):
    torch.manual_seed(0)
    params = t5x_names(MT5(get_config("mt5-tiny")).state_dict())
    del params["decoder/logits_dense/kernel"]
    params["decoder/layers_0/mlp/wi/kernel"] = torch.zeros(2, 2)
    directory = write_t5x(tmp_path / "checkpoint_1", params)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['decoder/layers_0/mlp/wi/kernel'\]"):
        read_t5x(directory)
    del params["decoder/layers_0/mlp/wi/kernel"]
    directory = write_t5x(tmp_path / "checkpoint_2", params)
    with pytest.raises(CheckpointError, match=r"missing tensors \['lm_head.weight'\]"):
        read_t5x(directory)


def test_shape_mismatch_against_preset_names_tensor_and_shapes(t5x_dir):
    with pytest.raises(CheckpointError) as e:
        read_t5x(t5x_dir, text_preset="mt5-small")
    msg = str(e.value)
    assert ("embed.weight (from 'token_embedder/embedding'): checkpoint gives [256, 32], "
            "preset 'mt5-small' expects [250112, 512]") in msg
    assert read_t5x(t5x_dir, text_preset="mt5-tiny").config.d_model == 32
    with pytest.raises(CheckpointError, match="vision preset"):
        read_t5x(t5x_dir, text_preset="vit-tiny")


def test_existing_output_is_refused_without_force(t5x_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(CheckpointError, match="exists"):
        convert_t5x(t5x_dir, out)
    assert (out / "keep").exists()
    convert_t5x(t5x_dir, out, force=True)
    assert not (out / "keep").exists() and (out / "model.safetensors").exists()
