"""Result files that survive a crash: JSONL appended a batch at a time, Parquet written at the end.

JSONL rows are appended as whole lines, flushed and ``fsync``-ed after each batch, so a crash or
Ctrl-C leaves every finished batch on disk and at most one torn last line, which
[`ResultsFile.open`][pali.data.ResultsFile.open] drops on ``resume``. A resumed run checks that
the file was made by the same task, model and options (else mixing answers would go unnoticed),
skips the ids it holds, and appends the rest in the order an uninterrupted run writes them.

Parquet cannot be appended to; its rows go to ``NAME.parquet.partial.jsonl`` as above (so Parquet
runs resume the same way), and the finished table replaces ``NAME.parquet`` in one rename
(``pali.io.atomic_file``); the partial file is removed after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError

PARTIAL_SUFFIX = ".partial.jsonl"


class ResultsFile:
    """The output of one run: ``open``, ``write`` each batch's rows, ``close``."""

    def __init__(self, path: str | Path, *, resume: bool = False, force: bool = False) -> None:
        self.path = Path(path)
        self.parquet = self.path.suffix.lower() == ".parquet"
        self.rows_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX) if self.parquet else self.path
        self.resume, self.force = resume, force
        self.done: dict[str, dict[str, Any]] = {}
        self._file = None
        self.failed = 0
        self.written = 0

    def open(self, task: str, model: str | None, options: dict[str, Any]) -> set[str]:
        """Check the output can be written (before any model loads); return the ids already done
        (resume). The file itself is opened at the first row written."""
        if self.path.is_dir():
            raise InputError(f"--out {self.path}: is a folder; give a file name such as {self.path / 'results.jsonl'}")
        if not self.path.parent.is_dir():
            raise InputError(f"--out {self.path}: folder {self.path.parent} does not exist")
        exists = self.rows_path.exists() or self.path.exists()
        if exists and not (self.resume or self.force):
            raise InputError(f"{self.path} exists: --resume to finish it, or --force to start over")
        if self.resume and self.rows_path.exists():
            self._read_done(task, model, options)
        elif self.resume and self.parquet and self.path.exists():
            raise InputError(f"{self.path} is finished (no {self.rows_path.name} to resume); --force to start over")
        return set(self.done)

    def _read_done(self, task: str, model: str | None, options: dict[str, Any]) -> None:
        data = self.rows_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a crash: drop it, it is rewritten
            with open(self.rows_path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                row = json.loads(line)
                ident = row["id"]
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.rows_path}:{number}: not a pali results line; --force to start over") from None
            made = (row.get("task"), row.get("model"), row.get("options"))
            if made != (task, model, options):
                raise InputError(
                    f"{self.rows_path}:{number} was made by task={made[0]} model={made[1]} options={made[2]}, "
                    f"not task={task} model={model} options={options}: --force to start over"
                )
            self.done[ident] = row
        self.failed = sum(1 for row in self.done.values() if "error" in row)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append whole lines and make them durable before the next batch starts."""
        if not rows:
            return
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if self._file is None:  # opened at the first row: a run that fails before leaves the old file
            self._file = open(self.rows_path, "ab" if self.resume else "wb")  # noqa: SIM115  (closed in close())
        self._file.write(text.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.failed += sum(1 for row in rows if "error" in row)
        self.written += len(rows)

    def close(self, finished: bool = True) -> None:
        """Close the rows; for Parquet, once ``finished``, write the table atomically and remove the
        partial rows (an interrupted run keeps them for ``--resume``)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if finished and self.parquet and self.rows_path.exists():
            write_parquet(read_rows(self.rows_path), self.path)
            self.rows_path.unlink()

    @property
    def total(self) -> int:
        return len(self.done) + self.written


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a JSONL results file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(rows: list[dict[str, Any]], path: str | Path) -> None:
    """The rows as one Parquet table (``options`` as a JSON string), replacing ``path`` atomically."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError('Parquet output needs pyarrow: pip install "pali-vlm[data]"') from None
    from ..io import atomic_file

    schema = pa.schema([
        ("id", pa.string()), ("task", pa.string()), ("question", pa.string()), ("answer", pa.string()),
        ("boxes", pa.list_(pa.list_(pa.float64()))), ("labels", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())), ("error", pa.string()), ("model", pa.string()), ("options", pa.string()),
    ])
    table = pa.Table.from_pylist(
        [{**row, "options": json.dumps(row.get("options"), sort_keys=True)} for row in rows], schema=schema
    )
    with atomic_file(path) as f:
        pq.write_table(table, f)
