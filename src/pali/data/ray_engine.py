"""``pali run --engine ray``: the same job as a Ray Data pipeline, for more than one machine.

The driver plans the batches exactly as the local engine does (`pali.data.inference.plan`), so
rows come out the same, in the same order (Ray Data's ``preserve_order``), and go through the same
[`ResultsFile`][pali.data.ResultsFile] (resumable JSONL or atomic Parquet). In between:

- one Ray task per planned batch reads and decodes its images and runs the processor
  (``ray.data.from_items(...).map``), anywhere in the cluster;
- an actor pool (``ActorPoolStrategy(size=actors)``) holds one model per actor, loaded once by
  name, on a GPU each (``num_gpus=1``) when the cluster has GPUs, else half a CPU each (a whole CPU
  per actor can starve the read tasks of a small cluster, which then never finishes).

A task or actor whose worker dies is retried by Ray (Ray Data's defaults: tasks are retried, pool
actors restarted and their batches resubmitted); rows are collected in the plan's order by the
driver, so a retried batch's rows are neither lost nor doubled.
On a cluster, start Ray first (``ray start --head`` / ``ray start --address=...``) and set
``RAY_ADDRESS``, or call ``ray.init(address=...)`` before [`run_ray`][pali.data.run_ray].
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

from ..errors import InputError
from .inference import RunOptions, infer, plan, prepare
from .sources import Source

def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError('--engine ray needs Ray Data: pip install "pali-vlm[ray]"') from None
    return ray


class _Model:
    """One actor of the pool: the model and processor, loaded once; prepared batch -> JSON rows."""

    def __init__(self, model: str, options: RunOptions, dtype: str, weights: str | None, device: str,
                 threads: int | None) -> None:
        import torch

        from ..models.quantize import quantize
        from ..pretrained import PaliModel
        from ..processing.processor import PaliProcessor

        if threads:
            torch.set_num_threads(threads)
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        self.model = PaliModel.from_pretrained(model).to(device=device, dtype=dtypes[dtype]).eval()
        if weights:
            self.model = quantize(self.model, weights)
        self.processor = PaliProcessor.from_pretrained(model)
        self.options, self.name = options, model

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import json

        rows = []
        for payload in batch["prepared"]:
            rows += infer(self.model, self.processor, self.options, pickle.loads(payload), self.name)
        return {"row": [json.dumps(row, ensure_ascii=False) for row in rows]}


def run_ray(
    model: str,
    processor,
    options: RunOptions,
    source: Source,
    *,
    batch_size: int = 8,
    actors: int = 1,
    skip: set[str] | frozenset[str] = frozenset(),
    dtype: str = "fp32",
    weights: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Rows of ``options.task`` over ``source`` with the model named ``model`` (loaded in each
    actor), computed on the Ray cluster ``ray.init`` connects to (a local one if none is running)."""
    import json

    ray = _ray()
    from ray.data import ActorPoolStrategy, DataContext

    options.dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(dtype)  # recorded in rows, as locally
    options.weights = weights
    batches = [[it for it in b if it.id not in skip] for b in plan(source, processor, options, batch_size)]
    batches = [b for b in batches if b]
    if not batches:
        return
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    device = device or ("cuda" if gpus else "cpu")
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    shared = ray.put((source, processor))

    def prepare_batch(row: dict[str, Any]) -> dict[str, Any]:
        data, proc = ray.get(shared)
        return {"prepared": pickle.dumps(prepare(data, proc, batches[row["batch"]]))}

    data = ray.data.from_items([{"batch": i} for i in range(len(batches))], override_num_blocks=len(batches))
    data = data.map(prepare_batch)
    resources = {"num_gpus": 1} if gpus and device.startswith("cuda") else {"num_cpus": 0.5}
    data = data.map_batches(
        _Model, batch_size=1, compute=ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={"model": model, "options": options, "dtype": dtype, "weights": weights,
                               "device": device, "threads": threads},
        **resources,
    )
    for row in data.iter_rows():
        yield json.loads(row["row"])
