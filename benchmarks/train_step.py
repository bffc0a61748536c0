"""Training-step speed and memory: pali against the same model assembled from transformers.

One step = forward + backward + AdamW update, PaLI's default recipe (vision tower frozen; the
projection and mT5 train), fp32 on CPU, for a SigLIP-B/14 + mT5-small shape (vocab 250112) at
224 px (256 visual tokens) and 588 px (1764 visual tokens). Each (implementation, resolution)
runs in its own subprocess so its peak memory is its own: reported as the process's peak RSS
minus its RSS once the model is built (activations, gradients, AdamW states).
Subprocesses alternate ours / transformers, round after round, and medians are reported.

    python benchmarks/train_step.py            # full size
    python benchmarks/train_step.py --quick    # tiny sizes, one step (tests run this)
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from pali import PaliModel

from generate import FULL, QUICK, Reference, pali_config  # the same model pair (benchmarks/ is sys.path[0])

RESOLUTIONS = {"full": (224, 588), "quick": (32,)}
BATCH = {224: 2, 588: 1, 32: 2}


def _sizes(quick: bool, image_size: int) -> dict:
    base = QUICK if quick else FULL
    vision = dict(base["vision"], image_size=image_size, patch_size=base["vision"]["patch_size"] if quick else 14)
    return dict(base, vision=vision)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _current_rss_mb() -> float:
    """Resident memory now: the baseline. (The max RSS at that point would include the build's
    freed temporaries, e.g. transformers' replaced lm_head, and hide part of the training peak.)"""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux /proc/self/status")


def _batch(sizes: dict, batch: int):
    g = torch.Generator().manual_seed(0)
    size, vocab = sizes["vision"]["image_size"], sizes["text"]["vocab_size"]
    px = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    ids = torch.randint(2, vocab, (batch, sizes["prompt"]), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, sizes["prompt"] // 2 :] = 0
    labels = torch.randint(2, vocab, (batch, 16), generator=g)
    return px, ids, mask, labels


def child(impl: str, quick: bool, image_size: int, steps: int) -> dict:
    """One subprocess: build, warm up, time ``steps`` training steps, report time and memory."""
    torch.manual_seed(0)
    sizes = _sizes(quick, image_size)
    # Only the measured implementation is ever built in this process (random weights: timing
    # and memory do not depend on them), so the max RSS holds nothing of the other.
    model = PaliModel(pali_config(sizes)) if impl == "pali" else Reference(sizes)
    model.train()
    if impl == "pali":
        model.freeze_vision()

        def loss_fn(px, ids, mask, labels):
            return model(px, ids, mask, labels=labels).loss
    else:
        model.vision.requires_grad_(False)

        def loss_fn(px, ids, mask, labels):
            visual = model.projection(model.vision(pixel_values=px).last_hidden_state)
            embeds = torch.cat([visual, model.text.shared(ids)], dim=1)
            full_mask = torch.cat([torch.ones(visual.shape[:2], dtype=mask.dtype), mask], dim=1)
            return model.text(inputs_embeds=embeds, attention_mask=full_mask, labels=labels).loss

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(sizes, BATCH[image_size])
    rss_built = _current_rss_mb()
    times = []
    for i in range(steps + 1):  # step 0 warms up (allocates the AdamW states)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(*batch)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return dict(step_s=statistics.median(times), peak_mb=_max_rss_mb() - rss_built, loss=loss.item())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one step, one round")
    parser.add_argument("--rounds", type=int, help="subprocess rounds per variant (medians reported)")
    parser.add_argument("--steps", type=int, help="timed steps per subprocess")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (1 if args.quick else 3)
    if args.child:
        print(json.dumps(child(args.child[0], args.quick, int(args.child[1]), steps)))
        return
    rounds = args.rounds or (1 if args.quick else 2)
    print(f"torch {torch.__version__}, fp32 CPU, vision frozen, AdamW; medians over {rounds} round(s) x {steps} "
          f"step(s); memory = peak RSS minus RSS of the built model")
    print(f"{'image':>6}{'batch':>6}{'ours s/step':>13}{'hf s/step':>11}{'speed':>8}{'ours MB':>10}{'hf MB':>9}"
          f"{'mem ratio':>11}")
    for size in RESOLUTIONS["quick" if args.quick else "full"]:
        results: dict[str, list[dict]] = {"pali": [], "hf": []}
        for _ in range(rounds):
            for impl in results:  # alternate so machine noise hits both
                cmd = [sys.executable, __file__, "--child", impl, str(size), "--steps", str(steps)]
                out = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{impl} {size}px failed:\n{out.stderr}")
                results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {impl: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "peak_mb")} for impl, rs in results.items()}
        ours, hf = med["pali"], med["hf"]
        print(f"{size:>6}{BATCH[size]:>6}{ours['step_s']:>13.3f}{hf['step_s']:>11.3f}{hf['step_s'] / ours['step_s']:>7.2f}x"
              f"{ours['peak_mb']:>10.0f}{hf['peak_mb']:>9.0f}{ours['peak_mb'] / max(hf['peak_mb'], 1):>10.2f}x")


if __name__ == "__main__":
    main()
