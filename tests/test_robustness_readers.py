"""Property: every reader, given a corrupted checkpoint, loads or raises PaliError, and nothing else.

Valid fixtures (a big_vision .npz, a T5X checkpoint with gzip and zstd zarr arrays and inline
arrays, a pali safetensors checkpoint, a config.json) are corrupted by hypothesis (truncation, bit
flips, overwritten or inserted bytes, header edits with wrong dtypes and oversize shapes). With
``MAX_TENSOR_BYTES`` lowered to 1 MiB, Python- and numpy-side allocations (``tracemalloc``) stay under 32 MiB: a claimed shape that escaped the
checks would allocate far more. ``test_oversize_claims_fail_under_an_address_space_limit`` checks
the same in a subprocess under ``RLIMIT_AS``, where a real allocation would fail.
"""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pali.testing.hf_reference import hf_siglip
from pali.testing.t5x import t5x_names, write_t5x
from pali.testing.big_vision import big_vision_names

import pali.io.guards
from pali import PaliError, PaliModel
from pali.config import PaliConfig
from pali.convert import load_config, read_big_vision, read_t5x
from pali.convert.zarr import ZarrArray
from pali.config.presets import get_config
from pali.models.text.mt5 import MT5

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True, database=None)
MEMORY_BOUND = 32 << 20


@pytest.fixture(autouse=True)
def small_tensor_limit(monkeypatch):
    monkeypatch.setattr(pali.io.guards, "MAX_TENSOR_BYTES", 1 << 20)


# -- fixtures (built once; hypothesis examples copy them) -----------------------------------------


@functools.cache
def npz_bytes() -> bytes:
    model = hf_siglip()
    buffer = io.BytesIO()
    np.savez(buffer, **big_vision_names(model.state_dict(), model.config.num_attention_heads))
    return buffer.getvalue()


@functools.cache
def t5x_files() -> dict[str, bytes]:
    """Relative path -> bytes of a T5X checkpoint: half the tensors inline, zarr in gzip, zstd, raw."""
    torch.manual_seed(0)
    params = t5x_names(MT5(get_config("mt5-tiny")).state_dict())
    directory = Path(tempfile.mkdtemp()) / "checkpoint_1"
    write_t5x(directory, params, inline_names=[n for i, n in enumerate(params) if i % 2],
              compressor=lambda name: ("gzip", "zstd", None)[len(name) % 3])
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@functools.cache
def saved_model() -> dict[str, bytes]:
    torch.manual_seed(0)
    folder = PaliModel.from_preset("pali-tiny").save_pretrained(Path(tempfile.mkdtemp()) / "m")
    return {name: (folder / name).read_bytes() for name in ("config.json", "model.safetensors")}


