"""Datasets in, results out: sources, batch inference, training examples and task mixtures.

- [`open_source`][pali.data.open_source]: folders, globs, JSONL/CSV manifests, webdataset shards
  and ``datasets`` datasets as one list of records with stable ids;
- [`run`][pali.data.run] (also ``pali.run``): batch inference over a source, an iterator of result
  dicts; [`ResultsFile`][pali.data.ResultsFile] writes them resumably (``pali run`` uses both);
- [`ExampleDataset`][pali.data.ExampleDataset], [`ShardStream`][pali.data.ShardStream],
  [`Collator`][pali.data.Collator] and [`TaskMixture`][pali.data.TaskMixture]: training data.
"""

from .inference import TASKS, RunOptions, run
from .training import TRAIN_TASKS, Collator, Component, ExampleDataset, ShardStream, TaskMixture, make_example
from .ray_engine import run_ray
from .results import ResultsFile, read_rows, write_parquet
from .sources import (
    Columns,
    Record,
    RowRef,
    Source,
    SourceError,
    TarRef,
    UnreadableImage,
    decode_image,
    iter_shard,
    open_source,
    part_of_world,
    rank_and_world,
    read_manifest,
    read_shard_index,
)

__all__ = [
    "Collator", "Columns", "Component", "ExampleDataset", "Record", "ResultsFile", "RowRef", "RunOptions",
    "ShardStream", "Source", "SourceError", "TASKS", "TRAIN_TASKS", "TarRef", "TaskMixture",
    "UnreadableImage", "decode_image", "iter_shard", "make_example", "open_source", "part_of_world",
    "rank_and_world", "read_manifest", "read_rows", "read_shard_index", "run", "run_ray", "write_parquet",
]

from ..lazy import submodules_on_demand  # noqa: E402

__getattr__ = submodules_on_demand(__name__)  # pali.data.<module> after a bare ``import pali``
