"""Fine-tune a PaLI on your own image-text pairs: a folder of images plus a JSONL file.

Each line of ``DATA/data.jsonl`` is ``{"image": "cat.png", "prompt": "...", "target": "..."}``,
image paths relative to ``DATA``. The prompt goes to the encoder with the image, the target is
what the decoder learns to write (see ``pali.processing.prompts`` for the paper's task prompts).

    python examples/finetune_folder.py --model pali-demo --data my_data --out runs/mine \\
        --steps 200 --batch-size 8 --grad-accum 4 --save-every 50

The loop is the plain one users write: bf16 autocast, gradient accumulation, clipping, AdamW,
and a checkpoint (model + processor, loadable with ``from_pretrained``) every ``--save-every``
steps and at the end. Start from any checkpoint folder, bundled model or Hub repo id, e.g. a
model seeded with ``PaliModel.from_unimodal`` and saved with ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from pali import PaliModel, PaliProcessor
from pali.errors import InputError


def load_pairs(data: Path) -> list[dict]:
    """The JSONL records, with every image path checked before training starts."""
    index = data / "data.jsonl"
    if not index.is_file():
        raise InputError(f"{index}: not found (one JSON object per line: image, prompt, target)")
    pairs = []
    for number, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{index}:{number}: not JSON ({e})") from None
        missing = {"image", "prompt", "target"} - set(record)
        if missing:
            raise InputError(f"{index}:{number}: missing {sorted(missing)}")
        path = data / record["image"]
        if not path.is_file():
            raise InputError(f"{index}:{number}: image {path} not found")
        pairs.append({**record, "image": path})
    if not pairs:
        raise InputError(f"{index}: no records")
    return pairs


def save(model: PaliModel, processor: PaliProcessor, directory: Path) -> None:
    model.save_pretrained(directory, overwrite=True, processor=processor)
    print(f"saved {directory}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder, bundled name or Hub repo id")
    parser.add_argument("--data", type=Path, required=True, help="folder with data.jsonl and the images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32")
    parser.add_argument("--train-vision", action="store_true", help="also train the ViT (frozen by default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pairs = load_pairs(args.data)
    model = PaliModel.from_pretrained(args.model).train().freeze_vision(not args.train_vision)
    processor = PaliProcessor.from_pretrained(args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    progress = tqdm(range(1, args.steps + 1), desc="fine-tuning", unit="step")
    for step in progress:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(args.grad_accum):
            records = rng.sample(pairs, min(args.batch_size, len(pairs)))
            images = [Image.open(r["image"]).convert("RGB") for r in records]
            batch = processor(images, [r["prompt"] for r in records], [r["target"] for r in records])
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = model(**batch).loss / args.grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{total:.4f}")
        print(json.dumps({"step": step, "loss": total}))
        if args.save_every and step % args.save_every == 0 and step != args.steps:
            save(model, processor, args.out / f"step-{step}")
    save(model, processor, args.out / "final")
    return 0


if __name__ == "__main__":
    sys.exit(main())
