"""Fine-tune a PaLI (or a BLIP-2 family model) on your own image-text pairs: a folder of images
plus a JSONL file.

Each line of ``DATA/data.jsonl`` is ``{"image": "cat.png", "target": "..."}``, image paths
relative to ``DATA`` (never escaping it) or absolute; an image may appear on several lines (several
captions). The target is what the decoder learns to write. The prompt that goes to the encoder
with the image is the model family's own caption prompt in ``"lang"`` (default ``en``), taken from
the processor's prompt set (PaLI's ``Generate the alt_text in en at 0: <extra_id_0>``, BLIP-2's
``a photo of``...), unless the record gives its own ``"prompt"``. The data side is ``pali.data``:
the manifest is read by its manifest source into an ``ExampleDataset`` (every row's target, image
file and prompt checked before training starts, a bad one named by file and line) and batched by
its ``Collator``.

    python examples/finetune_folder.py --model pali-demo --data my_data --out runs/mine \\
        --steps 200 --batch-size 8 --grad-accum 4 --save-every 50 --val-fraction 0.1 --eval-every 50

The loop is the plain one users write: autocast, gradient accumulation, clipping, AdamW, and a
checkpoint (model + processor, loadable with ``from_pretrained``) every ``--save-every`` steps
and at the end. The first line printed says the precision: bf16 autocast where the device
multiplies bf16 natively (CUDA, CPUs with ``avx512_bf16`` or ``amx_bf16``), fp32 elsewhere (on an
AVX2-only CPU bf16 was 6x slower); ``--bf16`` / ``--no-bf16`` decide instead.

With a validation split (``--val-fraction F`` of the pairs, or ``--val-data DIR``, a second
folder laid out the same way) it reports the validation loss, exact-match accuracy and CIDEr every
``--eval-every`` steps and at the end. ``--resume`` continues a run from ``OUT/resume`` (model,
optimizer state, step and random state, replaced atomically at every checkpoint): it ends where
the uninterrupted run would have. Start from any checkpoint folder, bundled model or Hub repo id,
e.g. a model seeded with ``PaliModel.from_unimodal`` and saved with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

import pali
import pali.eval
from pali import PaliModel, PaliProcessor
from pali.cli import run_script
from pali.data import Collator, ExampleDataset
from pali.defaults import MAX_NEW_TOKENS
from pali.errors import InputError
from pali.io import atomic_directory
from pali.tasks.heads.base import generate_texts

RESUME = "resume"
TRAINER_STATE = "trainer.pt"


def load_pairs(data: Path) -> ExampleDataset:
    """The caption examples of ``DATA/data.jsonl``, every row's target and image file checked
    before training starts (pixels are decoded only when a batch needs them)."""
    index = data / "data.jsonl"
    if not index.is_file():
        raise InputError(f"{index}: not found (one JSON object per line: image, target, and optionally prompt or lang)")
    pairs = ExampleDataset(index, "caption", target="target")
    pairs.check()
    return pairs


def split(pairs: ExampleDataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): ``fraction`` of the pairs, drawn with ``seed``, held out."""
    if not 0 <= fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {fraction}")
    held = round(len(pairs) * fraction)
    if fraction and not 0 < held < len(pairs):
        raise InputError(f"--val-fraction {fraction} of {len(pairs)} pairs leaves no validation or no training pair")
    order = list(range(len(pairs)))
    random.Random(f"split-{seed}").shuffle(order)
    val = set(order[:held])
    return (Subset(pairs, [i for i in range(len(pairs)) if i not in val]),
            Subset(pairs, [i for i in range(len(pairs)) if i in val]))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def fast_precision(device: torch.device) -> tuple[bool, str]:
    """(use bf16 autocast, why): bf16 where the device multiplies it natively, fp32 elsewhere."""
    if device.type == "cuda":
        return (True, "CUDA") if torch.cuda.is_bf16_supported() else (False, "this CUDA device has no bf16")
    native = sorted({"avx512_bf16", "amx_bf16"} & cpu_flags())
    if native:
        return True, f"the CPU multiplies bf16 natively ({', '.join(native)})"
    return False, "the CPU has no native bf16 matmul (no avx512_bf16 or amx_bf16): bf16 would be slower"


def validation_score(predictions: list[str], targets: list[str]) -> dict[str, float]:
    """The validation metrics, computed here and only here: exact-match accuracy (whitespace at
    the ends ignored) and CIDEr, each target the one reference of its pair, as
    ``pali eval captions`` scores them (``pali.eval.caption_metrics``; x100 as papers print it).
    Without the ``eval`` extra (pycocoevalcap) the CIDEr column is left out, saying so once."""
    exact = sum(p.strip() == t.strip() for p, t in zip(predictions, targets, strict=True))
    scores = {"exact_match": exact / len(targets)}
    try:
        cider = pali.eval.caption_metrics(dict(enumerate(predictions)), {i: [t] for i, t in enumerate(targets)})["CIDEr"]
    except pali.eval.MissingExtraError as e:
        if not _said_no_cider:
            print(f"validation without CIDEr: {e}", file=sys.stderr)
            _said_no_cider.append(True)
    else:
        scores["cider"] = 100 * cider
    return scores


