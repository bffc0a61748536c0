"""What ``pali.quantize`` costs in quality: measured, not assumed.

* The bundled ``pali-demo`` model's held-out scores (``examples/train_synthetic.py``'s
  ``evaluate``, the seed and size its ``evaluation.json`` was made with) in fp32, int8, bf16,
  packed fp32 (``pali.quantize(model, "fp32", screen=False)``) and screened fp32
  (``pali.quantize(model, "fp32")`` where the CPU has bf16 instructions): the same weights,
  which must score the same; and the difference in points per task.
* BLIP-2 tiny (``pali.testing.blip2``'s random-weight transformers twins, T5 and mT5 text):
  the largest logit error of each format against fp32, relative to the largest fp32 logit,
  and greedy token agreement over 16 new tokens.

    python benchmarks/quantize_quality.py                    # the demo's full held-out set
    python benchmarks/quantize_quality.py --per-cell 8       # a quick look
    python benchmarks/quantize_quality.py --out benchmarks/results/quantize_quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))  # train_synthetic.evaluate: the demo's held-out set

import pali  # noqa: E402
from pali import PaliModel, PaliProcessor  # noqa: E402
from pali.nn.quantize import has_bf16_instructions  # noqa: E402
from pali.nn.screen import can_screen  # noqa: E402

#: label: pali.quantize's arguments
FORMATS = {"int8": ("int8", {}), "bf16": ("bf16", {}), "fp32 packed": ("fp32", {"screen": False})}
if can_screen():
    FORMATS["fp32 screened"] = ("fp32", {"screen": True})


def demo_scores(per_cell: int | None) -> dict:
    from train_synthetic import evaluate

    folder = pali.bundled.resolve("pali-demo")
    recorded = json.loads((folder / "evaluation.json").read_text())
    per_cell = per_cell or recorded["training"].get("eval_size", 100)
    seed = recorded["training"]["eval_seed"]
    processor = PaliProcessor.from_pretrained("pali-demo")
    fp32 = PaliModel.from_pretrained("pali-demo").eval()
    scores = {"fp32": evaluate(fp32, processor, seed, per_cell)}
    for label, (fmt, options) in FORMATS.items():
        scores[label] = evaluate(pali.quantize(copy.deepcopy(fp32), fmt, **options), processor, seed, per_cell)
    return dict(per_cell=per_cell, eval_seed=seed, scores=scores)


def blip2_errors() -> dict:
    from pali.testing.blip2 import batch, hf_blip2, pali_twin

    results = {}
    for kind in ("t5", "mt5"):
        ours = pali_twin(hf_blip2(kind)).eval()
        px, ids, mask = batch(2)
        dec = torch.randint(0, 120, (2, 5), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            expected = ours(px, ids, mask, decoder_input_ids=dec).logits
            tokens = ours.generate(px, ids, mask, max_new_tokens=16, eos_token_id=-1)
            for label, (fmt, options) in FORMATS.items():
                quantized = pali.quantize(copy.deepcopy(ours), fmt, **options)
                got = quantized(px, ids, mask, decoder_input_ids=dec).logits
                same = quantized.generate(px, ids, mask, max_new_tokens=16, eos_token_id=-1) == tokens
                results[f"blip2-{kind} {label}"] = dict(
                    max_abs_error=float((got - expected).abs().max()),
                    relative=float((got - expected).abs().max() / expected.abs().max()),
                    token_agreement=float(same.float().mean()),
                )
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cell", type=int, help="held-out examples per task and language (default: the demo's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bf16_cpu = has_bf16_instructions()
    print(f"bf16 instructions on this CPU: {bf16_cpu} (int8 runs the text encoder in bf16 {'here' if bf16_cpu else 'only where there are'})")
    blip2 = blip2_errors()
    for name, r in blip2.items():
        print(f"{name}: logits max error {r['max_abs_error']:.4f} ({r['relative']:.2%} of the largest logit), "
              f"greedy token agreement {r['token_agreement']:.3f}")
    demo = demo_scores(args.per_cell)
    scores = demo["scores"]
    print(f"\npali-demo held-out ({demo['per_cell']} examples per cell, seed {demo['eval_seed']})")
    labels = list(FORMATS)
    print(f"{'metric':<18}{'fp32':>8}" + "".join(f"{f:>12}{'diff':>8}" for f in labels))
    for key in scores["fp32"]:
        cells = "".join(f"{scores[f][key]:>12.3f}{100 * (scores[f][key] - scores['fp32'][key]):>+8.1f}" for f in labels)
        print(f"{key:<18}{scores['fp32'][key]:>8.3f}{cells}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            benchmark="quantize_quality", command="python " + " ".join(["benchmarks/quantize_quality.py", *(argv or sys.argv[1:])]),
            torch=torch.__version__, bf16_instructions=bf16_cpu, blip2=blip2, demo=demo,
        ), indent=1) + "\n")


if __name__ == "__main__":
    main()
