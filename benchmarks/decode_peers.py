"""CPU decoding against CTranslate2, the engine people pick to run T5-family models fast on a CPU.

One mT5-small shape (vocab 250112, d_model 512, 8+8 layers) with seeded random weights is built
as a transformers ``MT5ForConditionalGeneration``; CTranslate2 converts that very module with its
own T5 loader (no checkpoint on disk is read: a stand-in tokenizer gives the vocabulary), and
pali loads the same state dict through ``pali.convert.hf``'s key maps. Every row feeds 206
random input ids (as many as PaLI's 196 visual tokens plus a 10-id prompt) and forces 32
decoding steps (minimum = maximum length, eos disabled), at 2 threads unless told otherwise.

Tokens are compared first: every pali fp32 engine (as it is, compiled, its output layer packed
by ``pali.quantize(model, "fp32", screen=False)`` or screened by ``pali.quantize(model, "fp32")``)
must equal transformers (the script exits otherwise);
agreement with CTranslate2 and of pali's reduced-precision paths with pali fp32 is reported.
Then each row times every engine, interleaved rep by rep so machine noise hits them alike, and
prints the median tokens/s with its spread (min-max), the ratios against CTranslate2 fp32 and
int8 (the median of each repetition's own ratio: the machine drifts over a row), and pali's
decode step as a multiple of the memory floor: the bytes of weights one step reads divided by
the fastest memory traffic this machine showed in the same repetition, a sum over a 1 GiB tensor
on 2 MB pages (bytes read per second; the weights are on 2 MB pages too: ``pali.nn.hugepages``)
or a copy of one (bytes read + written per second), whichever was faster: step and floor are
paired by repetition, and the floor is the strictest bandwidth measured. Then the
milliseconds per extra token at greedy b1 (an n-token generation minus a 1-token one, over
n - 1), pali fp32 against CTranslate2 fp32: the steps without the fixed part. A last table times
the full PaLI path with images (SigLIP-B/16 + projection + the same mT5), pali against
transformers.

Each CTranslate2 compute type runs in a process of its own (``ct2_server.py``), as a user runs
it; this process only converts the model. In one process with torch, CTranslate2's OpenMP calls
bind to torch's ``libgomp`` (loaded globally), and two translators in one process give
CTranslate2's own ``libgomp`` two thread teams: either way the runtime manages more threads
than there are cores, and its waiting threads sleep at every parallel region instead of
spinning. Measured here (2 cores, greedy batch 1): CTranslate2 fp32 took 0.52 s alone, 0.67 s
in torch's process and 0.70 s next to an int8 translator; pali's split products lost as much.

    python benchmarks/decode_peers.py              # full size, 2 threads, median of 5
    python benchmarks/decode_peers.py --quick      # tiny sizes, one repetition (tests run this)
    python benchmarks/decode_peers.py --out benchmarks/results/decode_peers.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import FULL, QUICK, Reference, inputs, ours_from  # noqa: E402  (the same PaLI build)

import pali  # noqa: E402
from pali.nn.hugepages import collapse  # noqa: E402
from pali.nn.screen import can_screen  # noqa: E402

ROWS = [("greedy b1", 1, 1), ("greedy b8", 8, 1), ("beam b1 x4", 1, 4)]  # (name, batch, beams)
INPUT_LEN = 206
FULL_PEERS = dict(FULL, new_tokens=32, reps=5)
QUICK_PEERS = dict(QUICK, new_tokens=8, reps=1)


# -- CTranslate2, converted from the transformers module in memory --------------------------------


class _Vocab:
    """What CTranslate2's T5 loader reads from a tokenizer: the vocabulary and the special tokens."""

    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, size: int) -> None:
        self.tokens = [self.pad_token, self.eos_token, self.unk_token] + [f"t{i}" for i in range(3, size)]

    def get_vocab(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i: int) -> str:
        return self.tokens[i]


