"""``pali run TASK INPUT... --out results.jsonl``: one task over a whole collection.

INPUTs are folders, globs, images, JSONL/CSV manifests, webdataset ``.tar`` shards or
``datasets`` folders (see `pali.data.sources`). One JSON line per input (or ``--out x.parquet``);
a row whose image cannot be read holds an ``error``, and the last line printed says how many
failed (exit status 1 when some did). ``--resume`` finishes an interrupted run.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_model_argument

TASKS = ("caption", "vqa", "ocr", "detect", "classify")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run a task over folders, manifests, shards or datasets",
        description="Run one task over many images; write one result per input (JSONL or Parquet).",
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="folder, glob, image, .jsonl/.csv manifest, webdataset .tar shard, datasets folder, hf://NAME")
    p.add_argument("--out", required=True, help="results file: .jsonl (default) or .parquet")
    add_model_argument(p)
    task = p.add_argument_group("task options (a manifest's own columns win, row by row)")
    task.add_argument("--lang", default="en", help="language code (default: en)")
    task.add_argument("--question", help="vqa: the question for rows that have none")
    task.add_argument("--labels", help="detect/classify: comma-separated labels for rows that have none")
    task.add_argument("--prefix", default="", help="caption: a caption start to continue")
    task.add_argument("--template", help="classify: target text for each label (default: the model's)")
    columns = p.add_argument_group("manifest columns")
    for name in ("image", "id", "question", "prompt", "labels"):
        columns.add_argument(f"--{name}-column", default=name, metavar="NAME", help=f"(default: {name})")
    columns.add_argument("--split", help="a datasets DatasetDict's split")
    run = p.add_argument_group("running")
    run.add_argument("--batch-size", type=_count, default=8, metavar="N", help="images per model call (default: 8)")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="DataLoader processes decoding images (default: 2; 0: in this process)")
    run.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="model dtype (default: fp32)")
    run.add_argument("--quantize", choices=("fp32", "int8", "bf16"), metavar="FORMAT",
                     help="CPU decoding weights (pali.quantize): fp32 (the same answers, faster: greedy reads a "
                          "bf16 screen of the output layer, exactly), int8 or bf16 (faster still; answers can change)")
    run.add_argument("--device", help="torch device, e.g. cuda (default: cpu; ray: cuda when the cluster has GPUs)")
    run.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process + DataLoader workers; ray: a Ray Data pipeline (pali-vlm[ray])")
    run.add_argument("--actors", type=_count, default=1, metavar="N", help="ray: model actors (default: 1)")
    run.add_argument("--resume", action="store_true", help="finish an interrupted run: skip the ids --out holds")
    run.add_argument("--force", action="store_true", help="overwrite an existing --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar (none either when stderr is not a terminal)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..data import Columns, ResultsFile, RunOptions, open_source
    from ..errors import InputError

    if args.workers < 0:
        raise InputError(f"--workers must be >= 0, got {args.workers}")
    if args.quantize and (args.dtype != "fp32" or (args.device or "cpu") != "cpu"):
        raise InputError(f"--quantize {args.quantize} converts an fp32 model's weights for the CPU: "
                         "drop --dtype/--device, or --quantize")
    options = RunOptions(args.task, args.lang, args.question, args.labels, args.prefix, args.template,
                         generate={} if args.task == "classify" else {"max_new_tokens": args.max_new_tokens},
                         dtype={"bf16": "bfloat16", "fp16": "float16"}.get(args.dtype), weights=args.quantize)
    columns = Columns(args.image_column, args.id_column, args.question_column, args.prompt_column, args.labels_column)
    source = open_source(args.inputs, columns, split=args.split)  # bad inputs fail before the model loads
    out = ResultsFile(args.out, resume=args.resume, force=args.force)
    done = out.open(args.task, args.model, options.recorded())
    progress = not args.quiet and sys.stderr.isatty()
    try:
        if args.engine == "ray":
            rows = _ray(args, options, source, done, progress)
        else:
            rows = _local(args, options, source, done, progress)
        batch: list[dict] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= args.batch_size:
                out.write(batch)
                batch = []
        out.write(batch)
    except KeyboardInterrupt:
        out.close(finished=False)  # every finished batch stays on disk for --resume
        print(f"pali run: interrupted with {out.total} results in {args.out}: --resume finishes it", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except BaseException:
        out.close(finished=False)
        raise
    out.close()
    failed = f"{out.failed} failed (see their error field)" if out.failed else "none failed"
    print(f"{out.total} results in {args.out}: {failed}")
    return 1 if out.failed else 0


def _local(args, options, source, done, progress):
    from ..data import run

    model, processor = load_model(args)
    return run(model, processor, args.task, source, batch_size=args.batch_size, workers=args.workers, skip=done,
               model_name=args.model, progress=progress, lang=options.lang, question=options.question,
               labels=options.labels, prefix=options.prefix, template=options.template, **options.generate)


def _ray(args, options, source, done, progress):
    from ..data import run_ray
    from ..processing.processor import PaliProcessor

    processor = PaliProcessor.from_pretrained(args.model)  # plans the batches; each actor loads the model
    return run_ray(args.model, processor, options, source, batch_size=args.batch_size, actors=args.actors,
                   skip=done, dtype=args.dtype, weights=args.quantize, device=args.device, threads=args.threads or 1,
                   progress=progress)


def load_model(args: argparse.Namespace):
    """Model (in ``--dtype`` on ``--device``, eval mode, ``--quantize``d) and processor, through the
    task commands' loader."""
    import torch

    from ..models.quantize import quantize
    from .common import load_pipeline

    pipe = load_pipeline(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model = pipe.model.to(device=args.device or "cpu", dtype=dtype).eval()
    return (quantize(model, args.quantize) if args.quantize else model), pipe.processor
