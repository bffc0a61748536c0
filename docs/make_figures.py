"""Draw every figure of the docs from committed data: ``python docs/make_figures.py``.

Inputs (nothing is typed in by hand here):

* ``benchmarks/results/*.json``: measured benchmark results. ``"benchmark": "attention"`` files
  (rows of ``shape``, ``impl``, ``fwd_ms``, ``fwd_tflops``, ``fwd_bwd_ms``...) give one figure each;
  ``generate``, ``train_step`` and ``blip2_load`` files give the CPU comparisons with transformers;
* the bundled model's ``loss_log.jsonl`` and ``evaluation.json`` (its training curve and held-out
  accuracy), also copied next to its model card so the card is self-contained;
* ``pali demo --out docs/img/demo.png``: the demo's drawn detections, made by the CLI itself.

Output is deterministic (fixed SVG ids, no dates or version strings in the files), so a rerun on
unchanged data changes no byte; ``tests/test_figures.py`` checks that. After retraining the bundled
model or adding a result file, rerun this script and commit what changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
RESULTS = ROOT / "benchmarks" / "results"
DEMO_MODEL = ROOT / "src" / "pali" / "bundled" / "pali-demo"
MANIFEST = "figures.json"
CARD_FIGURES = ("demo-loss.svg", "demo-accuracy.svg")
CARD_SECTION = "## Training curve and held-out accuracy"
OURS, PEER = "#3f51b5", "#9e9e9e"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update({
        "svg.hashsalt": "pali-docs",   # fixed ids: identical bytes on every run
        "svg.fonttype": "none",        # text stays text: smaller files, readable diffs
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": "docs/make_figures.py"})
    _pyplot().close(fig)  # pyplot keeps every figure it opened until closed


# -- benchmarks ------------------------------------------------------------------------------------


def attention_figure(plt, result: dict, path: Path) -> None:
    """Forward TFLOP/s and forward+backward time per shape, one bar per implementation."""
    rows = result["rows"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.55 * len(shapes) * len(impls) ** 0.5 + 1.6))
    height = 0.8 / len(impls)
    for metric, ax, label in (("fwd_tflops", axes[0], "forward TFLOP/s (higher is better)"),
                              ("fwd_bwd_ms", axes[1], "forward + backward ms (lower is better)")):
        for k, impl in enumerate(impls):
            ys, xs = [], []
            for i, shape in enumerate(shapes):
                value = next((r.get(metric) for r in rows if r["shape"] == shape and r["impl"] == impl), None)
                if value is not None:
                    ys.append(i + (k - (len(impls) - 1) / 2) * height)
                    xs.append(value)
            ax.barh(ys, xs, height=height, label=impl)
        ax.set_yticks(range(len(shapes)), shapes)
        ax.invert_yaxis()
        ax.set_xlabel(label)
    axes[1].set_yticks(range(len(shapes)), [""] * len(shapes))
    axes[0].legend(loc="lower right", frameon=False)
    fig.suptitle(f"Attention, {result['device']}, {result['date']}")
    _save(fig, path)


def generate_figure(plt, result: dict, path: Path) -> None:
    rows = result["rows"]
    fig, (speed, floor) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = [r["row"] for r in rows]
    x = range(len(rows))
    speed.bar([i - 0.2 for i in x], [r["ours_tok_s"] for r in rows], 0.4, color=OURS, label="pali")
    speed.bar([i + 0.2 for i in x], [r["transformers_tok_s"] for r in rows], 0.4, color=PEER, label="transformers")
    for i, r in enumerate(rows):
        speed.annotate(f"{r['ours_tok_s'] / r['transformers_tok_s']:.2f}x", (i, max(r["ours_tok_s"], r["transformers_tok_s"])),
                       ha="center", va="bottom")
    speed.set_xticks(list(x), names)
    speed.set_ylabel("tokens / s (higher is better)")
    speed.legend(frameon=False)
    floor.bar([i - 0.2 for i in x], [r["ours_ms_step"] for r in rows], 0.4, color=OURS, label="pali decode step")
    floor.bar([i + 0.2 for i in x], [r["floor_ms_step"] for r in rows], 0.4, color=PEER, label="output-layer matmul alone")
    floor.set_xticks(list(x), names)
    floor.set_ylabel("ms / step (lower is better)")
    floor.legend(frameon=False)
    fig.suptitle(f"Generation, {result['device']}, {result['date']}")
    _save(fig, path)


def train_step_figure(plt, result: dict, path: Path) -> None:
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    names = [f"{r['image']}, batch {r['batch']}" for r in rows]
    x = range(len(rows))
    for ax, key, label in ((axes[0], "s_step", "seconds / step (lower is better)"),
                           (axes[1], "mb", "MB over the built model (lower is better)")):
        ax.bar([i - 0.2 for i in x], [r[f"ours_{key}"] for r in rows], 0.4, color=OURS, label="pali")
        ax.bar([i + 0.2 for i in x], [r[f"transformers_{key}"] for r in rows], 0.4, color=PEER, label="transformers")
        ax.set_xticks(list(x), names)
        ax.set_ylabel(label)
    axes[0].legend(frameon=False)
    fig.suptitle(f"Training step, {result['device']}, {result['date']}")
    _save(fig, path)


def blip2_load_figure(plt, result: dict, path: Path) -> None:
    """Medians of each (library, cold/warm, dtype) with min-max bars; the goal line is 1.1x."""
    rows = result["rows"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    loads = list(dict.fromkeys(f"{r['which']} {r['state']}" for r in rows))
    by = {(r["dtype"], f"{r['which']} {r['state']}"): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    width = 0.8 / len(loads)
    for j, load in enumerate(loads):
        xs = [i + (j - (len(loads) - 1) / 2) * width for i in range(len(dtypes))]
        color, alpha = (OURS if load.startswith("ours") else PEER), (0.55 if load.endswith("warm") else 1.0)
        for ax, key in ((axes[0], "ratio"), (axes[1], "seconds_with_read")):
            values = [by[d, load][key] for d in dtypes]
            spread = [[v - by[d, load][key + "_range"][0] for d, v in zip(dtypes, values)],
                      [by[d, load][key + "_range"][1] - v for d, v in zip(dtypes, values)]]
            ax.bar(xs, values, width, color=color, alpha=alpha, label=load, yerr=spread, capsize=2,
                   error_kw={"linewidth": 0.8})
            for x, v, d in zip(xs, values, dtypes):  # above the error bar
                ax.annotate(f"{v:.2f}x" if key == "ratio" else f"{v:.1f} s", (x, by[d, load][key + "_range"][1]),
                            ha="center", va="bottom", fontsize=7)
    for ax, label in ((axes[0], "peak RSS / weights (lower is better)"),
                      (axes[1], "s, load + one read (lower is better)")):
        ax.set_xticks(range(len(dtypes)), dtypes)
        ax.set_ylabel(label)
    axes[0].axhline(1.1, color="#e53935", linewidth=0.8, linestyle="--")
    axes[0].legend(frameon=False, fontsize=8)
    fig.suptitle(f"Loading a BLIP-2 checkpoint ({result['checkpoint_bytes'] / 1e9:.2f} GB), median of "
                 f"{rows[0]['reps']}, {result['device']}, {result['date']}", fontsize=9)
    _save(fig, path)


def eval_speed_figure(plt, result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 1.9))
    rows = [("pycocoevalcap + PTBTokenizer (Java)", result["theirs_s"], PEER), ("pali eval captions", result["ours_s"], OURS)]
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=[r[2] for r in rows])
    for y, (_, seconds, _) in enumerate(rows):
        ax.annotate(f"{seconds:.2f} s", (seconds, y), va="center", xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("s to score (lower is better)")
    fig.suptitle(f"Caption scoring, {result['images']:,} images x {result['references_per_image']} references: "
                 f"{result['ratio']:.2f}x, {result['device']}, {result['date']}", fontsize=9)
    _save(fig, path)


def decode_peers_figure(plt, result: dict, path: Path) -> None:
    """Tokens/s of every engine on each text row (pali and CTranslate2 at each precision), the
    medians with min-max bars."""
    rows = result["text_rows"]
    engines = list(dict.fromkeys(e for r in rows for e in r["engines"]))
    fig, ax = plt.subplots(figsize=(10, 3.4))
    width = 0.8 / len(engines)
    colors = plt.get_cmap("tab20")  # up to 20 engines
    for j, engine in enumerate(engines):
        xs, values, low, high = [], [], [], []
        for i, r in enumerate(rows):
            e = r["engines"].get(engine)
            if e is not None:
                xs.append(i + (j - (len(engines) - 1) / 2) * width)
                values.append(e["tok_s"])
                low.append(e["tok_s"] - e["min"])
                high.append(e["max"] - e["tok_s"])
        ax.bar(xs, values, width, label=engine, yerr=[low, high], capsize=2, error_kw={"linewidth": 0.8},
               color=colors(j))
    ax.set_xticks(range(len(rows)), [r["row"] for r in rows])
    ax.set_ylabel("tokens / s (higher is better)")
    ax.legend(frameon=False, fontsize=7, ncol=2)
    fig.suptitle(f"Decoding against CTranslate2, {result['threads']} threads, median of {result['reps']} "
                 f"({result['command']})", fontsize=8)
    _save(fig, path)


def batch_inference_figure(plt, result: dict, path: Path) -> None:
    """Images/s of each engine, the per-image loop first; the ratio to the loop on each bar."""
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    names = [r["engine"] for r in rows]
    ax.barh(names, [r["images_per_s"] for r in rows],
            color=[PEER if "loop" in r["engine"] or "transformers" in r["engine"] else OURS for r in rows])
    for y, r in enumerate(rows):
        ax.annotate(f"{r['ratio']:.2f}x", (r["images_per_s"], y), va="center", xytext=(3, 0),
                    textcoords="offset points", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images / s (higher is better)")
    fig.suptitle(f"Batch captioning, {result['images']} images {result['size'][0]}x{result['size'][1]}, "
                 f"{result['machine']}, {result['date']}", fontsize=8)
    _save(fig, path)


BENCHMARKS = {"attention": attention_figure, "generate": generate_figure, "train_step": train_step_figure,
              "blip2_load": blip2_load_figure, "eval_speed": eval_speed_figure, "decode_peers": decode_peers_figure,
              "batch_inference": batch_inference_figure, "quantize_quality": None}  # None: a table in the docs, no chart


# -- the bundled model ------------------------------------------------------------------------------


def loss_figure(plt, log: list[dict], path: Path) -> None:
    stages = list(dict.fromkeys(r["stage"] for r in log))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.2), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        points = [r for r in log if r["stage"] == stage]
        ax.plot([r["step"] for r in points], [r["loss"] for r in points], color=OURS, linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title({"vision": "stage 1: vision pretraining", "pali": "stage 2: PaLI tasks"}.get(stage, stage))
    axes[0][0].set_ylabel("training loss (log scale)")
    _save(fig, path)


def accuracy_figure(plt, evaluation: dict, path: Path) -> None:
    results = evaluation["results"]
    langs = [k.split("_", 1)[1] for k in results if k.startswith("caption_")]
    fig, (by_lang, other) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2]})
    x = range(len(langs))
    by_lang.bar([i - 0.2 for i in x], [100 * results[f"caption_{l}"] for l in langs], 0.4, color=OURS, label="caption")
    by_lang.bar([i + 0.2 for i in x], [100 * results[f"vqa_{l}"] for l in langs], 0.4, color="#ff9800", label="VQA")
    by_lang.set_xticks(list(x), langs)
    by_lang.set_ylim(0, 100)
    by_lang.set_ylabel("held-out exact match, %")
    by_lang.legend(frameon=False, loc="lower right")
    others = {"detection\nIoU >= 0.5": results["detect_hit@0.5"], "OCR": results["ocr"]}
    other.bar(list(others), [100 * v for v in others.values()], 0.5, color=PEER)
    other.set_ylim(0, 100)
    other.set_ylabel("%")
    other.annotate(f"mean IoU {results['detect_iou']:.2f}", (0, 100 * results["detect_hit@0.5"]), ha="center", va="bottom")
    _save(fig, path)


def update_card(card: Path) -> None:
    """Give the model card its figures (the training script writes the card without them)."""
    text = card.read_text(encoding="utf-8")
    section = (f"{CARD_SECTION}\n\nDrawn from `loss_log.jsonl` and `evaluation.json` by `docs/make_figures.py`.\n\n"
               + "\n\n".join(f"![{name[:-4]}]({name})" for name in CARD_FIGURES) + "\n")
    if CARD_SECTION in text:
        text = text[:text.index(CARD_SECTION)].rstrip("\n") + "\n"
    card.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")


# -- driver -----------------------------------------------------------------------------------------


def charts(out: Path, model: Path = DEMO_MODEL) -> dict[str, str]:
    """Draw every chart into ``out``; returns {input file: sha256} of the data they came from."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        kind = result.get("benchmark", "attention")
        if kind not in BENCHMARKS:
            raise SystemExit(f"{path}: unknown benchmark {kind!r}; known: {sorted(BENCHMARKS)}")
        if BENCHMARKS[kind] is not None:
            BENCHMARKS[kind](plt, result, out / f"bench-{path.stem}.svg")
        inputs[path.relative_to(ROOT).as_posix()] = _sha256(path)
    log_path, evaluation_path = model / "loss_log.jsonl", model / "evaluation.json"
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    loss_figure(plt, log, out / "demo-loss.svg")
    accuracy_figure(plt, json.loads(evaluation_path.read_text()), out / "demo-accuracy.svg")
    for path in (log_path, evaluation_path):
        inputs[path.relative_to(ROOT).as_posix()] = _sha256(path)
    plt.close("all")
    return inputs


def demo_picture(out: Path) -> None:
    """``pali demo`` draws its detections; its printed report is kept out of the way."""
    subprocess.run([sys.executable, "-m", "pali.cli", "demo", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-demo", action="store_true", help="do not rerun `pali demo` (the slow part)")
    args = parser.parse_args(argv)
    import matplotlib

    inputs = charts(IMG)
    if not args.skip_demo:
        demo_picture(IMG / "demo.png")
    for name in CARD_FIGURES:
        (DEMO_MODEL / name).write_bytes((IMG / name).read_bytes())
    update_card(DEMO_MODEL / "README.md")
    manifest = {"matplotlib": matplotlib.__version__, "inputs": inputs}
    (IMG / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(list(IMG.glob('*.svg')))} charts and the demo picture to {IMG.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
