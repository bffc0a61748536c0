"""Batch captioning speed: ``pali.run`` (batched, DataLoader workers) against a per-image loop.

256 JPEGs of a realistic size (640x480, made here: noise under a few shapes, so they compress
like photos rather than flat colour) are captioned by the bundled ``pali-demo`` model, in one
process:

- ``loop``: what a script over ``pali caption`` does: decode each image (``open_image``, the
  command's own reduced-scale JPEG decoding) and call ``pipeline.caption`` on it, one at a time;
- ``pali.run``: the same model and images through ``pali.run`` (batches of ``--batch-size``,
  ``workers`` DataLoader processes decoding and preprocessing while the model runs);
- ``ray``: ``run_ray`` on a local Ray cluster (``ray.init(num_cpus=2)``) with 1 and 2 model
  actors, its start-up (the cluster's, not the actors') outside the timing.

Then the loop and ``pali.run`` again with a BLIP-2-shaped tiny model: random weights, a ViT with
a class token and pre-norm, a Q-Former connector (8 queries), BLIP-2's prompt set and CLIP's
image normalisation at 112 px. Its captions are noise, but every engine computes the same ones.

Each is run once after a warm-up batch, and the answers of every engine are checked equal to the
loop's (the script exits non-zero otherwise). The machine is shared: read the ratios, not the
absolute figures, and rerun before believing a small difference.

    python benchmarks/batch_inference.py            # 256 images, results JSON in benchmarks/results/
    python benchmarks/batch_inference.py --quick    # 12 small images, no Ray (tests run this)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import pali
from pali import PaliModel, PaliProcessor
from pali.data import RunOptions, open_source, run_ray

RESULTS = Path(__file__).resolve().parent / "results"


def make_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        noise = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8) + 80
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 3))):
            x, y = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            w = int(rng.integers(size[0] // 6, size[0] // 2))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + w), fill=color)
        image.save(folder / f"{i:04d}.jpg", quality=90)


def loop(pipe, paths: list[Path]) -> dict[str, str]:
    from pali.cli.common import open_image

    size = pipe.processor.config.image_size
    return {p.name: pipe.caption(open_image(p, size)).text for p in paths}


def blip2_shaped(demo: PaliProcessor) -> tuple[PaliModel, PaliProcessor]:
    """A tiny random model of BLIP-2's shape, with the demo's tokenizer (its vocabulary sized to it)."""
    from pali import MT5Config, PaliConfig, ProcessorConfig, QFormerConfig, ViTConfig

    config = PaliConfig(
        vision=ViTConfig(image_size=112, patch_size=14, hidden_size=64, depth=4, mlp_dim=256, num_heads=4,
                         class_token=True, keep_class_token=True, pre_norm=True, final_norm=False),
        text=MT5Config(vocab_size=demo.tokenizer.vocab_size, d_model=64, d_ff=128, num_heads=4, d_kv=16,
                       num_encoder_layers=2, num_decoder_layers=2),
        connector=QFormerConfig(num_query_tokens=8, hidden_size=64, depth=2, num_heads=4, mlp_dim=128),
    )
    torch.manual_seed(0)
    model = PaliModel(config).eval()
    settings = {**demo.config.to_dict(), "image_size": 112, "prompt_set": "blip2", "resample": "bicubic",
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "languages": [], "classify_template": "{label}"}
    return model, PaliProcessor(demo.tokenizer, ProcessorConfig(**settings))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 small images, no Ray, no results file")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    count, size = (12, (160, 120)) if args.quick else (args.images, (640, 480))
    batch_size = 4 if args.quick else args.batch_size
    torch.set_num_threads(1)  # the bundled model is tiny: one thread is its fastest (pali.cli.common.SMALL_MODEL)
    model = PaliModel.from_pretrained("pali-demo").eval()
    processor = PaliProcessor.from_pretrained("pali-demo")
    pipe = pali.pipeline(model, processor)
    report: dict = {"images": count, "size": list(size), "model": "pali-demo", "batch_size": batch_size,
                    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                               "2-core shared CPU", "date": str(date.today()), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder, count, size)
        paths = sorted(folder.glob("*.jpg"))
        loop(pipe, paths[:2])  # warm-up
        expected, seconds = timed(lambda: loop(pipe, paths))
        base = count / seconds
        report["rows"].append({"engine": "loop over pipeline.caption", "images_per_s": round(base, 2), "ratio": 1.0})
        print(f"{'engine':44s} {'images/s':>9s} {'vs loop':>8s}")
        print(f"{'loop over pipeline.caption':44s} {base:9.2f} {1.0:8.2f}")
        failed = _engines(report, model, processor, folder, batch_size, expected, count, base, "")
        if not (args.quick or args.no_ray):
            failed |= _ray_rows(report, processor, folder, batch_size, expected, count, base)
        twin, twin_processor = blip2_shaped(processor)
        twin_pipe = pali.pipeline(twin, twin_processor)
        loop(twin_pipe, paths[:2])
        expected, seconds = timed(lambda: loop(twin_pipe, paths))
        base = count / seconds
        name = "BLIP-2-shaped: loop over pipeline.caption"
        report["rows"].append({"engine": name, "images_per_s": round(base, 2), "ratio": 1.0})
        print(f"{name:44s} {base:9.2f} {1.0:8.2f}")
        failed |= _engines(report, twin, twin_processor, folder, batch_size, expected, count, base, "BLIP-2-shaped: ")
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"batch-inference-cpu-{report['date']}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results in {out}")
    return 1 if failed else 0


def _engines(report, model, processor, folder, batch_size, expected, count, base, label) -> bool:
    failed = False
    for workers in (0, 1, 2):
        list(pali.run(model, processor, "caption", sorted(folder.glob("*.jpg"))[:batch_size], batch_size=batch_size))
        rows, seconds = timed(lambda: list(pali.run(model, processor, "caption", folder, batch_size=batch_size,
                                                    workers=workers)))
        failed |= _report(report, f"{label}pali.run, {workers} workers", rows, expected, count / seconds, base)
    return failed


def _report(report, name, rows, expected, speed, base) -> bool:
    answers = {r["id"]: r.get("answer") for r in rows}
    same = answers == expected
    report["rows"].append({"engine": name, "images_per_s": round(speed, 2), "ratio": round(speed / base, 2),
                           "same_answers": same})
    print(f"{name:44s} {speed:9.2f} {speed / base:8.2f}" + ("" if same else "  ANSWERS DIFFER"))
    return not same


def _ray_rows(report, processor, folder, batch_size, expected, count, base) -> bool:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    options = RunOptions("caption", generate={})
    source = open_source(folder)
    failed = False
    try:
        for actors in (1, 2):
            rows, seconds = timed(lambda: list(run_ray("pali-demo", processor, options, source,
                                                       batch_size=batch_size, actors=actors, threads=1)))
            failed |= _report(report, f"ray, {actors} actor(s), incl. actor start", rows, expected,
                              count / seconds, base)
    finally:
        ray.shutdown()
    return failed


if __name__ == "__main__":
    sys.exit(main())
