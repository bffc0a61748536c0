"""Fine-tune on a weighted mixture of tasks streamed from webdataset shards, as PaLI trains.

Two components, captioning and VQA, each a set of ``.tar`` shards (``KEY.png`` + ``KEY.json``
holding ``caption``, or ``question`` and ``answer``, and optionally ``lang``), sampled by weight
(``--weights 2,1``: two captions for each question, on average). Without ``--captions`` /
``--vqa`` it writes small shards from the synthetic world in ``examples/synthetic.py`` first.

    python examples/finetune_mixture.py --model pali-demo --out runs/mix --steps 20
    python examples/finetune_mixture.py --model pali-demo --out runs/mix \\
        --captions 'data/cap-*.tar' --vqa 'data/vqa-*.tar' --weights 3,1 --workers 2

Shards stream (never the whole dataset in memory); under ``torchrun`` each rank samples its own
part. The run saves the model + processor (``from_pretrained`` loads it), the mixture's position
(``mixture_state.json``: ``--resume`` continues the same stream from there) and prints how many
examples each task gave against its weight.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from pali import PaliModel, PaliProcessor
from pali.data import Collator, ShardStream, TaskMixture
from pali.errors import InputError, PaliError


def write_synthetic_shards(folder: Path, per_task: int, seed: int) -> dict[str, list[Path]]:
    """Two shards per task from the synthetic world (webdataset layout, written by tarfile)."""
    import io
    import tarfile

    from synthetic import make_example

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, list[Path]] = {"caption": [], "vqa": []}
    for task in shards:
        for s in range(2):
            path = folder / f"{task}-{s:03d}.tar"
            with tarfile.open(path, "w") as tar:
                for i in range(per_task // 2):
                    ex = make_example(rng, task)
                    meta = {"lang": ex.lang, **ex.prompt_args, ("caption" if task == "caption" else "answer"): ex.target}
                    image = io.BytesIO()
                    ex.image.save(image, format="PNG")
                    for name, data in ((f"{task}{s}_{i:05d}.png", image.getvalue()),
                                       (f"{task}{s}_{i:05d}.json", json.dumps(meta).encode())):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            shards[task].append(path)
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pali-demo", help="checkpoint folder, bundled name or Hub repo id")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--captions", nargs="+", help="captioning shards (globs allowed)")
    parser.add_argument("--vqa", nargs="+", help="VQA shards (globs allowed)")
    parser.add_argument("--weights", default="2,1", help="captions,vqa sampling weights (default: 2,1)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes (the stream is the same)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--synthetic", type=int, default=64, help="examples per task when writing shards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/final: its model and the mixture's position")
    args = parser.parse_args(argv)
    try:
        return train(args)
    except PaliError as e:
        print(f"finetune_mixture: error: {e}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    try:
        weights = [float(w) for w in args.weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 2:
        raise InputError(f"--weights wants two numbers, captions,vqa; got {args.weights!r}")
    shards = {"caption": args.captions, "vqa": args.vqa}
    if not (args.captions and args.vqa):
        made = write_synthetic_shards(args.out / "shards", args.synthetic, args.seed)
        shards = {task: shards[task] or made[task] for task in shards}
        print(f"wrote synthetic shards in {args.out / 'shards'}")

    torch.manual_seed(args.seed)
    state_file = args.out / "final" / "mixture_state.json"
    if args.resume and not state_file.is_file():
        raise InputError(f"--resume: {state_file} not found")
    start_from = args.out / "final" if args.resume else args.model  # resume: the saved model too
    model = PaliModel.from_pretrained(start_from).train().freeze_vision(True)
    processor = PaliProcessor.from_pretrained(start_from)
    size = processor.config.image_size
    mixture = TaskMixture(
        [("captions", ShardStream(shards["caption"], "caption", image_size=size, seed=args.seed), weights[0]),
         ("vqa", ShardStream(shards["vqa"], "vqa", image_size=size, seed=args.seed), weights[1])],
        seed=args.seed, batch_size=args.batch_size,
    )
    if args.resume:
        mixture.load_state_dict(json.loads(state_file.read_text()))
    loader = torch.utils.data.DataLoader(mixture, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=Collator(processor))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    start = mixture.start
    for step, batch in enumerate(loader, 1):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(json.dumps({"step": step, "loss": round(loss.item(), 4)}))
        if step == args.steps:
            break
    seen = start + args.steps * args.batch_size
    model.save_pretrained(args.out / "final", overwrite=True, processor=processor)
    state_file.write_text(json.dumps(mixture.state_dict(seen)) + "\n")
    for name, share in mixture.shares(seen).items():
        print(f"{name}: {share['examples']} examples, {share['share']:.0%} of the stream (weight {share['weight']:.0%})")
    print(f"saved {args.out / 'final'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
