"""Train a small PaLI from scratch on a synthetic multilingual task mix, evaluate it, save it.

This is the model that ``pali demo`` runs. It trains in a plain PyTorch loop, the kind users
write: a fresh sentencepiece vocabulary from the task text, a tiny ViT + tiny mT5, AdamW with
warm-up and cosine decay, batches generated on the fly from a seeded world of coloured shapes and
rendered words (see ``synthetic.py``), then an evaluation on a held-out seed:

    python examples/train_synthetic.py --out src/pali/demo/model        # the bundled model
    python examples/train_synthetic.py --steps 60 --eval-size 10 --out /tmp/smoke   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

from pali import MT5Config, PaliConfig, PaliModel, ViTConfig  # noqa: E402
from pali.checkpoint import atomic_directory  # noqa: E402
from pali.heads.detect import DetectHead  # noqa: E402
from pali.processor import PaliProcessor, ProcessorConfig  # noqa: E402
from pali.prompts import caption_prompt, detect_prompt, ocr_prompt, vqa_prompt  # noqa: E402
from pali.tokenizer import Tokenizer  # noqa: E402


def prompt_for(example: synthetic.Example) -> str:
    if example.task == "caption":
        return caption_prompt(example.lang)
    if example.task == "vqa":
        return vqa_prompt(example.prompt_args["question"], example.lang)
    if example.task == "detect":
        return detect_prompt(example.prompt_args["label"])
    return ocr_prompt(example.lang)


def train_tokenizer(path: Path, vocab_size: int) -> Tokenizer:
    """A unigram sentencepiece model over every target and prompt the tasks can produce."""
    texts = synthetic.corpus()
    texts += [caption_prompt(lang) for lang in synthetic.LANGS] + [ocr_prompt("en")]
    texts += [detect_prompt(s) for s in synthetic.SHAPES]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        split_digits=True, minloglevel=2,  # digits one by one: coordinates become 3 easy tokens
    )
    path.write_bytes(model.getvalue())
    return Tokenizer(path)


def demo_config(vocab_size: int) -> PaliConfig:
    return PaliConfig(
        vision=ViTConfig(image_size=synthetic.IMAGE_SIZE, patch_size=8, hidden_size=128, depth=4,
                         mlp_dim=256, num_heads=4),
        text=MT5Config(vocab_size=vocab_size, d_model=128, d_ff=256, num_heads=4, d_kv=32,
                       num_encoder_layers=3, num_decoder_layers=3),
        preset="pali-demo",
    )


def batch_of(rng: random.Random, processor: PaliProcessor, size: int) -> dict[str, torch.Tensor]:
    examples = [synthetic.make_example(rng) for _ in range(size)]
    return processor([e.image for e in examples], [prompt_for(e) for e in examples], [e.target for e in examples])


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@torch.no_grad()
def evaluate(model: PaliModel, processor: PaliProcessor, seed: int, per_cell: int) -> dict[str, float]:
    """Exact match per caption language, VQA accuracy, detection IoU, OCR exact match."""
    model.eval()
    rng = random.Random(seed)
    cells = [("caption", lang) for lang in synthetic.LANGS] + [("vqa", lang) for lang in synthetic.LANGS]
    cells += [("detect", "en"), ("ocr", "en")]
    detect = DetectHead()
    scores: dict[str, list[float]] = {}
    for task, lang in cells:
        examples = [synthetic.make_example(rng, task, lang) for _ in range(per_cell)]
        for start in range(0, per_cell, 64):
            chunk = examples[start : start + 64]
            batch = processor([e.image for e in chunk], [prompt_for(e) for e in chunk])
            texts = processor.batch_decode(model.generate(**batch, max_new_tokens=40))
            for example, text in zip(chunk, texts):
                if task == "detect":
                    size = (synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE)
                    found = [d for d in detect.parse(text, image_size=size) if d.label == example.prompt_args["label"]]
                    truth = next(s for s in example.shapes if s.kind == example.prompt_args["label"])
                    overlap = iou(found[0].box, truth.box) if found else 0.0
                    scores.setdefault("detect_iou", []).append(overlap)
                    scores.setdefault("detect_hit@0.5", []).append(float(overlap >= 0.5))
                else:
                    key = f"{task}_{lang}" if task != "ocr" else "ocr"
                    scores.setdefault(key, []).append(float(text.strip() == example.target))
    model.train()
    results = {k: sum(v) / len(v) for k, v in scores.items()}
    results["vqa"] = sum(results[f"vqa_{lang}"] for lang in synthetic.LANGS) / len(synthetic.LANGS)
    results["caption"] = sum(results[f"caption_{lang}"] for lang in synthetic.LANGS) / len(synthetic.LANGS)
    return results


def evaluation_table(results: dict[str, float], per_cell: int) -> str:
    rows = [f"| caption exact match ({lang}) | {results[f'caption_{lang}']:.1%} |" for lang in synthetic.LANGS]
    rows += [f"| VQA accuracy ({lang}) | {results[f'vqa_{lang}']:.1%} |" for lang in synthetic.LANGS]
    rows += [
        f"| detection mean IoU | {results['detect_iou']:.3f} |",
        f"| detection hit rate at IoU 0.5 | {results['detect_hit@0.5']:.1%} |",
        f"| OCR exact match | {results['ocr']:.1%} |",
    ]
    return f"| metric ({per_cell} held-out examples each) | value |\n|---|---|\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to save the model into")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--eval-size", type=int, default=100, help="held-out examples per metric")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10, help="keep every Nth step in loss_log.jsonl")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="train in fp32 instead of bf16 autocast (weights stay fp32 either way)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    scratch = Path(tempfile.mkdtemp(prefix="pali-train-"))
    tokenizer = train_tokenizer(scratch / "spiece.model", args.vocab_size)
    processor = PaliProcessor(tokenizer, ProcessorConfig(image_size=synthetic.IMAGE_SIZE, max_length=32,
                                                         max_target_length=40))
    model = PaliModel(demo_config(tokenizer.vocab_size)).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98))
    log = []
    start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch_of(rng, processor, args.batch_size)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.append({"step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
        progress.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start

    results = evaluate(model, processor, args.eval_seed, args.eval_size)
    table = evaluation_table(results, args.eval_size)
    print(table)
    command = "python examples/train_synthetic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    training = {
        "command": command, "seed": args.seed, "eval_seed": args.eval_seed, "steps": args.steps,
        "batch_size": args.batch_size, "train_seconds": round(train_seconds, 1),
        "threads": args.threads, "bf16_autocast": args.bf16, "torch": torch.__version__,
        "final_loss": log[-1]["loss"],
    }
    card = (
        "\n## How it was made\n\nTrained from scratch by `examples/train_synthetic.py` on a synthetic "
        "multilingual world of coloured shapes and rendered words (captions and VQA in English, French, "
        "German, Chinese and Hindi; detection; OCR). It demonstrates the pipeline; it knows nothing of "
        "real images.\n\n"
        f"- command: `{command}`\n- seed: {args.seed} (evaluation seed {args.eval_seed})\n"
        f"- training: {args.steps} steps of {args.batch_size} examples, {train_seconds / 60:.1f} min on "
        f"{args.threads} CPU threads (torch {torch.__version__})\n\n## Evaluation\n\n{table}\n"
    )
    with atomic_directory(args.out, overwrite=args.force) as staging:
        model.save_pretrained(staging, overwrite=True, processor=processor, license="apache-2.0")
        with open(staging / "README.md", "a") as f:
            f.write(card)
        (staging / "evaluation.json").write_text(
            json.dumps({"training": training, "results": results}, indent=2) + "\n"
        )
        (staging / "loss_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log[:: args.log_every]))
    print(f"saved to {args.out} after {train_seconds / 60:.1f} min of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
