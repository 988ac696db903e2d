"""The per-item journal of a test loop (lightning_modules/test_items.py): resumable, any number of ranks."""

from __future__ import annotations

import json

import pytest

from lightning_modules.test_items import ItemJournal


def test_records_are_the_union_of_every_rank_sorted(tmp_path):
    ItemJournal(tmp_path, 0).append([{"key": "b", "v": 1}, {"key": "d", "v": 2}])
    ItemJournal(tmp_path, 1).append([{"key": "a", "v": 3}])
    ItemJournal(tmp_path, 1).append([{"key": "c", "v": 4}])
    journal = ItemJournal(tmp_path, 0)
    assert [r["key"] for r in journal.records()] == ["a", "b", "c", "d"]
    assert journal.done_keys() == {"a", "b", "c", "d"}


def test_a_key_written_twice_counts_once_first_wins(tmp_path):
    ItemJournal(tmp_path, 0).append([{"key": "a", "v": 1}])
    ItemJournal(tmp_path, 1).append([{"key": "a", "v": 2}])
    assert ItemJournal(tmp_path, 0).records() == [{"key": "a", "v": 1}]


def test_a_torn_last_line_is_dropped_and_repaired(tmp_path):
    journal = ItemJournal(tmp_path, 0)
    journal.append([{"key": "a"}, {"key": "b"}])
    with open(journal.path, "a") as f:
        f.write('{"key": "c", "v"')  # killed mid-write
    assert journal.done_keys() == {"a", "b"}  # c is computed again
    journal.append([{"key": "c", "v": 1}])
    lines = journal.path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b", "c"]


def test_a_resumed_run_on_fewer_ranks_sees_every_rank_file(tmp_path):
    for rank in range(4):
        ItemJournal(tmp_path, rank).append([{"key": f"k{rank}"}])
    assert ItemJournal(tmp_path, 0).done_keys() == {"k0", "k1", "k2", "k3"}


def test_records_need_a_key_and_nothing_is_written_without_one(tmp_path):
    journal = ItemJournal(tmp_path, 0)
    with pytest.raises(ValueError, match="key"):
        journal.append([{"key": "a"}, {"v": 1}])
    assert not journal.path.exists()
    journal.append([])
    assert not journal.path.exists()
