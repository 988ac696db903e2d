"""Per-item results of a test loop, kept so that the evaluation is rank-sharded and resumable.

Each rank appends the records of the items it finished to `<dir>/items-rank<R>.jsonl` after every batch (flushed
and fsynced), one JSON object per line with a unique "key". A run that is stopped (preemption, Ctrl-C, a crash) and
started again reads every rank's file, whatever the number of ranks was, and skips the keys already there: only the
unfinished items are computed again. A line cut short by a kill is dropped from its file on reading (its item is
simply computed again). When every rank is done, `records()` is the union, sorted by key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

ITEM_FILES = "items-rank*.jsonl"
TEST_DIR = "test"  # a test loop's items and results, under the run directory (launch/evaluate.py test)


class ItemJournal:
    """The item files of one evaluation in `directory`, written by rank `rank`."""

    def __init__(self, directory: str | Path, rank: int):
        self.directory = Path(directory)
        self.rank = rank
        self.path = self.directory / f"items-rank{rank}.jsonl"

    def done_keys(self) -> set[str]:
        """Keys of every item any rank has finished (reading repairs this rank's own file if its last line is torn)."""
        self._repair_own()
        return {record["key"] for record in self._read_all()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        lines = []
        for record in records:
            if "key" not in record:
                raise ValueError("an item record needs a 'key'")
            lines.append(json.dumps(record, sort_keys=True) + "\n")
        if not lines:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every rank's records, one per key (the first written wins if a key was written twice), sorted by key."""
        unique: dict[str, dict[str, Any]] = {}
        for record in self._read_all():
            unique.setdefault(record["key"], record)
        return [unique[k] for k in sorted(unique)]

    def _read_all(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.directory.glob(ITEM_FILES)):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill on another rank: that item is computed again
                if isinstance(record, dict) and "key" in record:
                    records.append(record)
        return records

    def _repair_own(self) -> None:
        """Cut this rank's file after its last complete line, so that appends start on a fresh line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
