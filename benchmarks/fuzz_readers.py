"""Coverage-guided fuzzing of pali's checkpoint and input readers with atheris (libFuzzer).

Outside CI: ``pip install atheris`` (a wheel for CPython 3.11 on x86_64 Linux), then

    python benchmarks/fuzz_readers.py seeds CORPUS          # valid inputs to start from
    python benchmarks/fuzz_readers.py npz CORPUS/npz -max_total_time=600 -timeout=10 -rss_limit_mb=3072

Targets, one per reader: ``npz`` (big_vision .npz, planned and fully read), ``t5x`` (the msgpack
tree of a T5X checkpoint beside valid zarr arrays, planned and fully read), ``zarr`` (a ``.zarray``
and its chunk file), ``safetensors`` (``from_pretrained``'s header parsing, checks against the
model and tensor reads), ``config`` (``config.json`` as a PaLI or tower config) and ``text`` (the
tokenizer and processor on arbitrary strings and id lists).

The contract under test: every input either loads or raises ``pali.PaliError``; anything
else (another exception, a hang past ``-timeout``, memory past ``-rss_limit_mb``) is a finding.
``MAX_TENSOR_BYTES`` is lowered to 64 MiB here so that the memory bound is tight enough to
notice an allocation that escapes the checks. Findings become regression tests in
``tests/test_robustness_*.py``; figures are in ``docs/reliability.md``.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import safetensors  # noqa: F401  (imported before instrumentation: only pali is instrumented)
import torch


import atheris  # noqa: E402

with atheris.instrument_imports(include=["pali"]):
    import pali.io.guards
    from pali import PaliError
    from pali.config import PaliConfig
    from pali.convert import load_config, read_big_vision, read_t5x
    from pali.convert.zarr import ZarrArray
    from pali.io import list_tensors
    from pali.io.loading import verify

pali.io.guards.MAX_TENSOR_BYTES = 64 << 20
warnings.simplefilter("ignore")
WORK = Path(tempfile.mkdtemp(prefix="pali-fuzz-"))


def _tiny_model():
    from pali import PaliModel

    torch.manual_seed(0)
    return PaliModel.from_preset("pali-tiny")


# -- seeds ---------------------------------------------------------------------------------------


def _npz_seed() -> bytes:
    from pali.testing.big_vision import big_vision_names

    from pali.testing.hf_reference import hf_siglip

    model = hf_siglip()
    arrays = big_vision_names(model.state_dict(), model.config.num_attention_heads)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _t5x_dir(directory: Path) -> Path:
    from pali.testing.t5x import t5x_names, write_t5x

    from pali.config.presets import get_config
    from pali.models.text.mt5 import MT5

    torch.manual_seed(0)
    params = t5x_names(MT5(get_config("mt5-tiny")).state_dict())
    half = [n for i, n in enumerate(params) if i % 2]  # half inline (in the msgpack), half zarr
    return write_t5x(directory, params, inline_names=half,
                     compressor=lambda name: ("gzip", "zstd", None)[len(name) % 3])


def make_seeds(corpus: Path) -> None:
    """One directory of valid inputs per target."""
    for target in TARGETS:
        (corpus / target).mkdir(parents=True, exist_ok=True)
    (corpus / "npz" / "siglip.npz").write_bytes(_npz_seed())
    t5x = _t5x_dir(WORK / "seed_t5x")
    (corpus / "t5x" / "checkpoint").write_bytes((t5x / "checkpoint").read_bytes())
    for array in sorted(p for p in t5x.iterdir() if p.is_dir())[:6]:
        chunk = next(p for p in sorted(array.iterdir()) if p.name != ".zarray")
        meta = (array / ".zarray").read_bytes()
        (corpus / "zarr" / array.name).write_bytes(len(meta).to_bytes(4, "little") + meta + chunk.read_bytes())
    saved = _tiny_model().save_pretrained(WORK / "seed_model")
    (corpus / "safetensors" / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    (corpus / "config" / "pali.json").write_bytes((saved / "config.json").read_bytes())
    (corpus / "config" / "vit.json").write_text(json.dumps({"kind": "vit", "image_size": 32, "patch_size": 8,
                                                            "hidden_size": 16, "depth": 1, "mlp_dim": 16,
                                                            "num_heads": 2}))
    (corpus / "text" / "prompt").write_bytes("Answer in en: what colour is the car? <extra_id_0>".encode())


# -- targets -------------------------------------------------------------------------------------


def _expect_pali_error(run) -> None:
    try:
        run()
    except PaliError:
        pass


def fuzz_npz(data: bytes) -> None:
    path = WORK / "x.npz"
    path.write_bytes(data)
    _expect_pali_error(lambda: read_big_vision(path).state_dict())


T5X_DIR: Path | None = None


def fuzz_t5x(data: bytes) -> None:
    global T5X_DIR
    if T5X_DIR is None:
        T5X_DIR = _t5x_dir(WORK / "t5x")
    (T5X_DIR / "checkpoint").write_bytes(data)
    _expect_pali_error(lambda: read_t5x(T5X_DIR).state_dict())


def fuzz_zarr(data: bytes) -> None:
    root = WORK / "zarr"
    shutil.rmtree(root, ignore_errors=True)
    (root / "a").mkdir(parents=True)
    n = int.from_bytes(data[:4], "little") % (len(data) + 1)
    (root / "a" / ".zarray").write_bytes(data[4 : 4 + n])
    for key in ("0", "0.0", "0.0.0", "1.0"):  # whatever the grid asks for first
        (root / "a" / key).write_bytes(data[4 + n :])
    _expect_pali_error(lambda: ZarrArray.open(root, "a").read())


EXPECTED: dict | None = None


def fuzz_safetensors(data: bytes) -> None:
    global EXPECTED
    if EXPECTED is None:
        with torch.device("meta"):
            EXPECTED = _tiny_model().state_dict()
    folder = WORK / "st"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(data)

    def run():
        entries, _ = list_tensors(folder)
        entries = verify(entries, EXPECTED, source=str(folder), strict=False)
        with open(folder / "model.safetensors", "rb") as f:
            for stored in entries.values():
                stored.read(f)

    _expect_pali_error(run)


def fuzz_config(data: bytes) -> None:
    folder = WORK / "cfg"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(data)
    _expect_pali_error(lambda: load_config(folder))
    _expect_pali_error(lambda: PaliConfig.from_json(data.decode("utf-8", "replace")))


PROCESSOR = None


def fuzz_text(data: bytes) -> None:
    global PROCESSOR
    if PROCESSOR is None:
        from pali.testing.spm import train_spm

        from pali import PaliProcessor, Tokenizer

        PROCESSOR = PaliProcessor(Tokenizer(train_spm(WORK / "spm")))
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicode(200)
    ids = fdp.ConsumeIntListInRange(20, -5, 300)
    truncation = fdp.ConsumeBool()
    _expect_pali_error(lambda: PROCESSOR(text=[text], suffix=[text], truncation=truncation))
    _expect_pali_error(lambda: PROCESSOR.decode(ids))
    image = np.frombuffer(fdp.ConsumeBytes(48).ljust(48, b"\0"), np.uint8).reshape(4, 4, 3)
    _expect_pali_error(lambda: PROCESSOR(images=image.astype(fdp.PickValueInList([np.uint8, np.float32])),
                                         text="caption en"))


TARGETS = {"npz": fuzz_npz, "t5x": fuzz_t5x, "zarr": fuzz_zarr, "safetensors": fuzz_safetensors,
           "config": fuzz_config, "text": fuzz_text}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in (*TARGETS, "seeds"):
        sys.exit(f"usage: {sys.argv[0]} {{seeds,{','.join(TARGETS)}}} CORPUS_DIR [libFuzzer options]")
    target = sys.argv[1]
    if target == "seeds":
        make_seeds(Path(sys.argv[2]))
        return
    atheris.Setup([sys.argv[0], *sys.argv[2:]], TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