_said_no_cider: list[bool] = []


def evaluate(model, processor, collator: Collator, val: Dataset, args, device: torch.device) -> dict[str, float]:
    """Validation loss (mean over pairs) and ``validation_score`` of greedy answers."""
    model.eval()
    loss, predictions, targets = 0.0, [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        for start in range(0, len(val), args.batch_size):
            examples = [val[i] for i in range(start, min(start + args.batch_size, len(val)))]
            batch = collator(examples)
            loss += model(**{k: v.to(device) for k, v in batch.items()}).loss.item() * len(examples)
            predictions += generate_texts(model, processor, [e["image"] for e in examples],
                                          [collator.prompt(e) for e in examples], {"max_new_tokens": args.max_new_tokens})
            targets += [e["target"] for e in examples]
    model.train()
    return {"val_loss": loss / len(val), **{f"val_{k}": v for k, v in validation_score(predictions, targets).items()}}


def save(model: PaliModel, processor: PaliProcessor, directory: Path, data: Path) -> None:
    model.save_pretrained(directory, overwrite=True, processor=processor, card={"dataset": str(data)})
    print(f"saved {directory}")


def save_state(out: Path, model, processor, optimizer, step: int, rng: random.Random, base, data: Path) -> None:
    """Everything a resumed run needs, replacing the previous state in one rename."""
    with atomic_directory(out / RESUME, overwrite=True) as tmp:
        model.save_pretrained(tmp / "model", processor=processor, card={"dataset": str(data)})
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "python_rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "base": base,
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / TRAINER_STATE)


def load_state(out: Path) -> tuple[Path, dict]:
    folder = out / RESUME
    if not (folder / TRAINER_STATE).is_file():
        raise InputError(
            f"--resume: {folder} holds no saved run (one is written at every --save-every step and at the end)"
        )
    return folder / "model", torch.load(folder / TRAINER_STATE, weights_only=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder, bundled name or Hub repo id")
    parser.add_argument("--data", type=Path, required=True, help="folder with data.jsonl and the images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (weights stay fp32) or fp32 "
                             "(default: bf16 where the device does it natively)")
    parser.add_argument("--train-vision", action="store_true", help="also train the ViT (frozen by default)")
    parser.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of the pairs")
    parser.add_argument("--val-data", type=Path, help="a validation folder laid out like --data")
    parser.add_argument("--eval-every", type=int, default=0, help="validate every N steps (0: only at the end)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="longest validation answer")
    parser.add_argument("--resume", action="store_true", help=f"continue the run saved in OUT/{RESUME}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.val_data is not None and args.val_fraction:
        parser.error("give --val-fraction or --val-data, not both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.bf16 is None:
        args.bf16, why = fast_precision(device)
    else:
        why = "as asked (--bf16)" if args.bf16 else "as asked (--no-bf16)"
    print(f"precision: {'bf16 autocast' if args.bf16 else 'fp32'} on {device.type}, {why}", flush=True)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pairs = load_pairs(args.data)
    val_pairs = load_pairs(args.val_data) if args.val_data is not None else None
    source, state = load_state(args.out) if args.resume else (args.model, None)
    model = PaliModel.from_pretrained(source).train().freeze_vision(not args.train_vision)
    processor = PaliProcessor.from_pretrained(source)
    base = state["base"] if state else model.name_or_path
    model.name_or_path = base  # the card names what the run started from, resumed or not
    collator = Collator(processor)  # the family's caption prompt, or the row's own prompt / lang
    for dataset in (pairs, val_pairs):
        if dataset is not None:
            dataset.check(collator)  # a prompt this tokenizer cannot encode: named before training
    train, val = (pairs, val_pairs) if val_pairs is not None else split(pairs, args.val_fraction, args.seed)
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    first = 1
    if state:
        optimizer.load_state_dict(state["optimizer"])
        rng.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        first = state["step"] + 1
        print(f"resumed at step {first} from {args.out / RESUME}")

    for step in tqdm(range(first, args.steps + 1), desc="fine-tuning", unit="step", initial=first - 1, total=args.steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(args.grad_accum):
            drawn = rng.sample(range(len(train)), min(args.batch_size, len(train)))
            batch = {k: v.to(device) for k, v in collator([train[i] for i in drawn]).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**batch).loss / args.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(json.dumps({"step": step, "loss": total}), flush=True)
        if len(val) and (step == args.steps or (args.eval_every and step % args.eval_every == 0)):
            print(json.dumps({"step": step, **evaluate(model, processor, collator, val, args, device)}), flush=True)
        if step == args.steps or (args.save_every and step % args.save_every == 0):
            save_state(args.out, model, processor, optimizer, step, rng, base, args.data)
            if step != args.steps:
                save(model, processor, args.out / f"step-{step}", args.data)
    save(model, processor, args.out / "final", args.data)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