class Ct2Process:
    """A CTranslate2 translator of one compute type in its own process (``ct2_server.py``)."""

    def __init__(self, model_dir: str, compute_type: str, threads: int) -> None:
        server = Path(__file__).with_name("ct2_server.py")
        self.proc = subprocess.Popen([sys.executable, str(server), model_dir, compute_type, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"ctranslate2 ({compute_type}) did not start: exit code {self.proc.wait()}")

    def translate(self, source: list[list[str]], beams: int, steps: int) -> list[list[str]]:
        self.proc.stdin.write(json.dumps(dict(source=source, beams=beams, steps=steps)) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def ct2_translators(hf_text, threads: int, model_dir: str, compute_types=("float32", "int8")):
    """``{compute_type: Ct2Process}`` over ``hf_text``'s own tensors, converted into
    ``model_dir``, and the vocab."""
    from ctranslate2.converters.transformers import TransformersConverter

    vocab = _Vocab(hf_text.config.vocab_size)

    class InMemory(TransformersConverter):
        def _load(self):  # the loader for this config class, applied to the live module
            from ctranslate2.converters.transformers import _MODEL_LOADERS

            return _MODEL_LOADERS[type(hf_text.config).__name__](hf_text, vocab)

    InMemory("in-memory").convert(model_dir, force=True)
    return {c: Ct2Process(model_dir, c, threads) for c in compute_types}, vocab


def ct2_engine(translator: Ct2Process, vocab: _Vocab, steps: int, beams: int):
    index = vocab.get_vocab()

    def run(ids: torch.Tensor) -> torch.Tensor:
        source = [[vocab.tokens[i] for i in row] for row in ids.tolist()]
        return torch.tensor([[index[t] for t in hyp] for hyp in translator.translate(source, beams, steps)])

    return run


# -- pali and transformers ------------------------------------------------------------------------


def pali_engine(model, steps: int, beams: int, **options):
    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(input_ids=ids, max_new_tokens=steps, num_beams=beams, eos_token_id=-1, **options)

    return run


def hf_engine(hf_text, steps: int, beams: int):
    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = hf_text.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   num_beams=beams, max_new_tokens=steps, min_new_tokens=steps)
        return out[:, 1:]  # transformers keeps the decoder start token

    return run


# -- measuring ------------------------------------------------------------------------------------


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def memory_read(mib: int):
    """A sum over a large tensor on 2 MB pages (as the weights are), timed as one more engine of a
    row, and the bytes it reads: what a decoding step does with its weights."""
    buffer = torch.ones(mib * 2**20 // 4)
    collapse(buffer)
    buffer.sum()
    return (lambda *_: buffer.sum()), buffer.numel() * 4


def memory_copy(mib: int):
    """A large tensor copy on 2 MB pages, timed as one more engine of a row, and the bytes it
    moves (read plus written). On this machine it moved more bytes per second than the sum read
    at some moments (72 against 56 GB/s), and a step read its weights faster than the sum did:
    the floor takes the faster of the two."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    for buffer in (src, dst):
        collapse(buffer)
    dst.copy_(src)
    return (lambda *_: dst.copy_(src)), 2 * src.numel() * 4


def weight_bytes_per_step(model, greedy: bool) -> int:
    """Bytes of the weights one decoding step reads: the decoder's layers (cross-attention keys and
    values are projected once per generation, the embedding table is read one row per token)
    and the output layer. Packed layers (int8, bf16, fp32) count their ``weight_bytes``; a
    screened output layer its bf16 screen in a greedy step (``argmax_bytes``)."""
    text = model.text
    total = 0
    for root, skip in ((text.decoder, (".cross_attn.k", ".cross_attn.v", ".kv_cache")), (text.lm_head, ())):
        for name, module in root.named_modules():
            if any(f".{name}".startswith(s) or f".{name}".endswith(s) for s in skip):
                continue
            total += getattr(module, "argmax_bytes" if greedy and hasattr(module, "argmax_bytes") else "weight_bytes", 0)
            for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                total += t.numel() * t.element_size()
    return total


def input_ids(batch: int, length: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + batch)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    ids[:, -1] = 1  # ends with eos, as a tokenizer writes it
    return ids


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    n = min(a.shape[1], b.shape[1])
    return float((a[:, :n] == b[:, :n]).float().mean()) if n else 0.0


def spread(times: list[float], tokens: int) -> dict:
    tps = sorted(tokens / t for t in times)
    return dict(tok_s=statistics.median(tps), min=tps[0], max=tps[-1], seconds=statistics.median(times), times=times)


def paired(engine: dict, peer: dict) -> float:
    """How many times faster ``engine`` ran than ``peer``: the median over repetitions of the two
    runs of one repetition (seconds apart), which the machine's drift over a row hits alike; a
    ratio of the two medians mixes minutes apart on this shared machine."""
    return statistics.median(p / e for e, p in zip(engine["times"], peer["times"]))


def measure(engines: dict, args: tuple, tokens: int, reps: int) -> dict:
    """Every engine once per rep, in a rotating order (no engine always runs first or last)."""
    times = {name: [] for name in engines}
    names = list(engines)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times[name].append(timed(engines[name], *args))
    return {name: spread(t, tokens) for name, t in times.items()}


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'row':<12}" + "".join(f"{c:>20}" for c in columns))
    for r in rows:
        cells = "".join(
            f"{r['engines'][c]['tok_s']:>8.1f} ({r['engines'][c]['min']:.1f}-{r['engines'][c]['max']:.1f})".rjust(20)
            if c in r["engines"] else f"{'-':>20}"
            for c in columns
        )
        print(f"{r['row']:<12}{cells}")


# -- main -----------------------------------------------------------------------------------------


def variants(ours, compile_rows: bool) -> dict:
    """The pali models timed: fp32 (eager and compiled; as it is, its output layer packed for
    oneDNN by ``pali.quantize(model, "fp32", screen=False)``, and screened by
    ``pali.quantize(model, "fp32")`` where the CPU has bf16 instructions), int8 and bf16 weights."""
    models = {"pali fp32": (ours, {})}
    if compile_rows:
        models["pali fp32 compiled"] = (ours, {"compile": True})
    fp32 = {"packed": pali.quantize(text_copy(ours), "fp32", screen=False)}
    if can_screen():
        fp32["screened"] = pali.quantize(text_copy(ours), "fp32", screen=True)
    for name, model in fp32.items():
        models[f"pali fp32 {name}"] = (model, {})
        if compile_rows:
            models[f"pali fp32 {name} compiled"] = (model, {"compile": True})
    models["pali int8"] = (pali.quantize(text_copy(ours), "int8"), {})
    models["pali bf16"] = (pali.quantize(text_copy(ours), "bf16"), {})
    return models


def text_copy(model):
    """``model`` with its own text encoder and decoder (and output layer, which ``quantize``
    replaces), sharing the vision tower, connector and embedding: the weights ``quantize`` may
    convert are copied, the rest is shared."""
    text = copy.copy(model.text)
    text._modules = dict(model.text._modules, decoder=copy.deepcopy(model.text.decoder),
                         encoder=copy.deepcopy(model.text.encoder))
    clone = copy.copy(model)
    clone._modules = dict(model._modules, text=text)
    return clone


def text_rows(ref, ours, sizes, args) -> tuple[list[dict], dict]:
    """The text rows, and the milliseconds per extra token at greedy b1 (``per_token``)."""
    hf_text = ref.text
    length = INPUT_LEN if not args.quick else 12
    models = variants(ours, args.compile)
    with tempfile.TemporaryDirectory() as ct2_dir:
        translators, ct2_vocab = ct2_translators(hf_text, args.threads, ct2_dir) if args.ctranslate2 else ({}, None)
        try:
            rows = [text_row(row, models, translators, ct2_vocab, hf_text, args, length, sizes) for row in ROWS]
            eager = {label: model for label, (model, options) in models.items()
                     if label in ("pali fp32", "pali fp32 screened")}
            return rows, per_token(eager, translators.get("float32"), ct2_vocab, args, length, sizes)
        finally:
            for translator in translators.values():
                translator.close()


def per_token(models: dict, translator, ct2_vocab, args, length, sizes) -> dict:
    """Milliseconds per extra token at greedy b1, the pali fp32 ``models`` (by label) and
    CTranslate2 fp32: (an n-token generation - a 1-token one) / (n - 1), paired per repetition,
    so the fixed part (the encoder, the cross-attention projection) cancels and the decode steps
    remain."""
    n, ids = sizes["new_tokens"], input_ids(1, length, sizes["text"]["vocab_size"])
    engines = {}
    for steps in (1, n):
        for label, model in models.items():
            engines[f"{label} {steps}"] = pali_engine(model, steps, 1)
        if translator is not None:
            engines[f"ct2 float32 {steps}"] = ct2_engine(translator, ct2_vocab, steps, 1)
    for engine in engines.values():
        engine(ids)
    result = measure(engines, (ids,), 1, args.reps)
    return {name: 1e3 * statistics.median((long - one) / (n - 1) for one, long in
                                          zip(result[f"{name} 1"]["times"], result[f"{name} {n}"]["times"]))
            for name in (*models, "ct2 float32") if f"{name} 1" in result}


def text_row(row, models, translators, ct2_vocab, hf_text, args, length, sizes) -> dict:
    """One row (name, batch, beams): tokens compared, then every engine timed."""
    name, batch, beams = row
    steps, vocab = sizes["new_tokens"], sizes["text"]["vocab_size"]
    ids = input_ids(batch, length, vocab)
    engines = {"transformers": hf_engine(hf_text, steps, beams)}
    for label, (model, options) in models.items():
        engines[label] = pali_engine(model, steps, beams, **options)
    for compute_type, translator in translators.items():
        engines[f"ct2 {compute_type}"] = ct2_engine(translator, ct2_vocab, steps, beams)
    tokens = {label: fn(ids) for label, fn in engines.items()}  # also the warm-up (and compilation)
    for label in (label for label in tokens if label.startswith("pali fp32")):
        if not torch.equal(tokens[label], tokens["transformers"]):
            raise SystemExit(f"{name}: {label} tokens differ from transformers\n"
                             f"{label} {tokens[label]}\ntransformers {tokens['transformers']}")
    agree = {label: agreement(t, tokens["pali fp32"]) for label, t in tokens.items()}
    mib = 64 if args.quick else 1024
    engines["memory read"], read_bytes = memory_read(mib)
    engines["memory copy"], copied = memory_copy(mib)
    result = measure(engines, (ids,), batch * steps, args.reps)
    read, copying = result.pop("memory read"), result.pop("memory copy")
    # Per repetition, the faster of the read and the copy (this shared machine's bandwidth moved
    # between 45 and 75 GB/s from one run to the next, and within one).
    bandwidth = [max(read_bytes / r, copied / c) for r, c in zip(read["times"], copying["times"])]
    row = dict(row=name, batch=batch, beams=beams, steps=steps, engines=result, agreement_with_pali_fp32=agree,
               read_gb_s=read_bytes / read["seconds"] / 1e9, copy_gb_s=copied / copying["seconds"] / 1e9,
               bandwidth_gb_s=[b / 1e9 for b in bandwidth])
    for label, (model, _) in models.items():
        with torch.no_grad():  # each model's own encoder (quantize may convert it)
            encode = statistics.median(timed(model.encode, None, ids) for _ in range(max(3, args.reps)))
        step = [(seconds - encode) / steps for seconds in result[label]["times"]]
        floor = [weight_bytes_per_step(model, greedy=beams == 1) / b for b in bandwidth]
        result[label].update(step_ms=statistics.median(step) * 1e3, floor_ms=statistics.median(floor) * 1e3,
                             vs_floor=statistics.median(s / f for s, f in zip(step, floor)))
        for peer in ("ct2 float32", "ct2 int8"):
            if peer in result:
                result[label][f"vs {peer}"] = paired(result[label], result[peer])
    print(f"{name}: " + ", ".join(f"{k} {v['tok_s']:.1f} tok/s" for k, v in result.items())
          + f"; memory read {row['read_gb_s']:.1f} GB/s, copy {row['copy_gb_s']:.1f} GB/s", flush=True)
    return row


def image_rows(ref, ours, sizes, args) -> list[dict]:
    steps = sizes["new_tokens"]
    rows = []
    for name, batch, beams in ROWS:
        px, ids, mask = inputs(sizes, batch, torch.device("cpu"))
        kwargs = dict(max_new_tokens=steps, num_beams=beams)

        def theirs():
            return ref.generate(px, ids, mask, min_new_tokens=steps, **kwargs)

        def ours_run():
            with torch.no_grad():
                return ours.generate(px, ids, mask, eos_token_id=-1, **kwargs)

        if not torch.equal(ours_run(), theirs()):
            raise SystemExit(f"{name} with images: pali tokens differ from transformers")
        result = measure({"pali fp32": ours_run, "transformers": theirs}, (), batch * steps, args.reps)
        result["pali fp32"]["vs transformers"] = paired(result["pali fp32"], result["transformers"])
        rows.append(dict(row=name, batch=batch, beams=beams, steps=steps, engines=result))
    return rows


def compile_child(quick: bool, threads: int) -> None:
    """In a fresh process: seconds of the first ``generate(compile=True)`` (compilation, or loading
    it from the on-disk cache) and of the next one, for greedy batch 1."""
    torch.set_num_threads(threads)
    sizes = QUICK_PEERS if quick else FULL_PEERS
    torch.manual_seed(0)
    model = ours_from(Reference(sizes)).eval()
    ids = input_ids(1, 12 if quick else INPUT_LEN, sizes["text"]["vocab_size"])
    run = pali_engine(model, sizes["new_tokens"], 1, compile=True)
    first = timed(run, ids)
    print(json.dumps(dict(first_s=first, second_s=timed(run, ids))))


def compile_starts(args) -> dict:
    """A cold start (empty compile cache) and a warm start (a second process, same cache on disk)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        command = [sys.executable, __file__, "--compile-child", "--threads", str(args.threads)] + (["--quick"] * args.quick)
        starts = {}
        for name in ("cold", "warm"):
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            starts[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return starts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions per row (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and CTranslate2 intra_threads")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time generate(compile=True) too (default: on, off with --quick)")
    parser.add_argument("--no-images", dest="images", action="store_false", help="skip the full PaLI path")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_child:
        return compile_child(args.quick, args.threads)
    sizes = QUICK_PEERS if args.quick else FULL_PEERS
    args.reps = args.reps or sizes["reps"]
    args.compile = (not args.quick) if args.compile is None else args.compile
    torch.set_num_threads(args.threads)
    try:
        from ctranslate2 import __version__ as ct2_version
        args.ctranslate2 = True
    except ImportError:
        args.ctranslate2, ct2_version = False, None
        print('CTranslate2 is not installed (pip install ctranslate2): its columns are skipped')
    torch.manual_seed(0)
    ref = Reference(sizes).eval()
    ours = ours_from(ref)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, ctranslate2 {ct2_version}, "
          f"{platform.processor() or platform.machine()}, {args.threads} threads, {sizes['new_tokens']} forced steps, "
          f"median of {args.reps} (min-max), engines interleaved")
    rows, per_token_ms = text_rows(ref, ours, sizes, args)
    columns = list(rows[0]["engines"])
    print_table(f"mT5 text-only input of {INPUT_LEN if not args.quick else 12} ids: tok/s, median (min-max)", rows, columns)
    print(f"\n{'row':<12}{'engine':<22}{'vs CT2 fp32':>12}{'vs CT2 int8':>12}{'agree':>8}"
          f"{'step ms':>9}{'floor ms':>9}{'x floor':>9}")
    for r in rows:
        for label, e in r["engines"].items():
            if "step_ms" not in e:
                continue
            vs = [f"{e[k]:.2f}x" if k in e else "-" for k in ("vs ct2 float32", "vs ct2 int8")]
            print(f"{r['row']:<12}{label:<22}{vs[0]:>12}{vs[1]:>12}{r['agreement_with_pali_fp32'][label]:>8.3f}"
                  f"{e['step_ms']:>9.1f}{e['floor_ms']:>9.1f}{e['vs_floor']:>8.2f}x")
    for r in rows:
        ct2 = {k: v for k, v in r["agreement_with_pali_fp32"].items() if k.startswith("ct2")}
        if ct2:
            print(f"{r['row']}: token agreement with pali fp32: " + ", ".join(f"{k} {v:.3f}" for k, v in ct2.items()))
    print("ms per extra token at greedy b1 (n-token minus 1-token generation, paired): "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_token_ms.items()))
    starts = compile_starts(args) if args.compile else {}
    for name, r in starts.items():
        print(f"generate(compile=True), {name} start (new process{', cache on disk' if name == 'warm' else ''}): "
              f"first call {r['first_s']:.1f} s, second {r['second_s']:.2f} s (greedy b1)")
    images = image_rows(ref, ours, sizes, args) if args.images else []
    if images:
        print_table("Full PaLI path with images (pali fp32 vs transformers): tok/s, median (min-max)", images,
                    ["pali fp32", "transformers"])
        for r in images:
            print(f"{r['row']}: pali / transformers {r['engines']['pali fp32']['vs transformers']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            benchmark="decode_peers", command="python " + " ".join(["benchmarks/decode_peers.py", *(argv or sys.argv[1:])]),
            versions=dict(torch=torch.__version__, transformers=transformers.__version__, ctranslate2=ct2_version),
            threads=args.threads, reps=args.reps, text_rows=rows, per_token_ms=per_token_ms, image_rows=images,
            compile_starts=starts, ct2="one process per compute type (ct2_server.py)",
        ), indent=1) + "\n")


if __name__ == "__main__":
    main()