def _write(files: dict[str, bytes]) -> Path:
    root = Path(tempfile.mkdtemp())
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# -- corruptions --------------------------------------------------------------------------------


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert"]))
    at = draw(st.integers(0, len(data)))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        out = bytearray(data)
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=8)):
            out[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    junk = draw(st.binary(min_size=1, max_size=64))
    if kind == "overwrite":
        return data[:at] + junk + data[at + len(junk):]
    return data[:at] + junk + data[at:]


OVERSIZE = st.sampled_from([10**12, 2**31, 2**40, -1, 0, 3.5, "7", None, True, [2]])
SHAPES = st.lists(st.one_of(st.integers(-3, 70), OVERSIZE), max_size=5)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _bounded(run) -> None:
    """``run()`` loads or raises PaliError, and allocates (as tracemalloc sees it) under the bound."""
    tracemalloc.start()
    try:
        run()
    except PaliError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"peak {peak} bytes"


# -- big_vision .npz ------------------------------------------------------------------------------


def _npz(path: Path) -> dict:
    return read_big_vision(path).state_dict()


@FUZZ
@given(data=st.data())
def test_corrupted_npz(data):
    path = _write({"x.npz": data.draw(corrupted(npz_bytes()))}) / "x.npz"
    _bounded(lambda: _npz(path))


def _npy_header(header: dict) -> bytes:
    """An npy v1.0 header, written by hand so that numpy's own checks cannot refuse a bad claim."""
    text = repr(header).encode("latin1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _rewrite_member(npz: bytes, edit) -> bytes:
    """``npz`` with one member's npy header replaced (``edit(header dict)``), data kept."""
    src, out = zipfile.ZipFile(io.BytesIO(npz)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            raw = src.read(info)
            if info.filename == "embedding/kernel.npy":
                f = io.BytesIO(raw)
                np.lib.format.read_magic(f)
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                header = edit({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape})
                raw = _npy_header(header) + raw[f.tell():]
            dst.writestr(info.filename, raw)
    return out.getvalue()


@FUZZ
@given(shape=st.lists(st.one_of(st.integers(0, 70), st.sampled_from([10**12, 2**31, 2**40])), max_size=5),
       descr=st.sampled_from(["<f4", "<f2", "|V2", "<c8", "|O", "<U3", "<f16", "|b1", ">i4", "<m8"]))
def test_npz_header_claims(shape, descr):
    data = _rewrite_member(npz_bytes(), lambda h: {**h, "shape": tuple(shape), "descr": descr})
    path = _write({"x.npz": data}) / "x.npz"
    _bounded(lambda: _npz(path))


def test_npz_header_claiming_a_terabyte_names_the_member(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(_rewrite_member(npz_bytes(), lambda h: {**h, "shape": (10**6, 10**6)}))
    with pytest.raises(PaliError, match=r"embedding/kernel.*\[1000000, 1000000\].*limit"):
        _npz(path)


def test_npz_header_that_numpy_cannot_tokenize(tmp_path):
    """Fuzzing finding: numpy parses npy headers with tokenize, which raised TokenError through us."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,\n"
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("embedding/kernel.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with pytest.raises(PaliError, match="corrupt npy header"):
        _npz(path)


# -- T5X: msgpack tree and zarr arrays ------------------------------------------------------------


@functools.cache
def t5x_dir() -> Path:
    return _write(t5x_files())


def _t5x(files: dict[str, bytes]) -> None:
    """Read the T5X fixture with the files that differ from ``t5x_files()`` swapped in."""
    root, changed = t5x_dir(), {k: v for k, v in files.items() if v is not t5x_files()[k]}
    try:
        for rel, data in changed.items():
            (root / rel).write_bytes(data)
        read_t5x(root / "checkpoint").state_dict()
    finally:
        for rel in changed:
            (root / rel).write_bytes(t5x_files()[rel])


@FUZZ
@given(data=st.data())
def test_corrupted_t5x_msgpack(data):
    files = dict(t5x_files())
    files["checkpoint"] = data.draw(corrupted(files["checkpoint"]))
    _bounded(lambda: _t5x(files))


@FUZZ
@given(data=st.data())
def test_corrupted_zarr_chunks(data):
    files = dict(t5x_files())
    chunks = sorted(k for k in files if "/" in k and not k.endswith(".zarray"))
    name = data.draw(st.sampled_from(chunks))
    corrupt = data.draw(corrupted(files[name]))
    root = _write({name: corrupt, str(Path(name).parent / ".zarray"): files[str(Path(name).parent / ".zarray")]})
    _bounded(lambda: ZarrArray.open(root, str(Path(name).parent)).read())


@FUZZ
@given(data=st.data())
def test_zarray_header_edits(data):
    files = dict(t5x_files())
    name = data.draw(st.sampled_from(sorted(k for k in files if k.endswith(".zarray"))))
    meta = json.loads(files[name])
    field = data.draw(st.sampled_from(["shape", "chunks", "dtype", "fill_value", "compressor", "order",
                                       "dimension_separator", "zarr_format", "filters"]))
    if field in ("shape", "chunks"):
        meta[field] = data.draw(SHAPES)
    elif field == "dtype":
        meta[field] = data.draw(st.sampled_from(["<f4", "<f2", "bfloat16", "<f16", "<c8", "|O", "<U3", ">f4",
                                                 "|V2", "<u4", [["a", "<f4"]], 7]))
    else:
        meta[field] = data.draw(JSON_VALUES)
    files[name] = json.dumps(meta).encode()
    _bounded(lambda: _t5x(files))


def test_zarr_claiming_a_terabyte_fails_before_allocating(tmp_path):
    files = dict(t5x_files())
    name = next(k for k in sorted(files) if k.endswith("token_embedder.embedding/.zarray"))
    meta = json.loads(files[name])
    files[name] = json.dumps({**meta, "shape": [10**6, 10**6]}).encode()
    with pytest.raises(PaliError, match=r"token_embedder.embedding.*\[1000000, 1000000\].*limit"):
        read_t5x(_write(files) / "checkpoint")


# -- safetensors via from_pretrained --------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_corrupted_safetensors(data):
    files = dict(saved_model())
    files["model.safetensors"] = data.draw(corrupted(files["model.safetensors"]))
    folder = _write(files)
    _bounded(lambda: PaliModel.from_pretrained(folder))


def _with_header(raw: bytes, edit) -> bytes:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header = edit(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


@FUZZ
@given(data=st.data())
def test_safetensors_header_edits(data):
    files = dict(saved_model())
    raw = files["model.safetensors"]
    names = sorted(k for k in json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]) if k != "__metadata__")
    name = data.draw(st.sampled_from(names))
    field = data.draw(st.sampled_from(["shape", "dtype", "data_offsets", "entry", "__metadata__"]))

    def edit(header):
        if field == "shape":
            header[name]["shape"] = data.draw(SHAPES)
        elif field == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(["F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X", 3]))
        elif field == "data_offsets":
            header[name]["data_offsets"] = data.draw(st.lists(st.one_of(st.integers(-10, 10**6), OVERSIZE), max_size=3))
        elif field == "entry":
            header[name] = data.draw(JSON_VALUES)
        else:
            header["__metadata__"] = data.draw(JSON_VALUES)
        return header

    files["model.safetensors"] = _with_header(raw, edit)
    folder = _write(files)
    _bounded(lambda: PaliModel.from_pretrained(folder))


# -- config.json -----------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_corrupted_config_json(data):
    text = data.draw(corrupted(saved_model()["config.json"]))
    folder = _write({"config.json": text})
    _bounded(lambda: load_config(folder))
    _bounded(lambda: PaliConfig.from_json(text.decode("utf-8", "replace")))


@FUZZ
@given(data=st.data())
def test_config_field_edits(data):
    config = json.loads(saved_model()["config.json"])
    tower = data.draw(st.sampled_from(["vision", "text"]))
    field = data.draw(st.sampled_from(sorted(config[tower])))
    config[tower][field] = data.draw(st.one_of(JSON_VALUES, OVERSIZE))
    _bounded(lambda: PaliConfig.from_dict(config))


# -- memory bound under a real address-space limit ------------------------------------------------

_RLIMIT_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, zipfile, io
    from pathlib import Path
    import numpy as np
    import pali.io, pali.convert
    from pali import PaliError, PaliModel
    from pali.convert.zarr import ZarrArray

    root = Path(sys.argv[1])
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB of headroom

    def expect(what, run):
        try:
            run()
        except PaliError as e:
            print(what, "ok", type(e).__name__)
            return
        except MemoryError:
            sys.exit(f"{what}: MemoryError, the claim was allocated")
        sys.exit(f"{what}: loaded a 4 TB claim")

    expect("zarr", lambda: ZarrArray.open(root, "z").read())
    expect("npz", lambda: pali.convert.read_big_vision(root / "x.npz").state_dict())
    expect("safetensors", lambda: pali.io.list_tensors(root / "st"))
    expect("config", lambda: PaliModel.from_pretrained(root / "cfg"))
    """
)


def test_oversize_claims_fail_under_an_address_space_limit(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / ".zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [10**6, 10**6], "chunks": [10**6, 1], "dtype": "<f4", "compressor": None,
         "fill_value": 0, "order": "C", "filters": None}))
    (tmp_path / "x.npz").write_bytes(_rewrite_member(npz_bytes(), lambda h: {**h, "shape": (10**6, 10**6)}))
    (tmp_path / "st").mkdir()
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    (tmp_path / "st" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (tmp_path / "cfg").mkdir()
    config = json.loads(saved_model()["config.json"])
    config["text"]["d_model"] = 10**6
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    (tmp_path / "cfg" / "model.safetensors").write_bytes(saved_model()["model.safetensors"])
    result = subprocess.run([sys.executable, "-c", _RLIMIT_SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:4] == [
        "zarr ok CheckpointError", "npz ok CheckpointError", "safetensors ok CheckpointError", "config ok ConfigError",
    ]


@pytest.mark.parametrize("compressor", ["gzip", "zstd"])
def test_decompression_bomb_chunk_stops_at_the_chunk_size(tmp_path, compressor):
    import gzip

    import zstandard

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [1 << 18], "chunks": [1 << 18], "dtype": "<f4", "compressor": {"id": compressor},
         "fill_value": 0, "order": "C", "filters": None}))
    zeros = bytes(256 << 20)  # 256 MiB of zeros compresses to a few hundred KB
    bomb = gzip.compress(zeros, 9) if compressor == "gzip" else zstandard.ZstdCompressor(level=19).compress(zeros)
    del zeros
    (tmp_path / "a" / "0").write_bytes(bomb)
    # The bomb passes the file-size check (a 1 MiB chunk); decompression must stop at 1 MiB.
    with pytest.raises(PaliError, match=r"chunk holds 1048577 bytes, expected 1048576"):
        _bounded_raise(lambda: ZarrArray.open(tmp_path, "a").read())


def _bounded_raise(run) -> None:
    tracemalloc.start()
    try:
        run()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_BOUND, f"peak {peak} bytes"


def test_bin_file_entries_must_be_named_tensors(tmp_path):
    from pali.convert import read_hf

    model = hf_siglip()
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save({"vision_model.post_layernorm.weight": 1, 3: torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PaliError, match="are not named tensors"):
        read_hf(tmp_path)
