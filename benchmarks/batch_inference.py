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

Then the same with a tiny BLIP-2 (Flan-T5 text) built by transformers: a random, seeded
``Blip2ForConditionalGeneration`` of BLIP-2's shape (224 px, patches of 14, a Q-Former with 32
queries, a T5 encoder-decoder; narrow and shallow so that it runs here) saved with
``save_pretrained`` beside a ``Blip2Processor`` (``BlipImageProcessor`` + a T5 tokenizer with
``<image>``), and that one folder loaded both by pali (``PaliModel.from_pretrained`` reads
transformers' files in place) and by transformers' own ``pipeline("image-text-to-text")`` (which
replaced ``"image-to-text"`` in transformers 5), given the same files, batch size, prompt (BLIP-2's
``"a photo of"``, pali's blip2 prompt set) and ``max_new_tokens``, greedy, fp32. Its captions are
noise, but pali's and transformers' must be the same noise: the share of equal captions is
reported, and transformers is run once more (untimed) on the very images pali decoded, where every
caption, its token ids decoded by pali's tokenizer, must be equal (``_transformers_row`` says why
the texts alone may part).

Each is run once after a warm-up batch, and the answers of every engine are checked equal to the
loop's (the script exits non-zero otherwise). The machine is shared: read the ratios, not the
absolute figures, and rerun before believing a small difference.

    python benchmarks/batch_inference.py            # 256 images, results JSON in benchmarks/results/
    python benchmarks/batch_inference.py --quick    # 12 small images, a tinier BLIP-2, no Ray (tests run this)
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
from pali.defaults import MAX_NEW_TOKENS

RESULTS = Path(__file__).resolve().parent / "results"
BLIP2_PROMPT = "a photo of"  # BLIP-2's captioning prompt: pali's blip2 prompt set, given to transformers as text


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


def blip2_folder(folder: Path, quick: bool) -> Path:
    """A random BLIP-2 (Flan-T5) as transformers saves it, with its processor: one folder both
    libraries load. ``quick``: ``pali.testing.blip2``'s test size (56 px, 4 queries)."""
    import transformers

    from pali.testing.blip2 import hf_blip2
    from pali.testing.spm import train_spm

    spiece = train_spm(folder / "spm")  # 156 pieces + 100 sentinels, as the T5 tokenizer counts them
    tokenizer = transformers.T5TokenizerFast.from_pretrained(str(spiece.parent), extra_ids=100)
    tokenizer.add_tokens([transformers.AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    special = dict(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)  # Flan-T5's
    if quick:
        size, queries, towers = 56, 4, {}
    else:
        size, queries = 224, 32
        towers = dict(vision=dict(image_size=size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                  intermediate_size=512),
                      qformer=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
                      d_model=128, d_ff=256, num_heads=4, d_kv=32)
    model = hf_blip2("t5", text_vocab=len(tokenizer), image_token=image_token, queries=queries, **towers, **special)
    model.config.tie_word_embeddings = model.config.text_config.tie_word_embeddings = False  # as Flan-T5's config
    out = folder / "blip2"
    model.save_pretrained(str(out))
    image_processor = transformers.BlipImageProcessor(size={"height": size, "width": size})
    transformers.Blip2Processor(image_processor, tokenizer, num_query_tokens=queries).save_pretrained(str(out))
    return out


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
    report: dict = {"benchmark": "batch_inference", "images": count, "size": list(size), "model": "pali-demo", "batch_size": batch_size,
                    "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
                               "2-core shared CPU", "date": str(date.today()), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, count, size)
        paths = sorted(folder.glob("*.jpg"))
        loop(pipe, paths[:2])  # warm-up
        expected, seconds = timed(lambda: loop(pipe, paths))
        base = count / seconds
        report["rows"].append({"engine": "loop over pipeline.caption", "images_per_s": round(base, 2), "ratio": 1.0})
        print(f"{'engine':52s} {'images/s':>9s} {'vs loop':>8s}")
        print(f"{'loop over pipeline.caption':52s} {base:9.2f} {1.0:8.2f}")
        failed = _engines(report, model, processor, folder, batch_size, expected, count, base, "")
        if not (args.quick or args.no_ray):
            failed |= _ray_rows(report, processor, folder, batch_size, expected, count, base)
        blip2 = blip2_folder(Path(tmp), args.quick)
        twin, twin_processor = PaliModel.from_pretrained(blip2).eval(), PaliProcessor.from_pretrained(blip2)
        report["blip2"] = {"image_size": twin_processor.config.image_size, "prompt": BLIP2_PROMPT,
                           "max_new_tokens": MAX_NEW_TOKENS, "parameters": sum(p.numel() for p in twin.parameters())}
        twin_pipe = pali.pipeline(twin, twin_processor)
        assert twin_pipe.prompts.caption_prompt() == BLIP2_PROMPT
        loop(twin_pipe, paths[:2])
        expected, seconds = timed(lambda: loop(twin_pipe, paths))
        base = count / seconds
        name = "BLIP-2: loop over pipeline.caption"
        report["rows"].append({"engine": name, "images_per_s": round(base, 2), "ratio": 1.0})
        print(f"{name:52s} {base:9.2f} {1.0:8.2f}")
        failed |= _engines(report, twin, twin_processor, folder, batch_size, expected, count, base, "BLIP-2: ")
        padding = list(range(twin_processor.tokenizer.vocab_size, twin.config.text.vocab_size))  # <image>
        failed |= _transformers_row(report, blip2, paths, batch_size, expected, base, twin_processor, padding)
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
    print(f"{name:52s} {speed:9.2f} {speed / base:8.2f}" + ("" if same else "  ANSWERS DIFFER"))
    return not same


def _transformers_row(report, blip2: Path, paths: list[Path], batch_size: int, expected: dict[str, str],
                      base: float, processor: PaliProcessor, padding: list[int]) -> bool:
    """transformers' own pipeline on the same folder and files; its captions against pali's loop.

    ``padding``: the ids past pali's tokenizer (here ``<image>``), which pali's pipeline never
    generates; transformers is told to suppress them too (a trained model never picks them, a
    random one does).

    Two things may part the captions without the models computing anything different: pali
    decodes a large JPEG at a reduced scale (PIL's draft, ``open_image``) when it is at least twice
    the model's size, where transformers decodes it in full; and pali's tokenizer writes ``<unk>``
    as sentencepiece does (" ⁇ ") where transformers' drops it (docs/tasks.md). So the hard check
    runs transformers' pipeline again on the images pali decoded and decodes its token ids with
    pali's tokenizer and caption head: there every caption must be equal to pali's."""
    import transformers

    from pali.cli.common import open_image
    from pali.tasks.heads import get_head

    captioner = transformers.pipeline("image-text-to-text", model=str(blip2), dtype=torch.float32)

    def caption(images, **options) -> list:
        rows = captioner(({"images": image, "text": BLIP2_PROMPT} for image in images), batch_size=batch_size,
                         max_new_tokens=MAX_NEW_TOKENS, generate_kwargs={"do_sample": False, "num_beams": 1,
                                                                         "suppress_tokens": padding}, **options)
        return [row[0] for row in rows]

    def share(answers: list[str]) -> float:
        return sum(a == expected[p.name] for p, a in zip(paths, answers)) / len(paths)

    caption([str(p) for p in paths[:batch_size]], return_full_text=False)  # warm-up
    rows, seconds = timed(lambda: caption([str(p) for p in paths], return_full_text=False))
    speed, agree = len(paths) / seconds, share([r["generated_text"] for r in rows])
    ids = [r["generated_token_ids"] for r in caption([open_image(p, processor.config.image_size) for p in paths],
                                                     return_tensors=True)]
    text_same_pixels = share([captioner.tokenizer.decode(row, skip_special_tokens=True) for row in ids])
    head = get_head("caption")  # what pipeline.caption makes of the decoded text (it strips it)
    tokens_same_pixels = share([head.parse(processor.decode(row)).text for row in ids])
    name = 'BLIP-2: transformers pipeline("image-text-to-text")'
    report["rows"].append({"engine": name, "images_per_s": round(speed, 2), "ratio": round(speed / base, 2),
                           "caption_agreement": round(agree, 4),
                           "caption_agreement_on_pali_decoded_images": round(text_same_pixels, 4),
                           "token_agreement_on_pali_decoded_images": round(tokens_same_pixels, 4)})
    print(f"{name:52s} {speed:9.2f} {speed / base:8.2f}  captions equal to pali's: {agree:.1%}")
    print(f"  on the images pali decoded: captions {text_same_pixels:.1%}, tokens {tokens_same_pixels:.1%}"
          + ("" if tokens_same_pixels == 1 else "  ANSWERS DIFFER"))
    ratios = []
    for row in report["rows"]:
        if row["engine"].startswith("BLIP-2: pali.run"):
            row["vs_transformers"] = round(row["images_per_s"] / speed, 2)
            ratios.append(f"{row['engine'].removeprefix('BLIP-2: pali.run, ')} {row['vs_transformers']:.2f}x")
    print(f"  BLIP-2, pali.run against transformers' pipeline: {', '.join(ratios)}")
    return tokens_same_pixels != 1


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
