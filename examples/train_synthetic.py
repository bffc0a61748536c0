"""Train a small PaLI from scratch on a synthetic multilingual task mix, evaluate it, save it.

This is the model that ``pali demo`` runs. It trains in plain PyTorch loops, the kind users
write: a fresh sentencepiece vocabulary from the task text, a tiny ViT + tiny mT5, AdamW with
warm-up and cosine decay, batches generated on the fly from a seeded world of coloured shapes and
rendered words (see ``synthetic.py``). Like PaLI, which reuses a pretrained ViT, it has two
stages: the ViT is first pretrained alone on the world's labels (``pretrain_vision``), then
the whole model learns the task mix. Last comes an evaluation on a held-out seed. The exact
command of the bundled model is in its model card (``src/pali/bundled/pali-demo/README.md``);
a smoke run:

    python examples/train_synthetic.py --steps 60 --vision-steps 10 --eval-size 10 --out /tmp/smoke
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

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402

from pali import MT5Config, PaliConfig, PaliModel, ViTConfig  # noqa: E402
from pali.cli import run_script  # noqa: E402
from pali.io import atomic_directory  # noqa: E402
from pali.tasks.heads.detect import DetectHead, box_iou  # noqa: E402
from pali.processing.processor import PaliProcessor, ProcessorConfig  # noqa: E402
from pali.processing.prompts import caption_prompt, detect_prompt, ocr_prompt, vqa_prompt  # noqa: E402
from pali.processing.tokenizer import Tokenizer  # noqa: E402


def prompt_for(example: synthetic.Example) -> str:
    if example.task == "caption":
        return caption_prompt(example.lang)
    if example.task == "vqa":
        return vqa_prompt(example.prompt_args["question"], example.lang)
    if example.task == "detect":
        return detect_prompt(example.prompt_args["label"])
    return ocr_prompt(example.lang)


def train_tokenizer(path: Path, vocab_size: int, seed: int) -> Tokenizer:
    """A BPE sentencepiece model over the text the tasks produce, weighted as training sees it.

    Every string the world can say (``synthetic.corpus()``) guarantees coverage; a seeded sample
    of prompts and targets gives the frequencies, so prompt words and whole questions become
    single pieces and the encoder sequence stays short. (The unigram trainer left this small
    corpus spelled letter by letter, doubling the prompt length.)
    """
    rng = random.Random(seed)
    sample = [synthetic.make_example(rng) for _ in range(4000)]
    texts = synthetic.corpus() + [prompt_for(e) for e in sample] + [e.target for e in sample]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
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


class VisionProbe(nn.Module):
    """Linear read-outs of the vision tower for its pretraining stage.

    PaLI starts from a ViT pretrained elsewhere (JFT classification); no such tower exists for
    this synthetic world, so the example pretrains its own on the world's labels. Per token it
    predicts the patch's shape kind, colour, the box of the shape it belongs to and the letter
    printed on it; from the mean token it predicts, per shape kind, presence, colour and box, and
    which word is printed. Without this stage the language side learns the task priors first and
    ignores the image for thousands of steps (measured: the loss did not change when the images
    of a batch were shuffled, after 2000 steps); without the letters, OCR stayed below 10%.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        kinds, colors, letters = len(synthetic.SHAPES), len(synthetic.COLORS), len(synthetic.ALPHABET)
        self.splits = (1 + kinds, 1 + colors, 4, 1 + letters)
        self.patch = nn.Linear(width, sum(self.splits))
        self.scene = nn.Linear(width, kinds * (1 + (1 + colors) + 4))
        self.word = nn.Linear(width, 1 + len(synthetic.WORDS))

    def loss(self, tokens: torch.Tensor, patch: dict[str, torch.Tensor], scene: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = tokens.float()
        kind, color, box, char = self.patch(tokens).split(self.splits, dim=-1)
        on_shape = (patch["kind"] > 0).float()
        loss = F.cross_entropy(kind.flatten(0, 1), patch["kind"].flatten())
        loss = loss + F.cross_entropy(color.flatten(0, 1), patch["color"].flatten())
        loss = loss + 4 * ((box - patch["box"]).abs().sum(-1) * on_shape).sum() / on_shape.sum().clamp(min=1)
        loss = loss + F.cross_entropy(char.flatten(0, 1), patch["char"].flatten())
        pooled = tokens.mean(1)
        present, color, box = self.scene(pooled).view(len(tokens), len(synthetic.SHAPES), -1).split(
            (1, self.splits[1], 4), dim=-1)
        loss = loss + F.binary_cross_entropy_with_logits(present.squeeze(-1), scene["present"])
        loss = loss + F.cross_entropy(color.flatten(0, 1), scene["color"].flatten())
        loss = loss + F.cross_entropy(self.word(pooled), scene["word"])
        shown = scene["present"]
        return loss + 4 * ((box - scene["box"]).abs().sum(-1) * shown).sum() / shown.sum().clamp(min=1)


def pretrain_vision(model: PaliModel, processor: PaliProcessor, rng: random.Random, steps: int, batch_size: int,
                    lr: float, bf16: bool) -> list[dict]:
    """Stage 1: the vision tower alone against ``VisionProbe``'s targets (the probe is dropped).

    Scenes and words are drawn as often as each other, so the tower learns letters as well as shapes.
    """
    vit = model.vision
    grid = vit.config.image_size // vit.config.patch_size
    probe = VisionProbe(vit.config.hidden_size)
    params = list(vit.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    log = []
    for step in tqdm(range(steps), desc="vision pretraining", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, max(1, steps // 10))
        examples = [synthetic.make_example(rng, rng.choice(("caption", "detect", "ocr"))) for _ in range(batch_size)]
        patch = _stack([synthetic.patch_targets(e, grid) for e in examples], flatten=True)
        scene = _stack([synthetic.scene_targets(e) for e in examples])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            tokens = vit(processor.image_processor([e.image for e in examples]))
        loss = probe.loss(tokens, patch, scene)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        log.append({"stage": "vision", "step": step, "loss": loss.item()})
    return log


def _stack(rows: list[dict[str, np.ndarray]], flatten: bool = False) -> dict[str, torch.Tensor]:
    """Batch per-example target dicts; ``flatten`` turns ``[grid, grid, ...]`` into ``[tokens, ...]``."""
    out = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
    return {k: v.flatten(1, 2) for k, v in out.items()} if flatten else out


def parse_mix(text: str) -> tuple[str, ...]:
    """``caption=2,vqa=2,detect=1,ocr=1`` as the tuple a task is drawn from (each task ``weight`` times)."""
    tasks: list[str] = []
    for item in text.split(","):
        task, _, weight = item.partition("=")
        if task not in ("caption", "vqa", "detect", "ocr") or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected task=weight with task caption, vqa, detect or ocr")
        tasks += [task] * int(weight)
    if not tasks:
        raise argparse.ArgumentTypeError(f"{text!r}: every weight is 0")
    return tuple(tasks)


def param_groups(named: list[tuple[str, nn.Parameter]], scale: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay on matrices only; ``scale`` multiplies the schedule's learning rate."""
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    return [{"params": decay, "weight_decay": 0.01, "scale": scale},
            {"params": no_decay, "weight_decay": 0.0, "scale": scale}]


def batch_of(rng: random.Random, processor: PaliProcessor, size: int, mix: tuple[str, ...]) -> dict[str, torch.Tensor]:
    examples = [synthetic.make_example(rng, rng.choice(mix)) for _ in range(size)]
    return processor([e.image for e in examples], [prompt_for(e) for e in examples], [e.target for e in examples])


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


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
                    overlap = box_iou(found[0].box, truth.box) if found else 0.0
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
    parser.add_argument("--steps", type=int, default=3000, help="PaLI training steps (stage 2)")
    parser.add_argument("--vision-steps", type=int, default=500,
                        help="vision-tower pretraining steps before PaLI training (stage 1; 0 skips it)")
    parser.add_argument("--freeze-vision", action="store_true",
                        help="keep the pretrained vision tower frozen in stage 2, as PaLI does")
    parser.add_argument("--unfreeze-vision-at", type=float, default=None, metavar="FRACTION",
                        help="with --freeze-vision: let the vision tower train from this fraction of stage 2 on")
    parser.add_argument("--vision-lr", type=float, default=None,
                        help="peak learning rate of the vision tower in stage 2 (default: --lr)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("caption=2,vqa=2,detect=1,ocr=1"),
                        help="stage 2's task mix as task=weight pairs (default caption=2,vqa=2,detect=1,ocr=1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--vocab-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=12345)
    parser.add_argument("--eval-size", type=int, default=100, help="held-out examples per metric")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10, help="keep every Nth step in loss_log.jsonl")
    parser.add_argument("--bf16", action="store_true",
                        help="train under bf16 autocast (weights stay fp32); on a CPU without native bf16 "
                             "(AVX2 only) it was 10x slower than fp32, on one with avx512_bf16 as fast")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.unfreeze_vision_at is not None and not (args.freeze_vision and 0 <= args.unfreeze_vision_at < 1):
        parser.error("--unfreeze-vision-at takes a fraction in [0, 1) and needs --freeze-vision")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    scratch = Path(tempfile.mkdtemp(prefix="pali-train-"))
    tokenizer = train_tokenizer(scratch / "spiece.model", args.vocab_size, seed=args.seed + 1)
    processor = PaliProcessor(tokenizer, ProcessorConfig(
        image_size=synthetic.IMAGE_SIZE, max_length=32, max_target_length=40,
        classify_template="a {label}", languages=list(synthetic.LANGS),  # what the captions say, in the card's languages
    ))
    model = PaliModel(demo_config(tokenizer.vocab_size)).train()
    start = time.perf_counter()
    log = pretrain_vision(model, processor, rng, args.vision_steps, args.batch_size, args.lr, args.bf16)
    vision = [(n, p) for n, p in model.named_parameters() if n.startswith("vision.")]
    rest = [(n, p) for n, p in model.named_parameters() if not n.startswith("vision.")]
    vision_lr = args.vision_lr or args.lr
    vision_scale = vision_lr / args.lr
    groups = param_groups(rest)
    if args.freeze_vision:
        model.vision.requires_grad_(False)
    else:
        groups += param_groups(vision, vision_scale)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
    unfreeze_step = None if args.unfreeze_vision_at is None else int(args.unfreeze_vision_at * args.steps)
    progress = tqdm(range(args.steps), desc="training", unit="step")
    for step in progress:
        if step == unfreeze_step:
            model.vision.requires_grad_(True)
            for group in param_groups(vision, vision_scale):
                optimizer.add_param_group(group)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup) * group["scale"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(**batch_of(rng, processor, args.batch_size, args.mix)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.append({"stage": "pali", "step": step, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
        progress.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start

    results = evaluate(model, processor, args.eval_seed, args.eval_size)
    table = evaluation_table(results, args.eval_size)
    print(table)
    mix = {task: args.mix.count(task) for task in dict.fromkeys(args.mix)}  # the weights as given
    command = "python examples/train_synthetic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    training = {
        "command": command, "seed": args.seed, "eval_seed": args.eval_seed, "steps": args.steps,
        "vision_steps": args.vision_steps, "freeze_vision": args.freeze_vision, "unfreeze_vision_step": unfreeze_step,
        "vision_lr": vision_lr, "mix": mix,
        "batch_size": args.batch_size, "train_seconds": round(train_seconds, 1),
        "threads": args.threads, "bf16_autocast": args.bf16, "torch": torch.__version__,
        "final_loss": log[-1]["loss"],
    }
    frozen_note = ""
    if args.freeze_vision:
        frozen_note = " (vision tower frozen" + (
            f" until step {unfreeze_step}, then trained at a peak learning rate of {vision_lr:g})"
            if unfreeze_step is not None else ")")
    card = (
        "\n## How it was made\n\nTrained from scratch by `examples/train_synthetic.py` on a synthetic "
        "multilingual world of coloured shapes and rendered words (captions and VQA in English, French, "
        "German, Chinese and Hindi; detection; OCR). The vision tower is first pretrained alone on the "
        "world's labels (each patch's shape, colour, box and letter; each image's shapes and word). It "
        "demonstrates the pipeline; it knows nothing of real images.\n\n"
        f"- command: `{command}`\n- seed: {args.seed} (evaluation seed {args.eval_seed})\n"
        f"- training: {args.vision_steps} vision-pretraining steps, then {args.steps} PaLI steps"
        f"{frozen_note}, {args.batch_size} examples each (task mix {', '.join(f'{t} {n}' for t, n in mix.items())}), "
        f"{train_seconds / 60:.1f} min in all on {args.threads} CPU threads (torch {torch.__version__})\n\n"
        f"## Evaluation\n\n{table}\n"
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
    sys.exit(run_script(main))
