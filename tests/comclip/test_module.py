"""ComCLIP through `launch/evaluate.py test`: the synthetic task end to end, resume, ranks, items with bad data,
re-ranked retrieval, and the config errors a user can make."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datamodules.writers.common import ShardOptions, json_bytes, png_bytes, write_shards
from launch import evaluate
from lightning_modules.comclip.metrics import winoground_scores
from lightning_modules.comclip.shards import write_synthetic_compositional_shards
from tests.conftest import REPO

CONFIG = REPO / "configs" / "comclip" / "demo.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from lightning_modules.clip_pretrain.random_clip import write_scoring_clip

    root = tmp_path_factory.mktemp("comclip-module")
    write_synthetic_compositional_shards(root / "synthetic", num=12, size=24)
    return {"root": root, "clip": write_scoring_clip(root / "clip"), "data": root / "synthetic"}


def overrides(inputs: dict[str, Path], runs: Path, name: str = "run", data: Path | None = None) -> list[str]:
    return [f"run.root={runs}", f"run.name={name}", f"model.params.clip.pretrained={inputs['clip']}",
            f"data.params.test={data or inputs['data']}", "data.params.batch_size=4"]


def run_test(*args: str) -> int:
    return evaluate.main(["test", "--config", str(CONFIG), *args])


def items(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "test" / "items.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    assert run_test(*overrides(inputs, runs)) == 0
    return runs / "run"


def test_the_synthetic_task_end_to_end(reference):
    results = json.loads((reference / "test" / "results.json").read_text())
    records = items(reference)
    assert results["items"] == results["scored"] == len(records) == 12 and results["errors"]["count"] == 0
    assert results["parse_failures"] == {"count": 0, "captions": 24, "examples": []}
    # the metrics are the items' scores put through Winoground's definitions, for both methods
    for method in ("clip", "comclip"):
        again = winoground_scores([torch.tensor(r[method]) for r in records], [r["fields"]["tag"] for r in records])
        assert results["metrics"][method] == again
    assert any(r["clip"] != r["comclip"] for r in records)  # the sub-images changed the scores
    assert all(set(d["weights"]) == {"subject", "object", "relation"} for r in records for row in r["details"]
               for d in row)
    assert json.loads((reference / "status.json").read_text())["state"] == "tested"
    table = (reference / "test" / "summary.md").read_text()
    assert "| text |" in table and "12 of 12 items scored" in table


def test_a_rerun_computes_only_the_unfinished_items(inputs, reference, tmp_path):
    runs = tmp_path / "runs"
    (runs / "run" / "test").mkdir(parents=True)
    lines = (reference / "test" / "items-rank0.jsonl").read_text().splitlines(keepends=True)
    partial = "".join(lines[:7]) + lines[7][:40]  # 7 finished items, then a line torn by a kill
    (runs / "run" / "test" / "items-rank0.jsonl").write_text(partial)
    assert run_test(*overrides(inputs, runs)) == 0
    written = (runs / "run" / "test" / "items-rank0.jsonl").read_text()
    assert written.startswith("".join(lines[:7])) and len(written.splitlines()) == 12  # 5 computed now
    assert items(runs / "run") == items(reference)


def test_restart_discards_earlier_items(inputs, reference, tmp_path):
    runs = tmp_path / "runs"
    (runs / "run" / "test").mkdir(parents=True)
    (runs / "run" / "test" / "items-rank9.jsonl").write_text('{"key": "stale"}\n')
    assert run_test(*overrides(inputs, runs), "--restart") == 0
    assert items(runs / "run") == items(reference)


def test_sigkill_mid_run_then_the_same_command_resumes_to_the_same_items(inputs, reference, tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, str(REPO / "launch" / "evaluate.py"), "test", "--config", str(CONFIG),
               *overrides(inputs, runs), "data.params.batch_size=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    journal = runs / "run" / "test" / "items-rank0.jsonl"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.read_text().count("\n") >= 2) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = journal.read_text().count("\n")
    assert finished < 12, "the run ended before it could be killed"
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert items(runs / "run") == items(reference)


def test_two_ddp_ranks_give_the_items_of_one(inputs, reference, tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, str(REPO / "launch" / "evaluate.py"), "test", "--config", str(CONFIG),
               *overrides(inputs, runs), "trainer.devices=2", "trainer.strategy=ddp"]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted((runs / "run" / "test").glob("items-rank*.jsonl"))
    assert [f.name for f in files] == ["items-rank0.jsonl", "items-rank1.jsonl"]
    assert all(f.read_text().count("\n") == 6 for f in files)  # each rank scored its own half
    assert items(runs / "run") == items(reference)
    assert json.loads((runs / "run" / "test" / "results.json").read_text())["metrics"] == \
        json.loads((reference / "test" / "results.json").read_text())["metrics"]


def write_odd_items(out: Path) -> Path:
    """Three matching items: one whole, one without its second image, one whose captions no rule parses."""
    from lightning_modules.comclip.synthetic import draw_pair, pair_spec

    drawn = draw_pair(pair_spec(0, 0), 24)
    whole = {"image_0.png": png_bytes(drawn["images"][0]), "image_1.png": png_bytes(drawn["images"][1])}
    rows = [("00", whole, ["a red circle left of a blue square", "a blue circle left of a red square"]),
            ("01", {"image_0.png": whole["image_0.png"]}, ["a red circle", "a blue circle"]),
            ("02", whole, ["left of above", "of of of"])]

    def encode(row):
        key, images, captions = row
        return key, {**images, "json": json_bytes({"id": key, "task": "winoground", "captions": captions,
                                                   "boxes": drawn["boxes"]})}

    write_shards(out, rows, encode, ShardOptions(), {"task": "winoground", "benchmark": "odd"})
    return out


def test_a_missing_image_and_an_unparsed_caption_are_counted_not_dropped(inputs, tmp_path):
    runs = tmp_path / "runs"
    assert run_test(*overrides(inputs, runs, data=write_odd_items(tmp_path / "odd"))) == 0
    results = json.loads((runs / "run" / "test" / "results.json").read_text())
    assert results["items"] == 3 and results["scored"] == 2
    assert results["errors"] == {"count": 1, "examples": [{"key": "01", "error": "missing image_1"}]}
    assert results["parse_failures"]["count"] == 2 and results["parse_failures"]["captions"] == 4
    unparsed = next(r for r in items(runs / "run") if r["key"] == "02")
    assert unparsed["comclip"] == unparsed["clip"]  # scored by plain CLIP


def test_rerank_on_retrieval_shards(inputs, tmp_path):
    from lightning_modules.cpl.synthetic import write_retrieval

    data = write_retrieval(tmp_path / "retrieval", train_images=1, test_images=8, size=24)["test"]
    runs = tmp_path / "runs"
    base = overrides(inputs, runs, data=Path(data))
    assert run_test(*base, "model.params.top_k=3") == 0
    results = json.loads((runs / "run" / "test" / "results.json").read_text())
    assert results["task"] == "rerank" and results["scored"] == 8
    for method in ("clip", "comclip"):
        for direction in ("text_to_image", "image_to_text"):
            assert set(results["metrics"][method][direction]) == {"R@1", "R@5"}
    records = items(runs / "run")
    assert all(r["caption_ids"] for r in records)  # every image is in some caption's top 3
    # the gallery embedded in passes of 3 images (3 + 3 + 2, the last one short): the same gallery
    assert run_test(*base, "run.name=passes", "model.params.top_k=3", "model.params.clip_batch_size=3") == 0
    passes = json.loads((runs / "passes" / "test" / "results.json").read_text())
    assert passes["metrics"] == results["metrics"]
    assert [r["caption_ids"] for r in items(runs / "passes")] == [r["caption_ids"] for r in records]
    # re-ranking inside a top 1 changes nothing
    assert run_test(*base, "run.name=top1", "model.params.top_k=1") == 0
    top1 = json.loads((runs / "top1" / "test" / "results.json").read_text())["metrics"]
    assert top1["clip"] == top1["comclip"]


def test_config_errors_are_one_line_each_and_exit_2(inputs, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert run_test(*overrides(inputs, runs), "data.params.test=null") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.params.test" in err[0]
    assert run_test(*overrides(inputs, runs), "model.params.grounding={kind: detector, model_path: /no/such/owl}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.params.grounding.model_path" in err[0] and "/no/such/owl" in err[0]
    assert run_test(*overrides(inputs, runs), "model.params.parsers=[{kind: rule}]") == 2
    assert "did you mean rules" in capsys.readouterr().err
    assert not (runs / "run" / "test").exists()  # nothing written


def test_submit_test_renders_the_test_loop(inputs, tmp_path, capsys):
    from launch import submit

    assert submit.main(["--config", str(CONFIG), "--test", "--dry-run", *overrides(inputs, tmp_path)]) == 0
    script = capsys.readouterr().out
    assert "launch/evaluate.py test --config" in script and "--resume" not in script
