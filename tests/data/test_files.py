"""Atomic writes and directories built once (datamodules/files.py)."""

from __future__ import annotations

import pytest

from datamodules.files import TMP_MARK, atomic_write_text, build_directory_once


def test_atomic_write_replaces_a_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert not any(TMP_MARK in p.name for p in tmp_path.iterdir())


def test_a_directory_is_built_once_and_then_found(tmp_path):
    calls = []

    def build(entry, work):
        calls.append(entry)
        (work / "scratch").write_text("x")
        entry.mkdir()
        (entry / "weights").write_text("w")
        (entry / "done.json").write_text("{}")

    final = build_directory_once(tmp_path / "cache" / "model", build, "done.json")
    again = build_directory_once(tmp_path / "cache" / "model", build, "done.json")
    assert final == again == tmp_path / "cache" / "model" and len(calls) == 1
    assert sorted(p.name for p in final.iterdir()) == ["done.json", "weights"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["model"]  # no scratch, no temporary left


def test_an_interrupted_or_unfinished_build_leaves_nothing(tmp_path):
    def interrupted(entry, work):
        entry.mkdir()
        (entry / "weights").write_text("half")
        raise KeyboardInterrupt

    def unfinished(entry, work):
        entry.mkdir()
        (entry / "weights").write_text("w")  # never writes its marker

    with pytest.raises(KeyboardInterrupt):
        build_directory_once(tmp_path / "model", interrupted, "done.json")
    with pytest.raises(RuntimeError, match="done.json"):
        build_directory_once(tmp_path / "model", unfinished, "done.json")
    assert list(tmp_path.iterdir()) == []
