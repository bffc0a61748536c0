"""Caption scoring speed: ``pali eval captions`` against pycocoevalcap's own pipeline, same input.

COCO val size by default: 5,000 images with 5 synthetic COCO-style references each (seeded), one
prediction per image, written as a COCO ``captions_*.json`` and a COCO results file. Each rep times

- ours: ``pali eval captions --references ... --predictions ... --json`` in this process (reading
  the files, the Java-free tokenizer, pycocoevalcap's Bleu/Rouge/Cider);
- theirs: ``pycocotools.COCO`` + ``loadRes``, pycocoevalcap's ``PTBTokenizer`` (Java) and the same
  three scorers, as ``COCOEvalCap.evaluate`` runs them (METEOR and SPICE left out of both);

interleaved rep by rep, and checks that both give the same six numbers (exits non-zero otherwise).

    python benchmarks/eval_speed.py --reps 5        # 5,000 x 5, writes benchmarks/results/
    python benchmarks/eval_speed.py --quick         # 200 images, 1 rep (tests run this)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
from pathlib import Path
import random
import shutil
import sys
import tempfile
import time

SUBJECTS = ["A man", "a woman", "Two dogs", "The cat", "A young boy", "A group of people", "An elephant", "A giraffe",
            "The children", "A skateboarder", "Some people", "A large jet", "A red bus", "A baseball player",
            "Three zebras", "A kitten", "The chef", "A little girl's teddy bear", "Two men", "A surfer"]
VERBS = ["riding", "sitting on", "standing next to", "holding", "looking at", "walking down", "playing with",
         "eating", "parked near", "flying over", "laying on", "doesn't like", "is n't near", "jumping over"]
OBJECTS = ["a surfboard", "the kitchen table", "a red, white and blue kite", "a \"stop\" sign", "a (small) bowl",
           "a plate of food", "the beach", "a city street", "a snowy hill", "a wooden bench", "the U.S. flag",
           "a 2-story building", "a frisbee", "some broccoli", "a laptop keyboard", "its tail", "a cell phone"]
PLACES = ["", " in the park", " on a sunny day", " at night", " near the water", " in a field", " next to a tree",
          " on the street", " in the kitchen", " at the beach"]
ENDS = [".", "", " .", "!", "...", ";", ", too."]


def caption(rng: random.Random) -> str:
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(PLACES)}{rng.choice(ENDS)}"
    return text.upper() if rng.random() < 0.02 else text


def write_inputs(folder: Path, images: int, refs: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    annotations, results = [], []
    for image in range(images):
        captions = [caption(rng) for _ in range(refs)]
        annotations += [{"id": len(annotations) + 1, "image_id": image, "caption": c} for c in captions]
        prediction = rng.choice([captions[0], caption(rng), captions[1].lower().rstrip(".")])
        results.append({"image_id": image, "caption": prediction})
    references, predictions = folder / "captions.json", folder / "results.json"
    references.write_text(json.dumps({"images": [{"id": i} for i in range(images)], "annotations": annotations}))
    predictions.write_text(json.dumps(results))
    return references, predictions


def ours(references: Path, predictions: Path) -> dict:
    from pali.cli import main
    from pali.eval.tokenize import ptb_tokenize

    ptb_tokenize.cache_clear()  # no help from an earlier rep
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", "captions", "--references", str(references), "--predictions", str(predictions), "--json"]) == 0
    return json.loads(out.getvalue())


def theirs(references: Path, predictions: Path) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(references))
        result = coco.loadRes(str(predictions))
        ids = coco.getImgIds()
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
        res = tokenizer.tokenize({i: result.imgToAnns[i] for i in ids})
        metrics = {}
        bleu, _ = Bleu(4).compute_score(gts, res)
        metrics.update({f"Bleu_{n + 1}": bleu[n] for n in range(4)})
        metrics["ROUGE_L"], _ = Rouge().compute_score(gts, res)
        metrics["CIDEr"], _ = Cider().compute_score(gts, res)
    return {k: float(v) for k, v in metrics.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--refs", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 images, 1 rep, no results file")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/eval-speed-cpu-<date>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.reps = 200, 1
    if shutil.which("java") is None:
        print("java is not installed: pycocoevalcap's PTBTokenizer cannot run, nothing to compare with")
        return 0
    import pali.cli.eval, pali.eval.captions, pycocoevalcap.cider.cider, pycocotools.coco  # noqa: F401, E401
    # (imported before timing: the first rep of either side would otherwise pay for them)
    with tempfile.TemporaryDirectory() as tmp:
        references, predictions = write_inputs(Path(tmp), args.images, args.refs)
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(args.reps):
            for name, run in (("ours", ours), ("theirs", theirs)):
                start = time.perf_counter()
                metrics = run(references, predictions)
                times[name].append(time.perf_counter() - start)
                if name == "ours":
                    mine = metrics
            differ = {k: (mine[k], metrics[k]) for k in metrics if abs(mine[k] - metrics[k]) > 1e-9 * max(1, abs(metrics[k]))}
            if differ:
                print(f"metrics differ from pycocoevalcap's: {differ}")
                return 1
    best = {k: min(v) for k, v in times.items()}
    ratio = best["ours"] / best["theirs"]
    print(f"{args.images} images x {args.refs} references, best of {args.reps}")
    print(f"ours (pali eval captions): {best['ours']:.2f} s   theirs (pycocoevalcap + PTBTokenizer): {best['theirs']:.2f} s")
    print(f"ratio ours/theirs: {ratio:.2f} (below 1: faster); metrics equal: CIDEr {mine['CIDEr']:.4f}")
    if not args.quick:
        import pycocoevalcap  # noqa: F401  (its version, for the record)
        from importlib.metadata import version

        today = datetime.date.today().isoformat()
        out = args.out or Path(__file__).resolve().parent / "results" / f"eval-speed-cpu-{today}.json"
        record = {
            "benchmark": "eval_speed", "device": f"CPU: {platform.processor() or platform.machine()}", "date": today,
            "command": "python benchmarks/eval_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "versions": {"pycocoevalcap": version("pycocoevalcap"), "python": platform.python_version()},
            "load_average_1min": round(os.getloadavg()[0], 2),  # the machine is shared: how busy it was
            "images": args.images, "references_per_image": args.refs, "reps": args.reps,
            "ours_s": round(best["ours"], 3), "theirs_s": round(best["theirs"], 3), "ratio": round(ratio, 3),
            "metrics": mine,
        }
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
