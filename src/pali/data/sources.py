"""Where images come from: folders, globs, JSONL/CSV manifests, webdataset shards, ``datasets``.

[`open_source`][pali.data.open_source] turns the inputs a user names into one
[`Source`][pali.data.Source]: a list of light [`Record`][pali.data.Record]s (a stable id, where the
image is, the row's other fields) and a way to decode each record's image. Listing reads no pixel;
decoding happens where it is asked for (a DataLoader worker, a Ray task), and an image that cannot
be decoded raises [`UnreadableImage`][pali.data.UnreadableImage], which batch inference turns into
an ``error`` row rather than a traceback or a silently shorter output.

What each input means:

- a folder: every image under it (recursively, by extension), id = its path inside the folder;
  a folder written by ``datasets``' ``save_to_disk`` is that dataset instead;
- a glob (``photos/**/*.jpg``, ``shards/*.tar``): each match as if named alone;
- one image file: itself, id = the path as given;
- ``.jsonl`` / ``.csv``: a manifest, one row per input; its ``image`` column holds a path relative
  to the manifest's folder (never escaping it) or absolute; optional ``id``, ``question``,
  ``prompt``, ``labels`` columns (the names are [`Columns`][pali.data.Columns]'); id = the ``id``
  column, else the ``image`` value;
- ``.tar``: a webdataset shard: members ``KEY.jpg`` (any image extension) with ``KEY.json`` (a
  dict of fields) and/or ``KEY.txt`` (the ``text`` field); id = ``KEY``;
- ``hf://NAME`` (or ``hf://NAME:SPLIT``): a Hub dataset by name, through ``datasets.load_dataset``.

Ids must be unique across all inputs (results and ``--resume`` are keyed by them): a clash is an
error that says which inputs clash, never a silently merged row. Training data, keyed by nothing,
may repeat an image (several captions of one photo): ``open_source(..., unique_ids=False)``.
"""

from __future__ import annotations

import csv
import glob as globlib
import io
import json
import os
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
MANIFEST_EXTENSIONS = (".jsonl", ".csv")
SHARD_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
HF_PREFIX = "hf://"


class SourceError(InputError):
    """An input that cannot be listed: a bad manifest row, a bad shard, an empty source."""


class UnreadableImage(InputError):
    """One record's image cannot be decoded (missing, truncated, corrupt, too large, odd mode)."""


@dataclass(frozen=True)
class Columns:
    """Manifest column names (and the fields read from shards and ``datasets`` rows)."""

    image: str = "image"
    id: str = "id"
    question: str = "question"
    prompt: str = "prompt"
    labels: str = "labels"


@dataclass(frozen=True)
class TarRef:
    """An image member of a webdataset shard, read by offset (uncompressed shards)."""

    shard: str
    offset: int
    size: int


@dataclass(frozen=True)
class RowRef:
    """Row ``index`` of the source's ``datasets`` dataset number ``dataset``."""

    dataset: int
    index: int


@dataclass
class Record:
    """One input: ``id`` (stable across runs), ``image`` (a path, shard member, row or bytes),
    ``fields`` (the row's other values: question, prompt, labels, captions...), ``where`` (for messages)."""

    id: str
    image: str | TarRef | RowRef | bytes
    fields: dict[str, Any] = field(default_factory=dict)
    where: str = ""

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


@dataclass
class Source:
    """Records plus what decoding them needs (the ``datasets`` datasets rows point into)."""

    records: list[Record]
    columns: Columns = field(default_factory=Columns)
    datasets: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def image(self, index: int, size: int | None = None):
        """Record ``index``'s image as RGB PIL, or [`UnreadableImage`][pali.data.UnreadableImage];
        see [`decode_image`][pali.data.decode_image] for ``size``."""
        record = self.records[index]
        return decode_image(self.open(record), record.where or record.id, size)

    def open(self, record: Record) -> str | io.BytesIO:
        """A path or a file object holding the record's encoded image."""
        ref = record.image
        if isinstance(ref, str):
            return ref
        if isinstance(ref, bytes):
            return io.BytesIO(ref)
        if isinstance(ref, TarRef):
            try:
                with open(ref.shard, "rb") as f:
                    f.seek(ref.offset)
                    data = f.read(ref.size)
            except OSError as e:
                raise UnreadableImage(f"{record.where}: cannot read the shard ({e})") from None
            if len(data) != ref.size:
                raise UnreadableImage(f"{record.where}: the shard ends inside this image")
            return io.BytesIO(data)
        value = self.datasets[ref.dataset][ref.index][self.columns.image]
        return _hf_image(value, record.where)

    def shard(self, rank: int, world: int) -> Source:
        """Every ``world``-th record from ``rank``: the part one process (or worker) handles."""
        return Source(self.records[rank::world], self.columns, self.datasets)


def decode_image(file: str | Path | io.BytesIO, where: str, size: int | None = None):
    """RGB PIL image from a path or file object; ``info["original_size"]`` = ``(height, width)`` as stored.

    ``size`` (the model's resolution): a JPEG is decoded at a reduced scale (PIL's ``draft``, at
    least twice ``size`` a side), which saves most of its decoding time and memory. Any image
    PIL's decompression-bomb guard warns about is refused, as are files that are missing,
    truncated or corrupt and modes that have no RGB form: each an
    [`UnreadableImage`][pali.data.UnreadableImage] naming ``where``.
    """
    from PIL import Image

    if isinstance(file, (str, Path)) and not Path(file).is_file():
        raise UnreadableImage(f"{where}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                width, height = image.size
                if size is not None and image.format == "JPEG":
                    image.draft("RGB", (2 * size, 2 * size))
                image.load()
                rgb = image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UnreadableImage(f"{where}: too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise UnreadableImage(f"{where}: not a readable image ({type(e).__name__}: {e})") from None
    if 0 in rgb.size:
        raise UnreadableImage(f"{where}: the image is empty ({width}x{height})")
    rgb.info["original_size"] = (height, width)
    return rgb


# -- listing -------------------------------------------------------------------------------------


def open_source(
    inputs: str | Path | Sequence[str | Path] | Source,
    columns: Columns | None = None,
    *,
    split: str | None = None,
    unique_ids: bool = True,
) -> Source:
    """One [`Source`][pali.data.Source] from folders, globs, images, manifests, shards and
    ``datasets`` (see the module docs); ``split`` picks a ``DatasetDict``'s split; ``unique_ids=False``
    lets ids repeat (training data, where nothing is keyed by id)."""
    if isinstance(inputs, Source):
        return inputs
    columns = columns or Columns()
    names = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not names:
        raise SourceError("no input given")
    source = Source([], columns)
    for name in names:
        _extend(source, str(name), columns, split)
    if not source.records:
        raise SourceError(f"{', '.join(map(str, names))}: no images found (image extensions: "
                          f"{' '.join(IMAGE_EXTENSIONS)})")
    if unique_ids:
        _check_unique(source.records)
    return source


def _extend(source: Source, name: str, columns: Columns, split: str | None) -> None:
    if name.startswith(HF_PREFIX):
        _add_hf(source, _load_hub_dataset(name[len(HF_PREFIX):], split), name, columns)
        return
    path = Path(name)
    if globlib.has_magic(name) and not path.exists():
        matches = sorted(globlib.glob(name, recursive=True))
        files = [m for m in matches if Path(m).is_file()]
        if not files:
            raise SourceError(f"{name}: the pattern matches no file")
        for match in files:
            _extend(source, match, columns, split)
        return
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            _add_hf(source, _load_disk_dataset(path, split), name, columns)
            return
        found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise SourceError(f"{name}: a folder with no image in it (extensions: {' '.join(IMAGE_EXTENSIONS)})")
        source.records += [Record(p.relative_to(path).as_posix(), str(p), where=str(p)) for p in found]
        return
    if not path.exists():
        raise SourceError(f"{name}: no such file, folder or pattern")
    lower = path.name.lower()
    if lower.endswith(MANIFEST_EXTENSIONS):
        rows = read_manifest(path, columns)
        if not rows:
            raise SourceError(f"{name}: a manifest with no row in it")
        source.records += rows
    elif lower.endswith(SHARD_EXTENSIONS):
        source.records += read_shard_index(path)
    elif lower.endswith(IMAGE_EXTENSIONS):
        source.records.append(Record(name, name, where=name))
    else:
        raise SourceError(f"{name}: not an image, manifest (.jsonl, .csv), shard (.tar) or folder")


def _check_unique(records: list[Record]) -> None:
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise SourceError(
                f"id {record.id!r} twice ({seen[record.id]} and {record.where}): results are keyed by id; "
                "give each input a unique id (a manifest's id column) or name the inputs apart"
            )
        seen[record.id] = record.where


# -- manifests -----------------------------------------------------------------------------------


def read_manifest(path: str | Path, columns: Columns | None = None) -> list[Record]:
    """Records of a JSONL or CSV manifest; a bad row is a [`SourceError`][pali.data.SourceError]
    naming the file and line."""
    path = Path(path)
    columns = columns or Columns()
    root = path.parent.resolve()
    records = []
    for line, row in _manifest_rows(path):
        where = f"{path}:{line}"
        if columns.image not in row:
            raise SourceError(f"{where}: no {columns.image!r} column (columns: {sorted(row)}); name the image "
                              f"column with Columns(image=...) (pali run: --image-column)")
        value = row[columns.image]
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise SourceError(f"{where}: {columns.image!r} must be a non-empty path, got {value!r}")
        image = Path(value)
        if not image.is_absolute():
            image = root / image
            if not image.resolve().is_relative_to(root):
                raise SourceError(f"{where}: {value!r} escapes the manifest's folder {root}")
        if image.is_dir():
            raise SourceError(f"{where}: {value!r} is a folder, not an image")
        ident = row.get(columns.id, value)
        if ident is None or (isinstance(ident, str) and not ident.strip()):
            raise SourceError(f"{where}: empty {columns.id!r}")
        fields = {k: v for k, v in row.items() if k not in (columns.image, columns.id)}
        if columns.labels in fields:
            fields[columns.labels] = _labels(fields[columns.labels], where)
        records.append(Record(str(ident), str(image), fields, where))
    return records


def _manifest_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e})") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for row in reader:
            if None in row:
                raise SourceError(f"{path}:{reader.line_num}: more values than the header has columns")
            yield reader.line_num, {k: v for k, v in row.items() if v is not None}
        return
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SourceError(f"{path}:{line}: not a JSON line ({e})") from None
        if not isinstance(row, dict):
            raise SourceError(f"{path}:{line}: a JSON object per line expected, got {type(row).__name__}")
        yield line, row


def _labels(value: Any, where: str) -> list[str]:
    labels = value.split(",") if isinstance(value, str) else value
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise SourceError(f"{where}: labels must be a list of strings or a comma-separated string, got {value!r}")
    return [v.strip() for v in labels if v.strip()]


# -- webdataset shards ---------------------------------------------------------------------------


def split_key(name: str) -> tuple[str, str]:
    """webdataset's split of a member name: key = the path up to the first dot of its base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_shard(path: str | Path, *, inline: bool = False) -> Iterable[tuple[str, dict[str, bytes | TarRef]]]:
    """``(key, {extension: bytes or TarRef})`` for each sample of a shard, streamed in member order.

    Image members of an uncompressed shard come as a [`TarRef`][pali.data.TarRef] (read later, by
    offset) unless ``inline`` (streaming: read as it passes), everything else as bytes. A shard
    that is not a tar or ends mid-member is a
    [`SourceError`][pali.data.SourceError]."""
    path = str(path)
    compressed = path.lower().endswith((".gz", ".tgz"))
    key, parts = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name_key, ext = split_key(member.name)
                if key is not None and name_key != key:
                    yield key, parts
                    parts = {}
                key = name_key
                is_image = "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS
                if is_image and not compressed and not inline:
                    parts[ext] = TarRef(path, member.offset_data, member.size)
                else:
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                    parts[ext] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise SourceError(f"{path}: not a readable webdataset shard ({type(e).__name__}: {e})") from None
    if key is not None:
        yield key, parts


def shard_sample(shard: str | Path, key: str, parts: dict[str, bytes | TarRef]) -> Record:
    """The record of one shard sample: its image member and the fields of its ``.json`` / ``.txt``."""
    where = f"{shard}:{key}"
    images = [ext for ext in parts if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    if len(images) != 1:
        raise SourceError(f"{where}: {'no' if not images else 'more than one'} image member "
                          f"(members: {', '.join(sorted(parts))})")
    fields: dict[str, Any] = {}
    for ext, value in parts.items():
        if ext == "json":
            try:
                meta = json.loads(value)
            except (ValueError, UnicodeDecodeError) as e:
                raise SourceError(f"{where}.json: not JSON ({e})") from None
            if not isinstance(meta, dict):
                raise SourceError(f"{where}.json: a JSON object expected, got {type(meta).__name__}")
            fields.update(meta)
        elif ext == "txt":
            try:
                fields["text"] = value.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise SourceError(f"{where}.txt: not UTF-8 ({e})") from None
    if "labels" in fields:
        fields["labels"] = _labels(fields["labels"], where)
    return Record(key, parts[images[0]], fields, where)


def read_shard_index(path: str | Path) -> list[Record]:
    """Every sample of a shard as a record (images stay in the shard, read by offset)."""
    records = [shard_sample(path, key, parts) for key, parts in iter_shard(path)]
    if not records:
        raise SourceError(f"{path}: a shard with no sample in it")
    return records


# -- Hugging Face datasets -----------------------------------------------------------------------


def _datasets():
    try:
        import datasets
    except ImportError:
        raise InputError('reading Hugging Face datasets needs the datasets package: pip install "pali-vlm[data]"') from None
    return datasets


def _pick_split(data: Any, where: str, split: str | None) -> Any:
    if not hasattr(data, "keys"):  # a Dataset
        return data
    names = list(data.keys())
    if split is None and len(names) == 1:
        split = names[0]
    if split not in names:
        raise SourceError(f"{where}: choose a split with --split (this dataset has {names})")
    return data[split]


def _load_disk_dataset(path: Path, split: str | None) -> Any:
    datasets = _datasets()
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(f"{path}: not a readable datasets folder ({e})") from None
    return _pick_split(data, str(path), split)


def _load_hub_dataset(name: str, split: str | None) -> Any:
    datasets = _datasets()
    name, _, named_split = name.partition(":")
    try:
        data = datasets.load_dataset(name, split=named_split or split)
    except Exception as e:  # noqa: BLE001  (datasets raises many kinds; all mean: cannot load this name)
        raise SourceError(f"{HF_PREFIX}{name}: cannot load it ({type(e).__name__}: {e})") from None
    return _pick_split(data, name, None)


def _add_hf(source: Source, data: Any, where: str, columns: Columns) -> None:
    names = list(data.column_names)
    if columns.image not in names:
        raise SourceError(f"{where}: no {columns.image!r} column (columns: {names}); name it with "
                          f"Columns(image=...) (pali run: --image-column)")
    feature = data.features[columns.image]
    if type(feature).__name__ == "Image":  # decode ourselves: the same checks as every other source
        data = data.cast_column(columns.image, _datasets().Image(decode=False))
    number = len(source.datasets)
    source.datasets.append(data)
    others = [n for n in names if n != columns.image]
    rows = data.select_columns(others).to_list() if others else [{}] * len(data)  # no pixel read
    for index, row in enumerate(rows):
        ident = str(row[columns.id]) if columns.id in row else str(index)
        fields = {k: v for k, v in row.items() if k != columns.id}
        if columns.labels in fields:
            fields[columns.labels] = _labels(fields[columns.labels], f"{where}[{index}]")
        source.records.append(Record(ident, RowRef(number, index), fields, f"{where}[{index}]"))


def _hf_image(value: Any, where: str) -> str | io.BytesIO:
    if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return io.BytesIO(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes):
        return io.BytesIO(value)
    if isinstance(value, str) and value:
        return value
    raise UnreadableImage(f"{where}: the image column holds no image ({type(value).__name__})")


# -- sharding ------------------------------------------------------------------------------------


def rank_and_world() -> tuple[int, int]:
    """This process's ``(rank, world size)``: ``torch.distributed``'s when a group is up, else
    ``RANK``/``WORLD_SIZE`` (torchrun sets them), else ``(0, 1)``. Read it when a dataset is built,
    in the training process: DataLoader workers see no process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def part_of_world(rank_world: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(part, parts)`` of this process and DataLoader worker: rank x workers + worker, with
    ``rank_world`` as [`rank_and_world`][pali.data.rank_and_world] gave it (default: now)
    and the worker from ``torch.utils.data.get_worker_info``."""
    from torch.utils.data import get_worker_info

    rank, world = rank_world or rank_and_world()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers
