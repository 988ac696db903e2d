"""Benchmark validation during training: the stratified subset, and the callback in fits through launch/fit.py
(CPL answering with its learned prompts; two DDP ranks, rank 0 alone or sharded)."""

from __future__ import annotations

import csv
import json
import random
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import yaml

from callbacks.benchmark_validation import BenchmarkValidation, summary_metrics
from datamodules.benchmarks import Question, load_questions, resolve_video, sample_frames
from datamodules.benchmarks.subset import stratified_subset, stratum_of, stratum_quotas
from datamodules.benchmarks.synthetic import write_synthetic_vlm4d
from datamodules.errors import ParamError, UsageError
from launch.config import instantiate
from lightning_modules.clip_pretrain.random_clip import write_random_clip
from lightning_modules.clip_scorer import ClipScorer
from lightning_modules.cpl.inference import CPLScorer
from lightning_modules.cpl.synthetic import write_base_to_new
from tests.conftest import DEMO_CONFIG, REPO, run_fit

CPL_CONFIG = REPO / "configs" / "demo" / "cpl.yaml"
VLM4D_METRICS = ("overall", "real", "real_exo", "real_ego", "synthetic", "synthetic_directional", "synthetic_fp")


def question(split: str, number: int, group: str, benchmark: str = "vlm4d") -> Question:
    categories = {"group": group} if benchmark == "vlm4d" else {"discipline": group, "type": "Explanation"}
    return Question(benchmark=benchmark, split=split, id=f"validation_{number}", video=f"v{number}.mp4",
                    question="q?", options={"A": "x", "B": "y"}, answer_letter="A", answer_text="x",
                    correct_letters=("A",), categories=categories)


# ----------------------------------------------------------------------------------------------- the subset
def test_subset_is_proportional_covers_every_stratum_and_is_deterministic():
    sizes = {("real", "exo"): 100, ("real", "ego"): 30, ("synthetic", "directional"): 5, ("synthetic", "fp"): 1}
    questions = [question(split, 1000 * i + n, group)
                 for i, ((split, group), size) in enumerate(sizes.items()) for n in range(1, size + 1)]
    subset = stratified_subset(questions, 20, seed=0)
    assert Counter(map(stratum_of, subset)) == {"real_exo": 14, "real_ego": 4, "synthetic_directional": 1,
                                                "synthetic_fp": 1}
    assert [q.key for q in subset] == [q.key for q in questions if q in subset]  # the given order
    shuffled = random.Random(1).sample(questions, len(questions))
    assert {q.key for q in stratified_subset(shuffled, 20, seed=0)} == {q.key for q in subset}
    assert {q.key for q in stratified_subset(questions, 20, seed=1)} != {q.key for q in subset}
    assert stratified_subset(questions, 1000) == questions
    assert Counter(map(stratum_of, stratified_subset(questions, 2))) == {"real_exo": 1, "real_ego": 1}
    with pytest.raises(ValueError):
        stratified_subset(questions, 0)


def test_quotas_sum_to_n_with_at_least_one_each():
    for n in range(4, 40):
        quotas = stratum_quotas({"a": 50, "b": 3, "c": 1, "d": 7}, n)
        assert sum(quotas.values()) == n and min(quotas.values()) >= 1 and quotas["c"] == 1


def test_mmworld_is_stratified_by_discipline():
    disciplines = ["Science"] * 40 + ["Art & Sports"] * 10 + ["Health & Medicine"] * 2
    questions = [question("test", n, discipline, "mmworld") for n, discipline in enumerate(disciplines)]
    assert Counter(q.categories["discipline"] for q in stratified_subset(questions, 10)) == {
        "Science": 7, "Art & Sports": 2, "Health & Medicine": 1}
    summary = {"benchmark": "mmworld", "overall": 50.0, "by_discipline": {"Art & Sports": 25.0, "Science": None},
               "by_type": {"Explanation": 50.0}, "by_flag": {"requires_audio": None}}
    assert summary_metrics(summary, "benchmark") == {"benchmark/mmworld/overall": 50.0,
                                                     "benchmark/mmworld/discipline/art_sports": 25.0,
                                                     "benchmark/mmworld/type/explanation": 50.0}


def test_arguments_are_checked():
    with pytest.raises(ParamError, match="benchmark: must be one of"):
        BenchmarkValidation("mmbench", {"test": "x.json"}, "videos")
    with pytest.raises(ParamError) as refused:
        BenchmarkValidation("vlm4d", {"reall": "x.json"}, "videos", num_questions=0, batch_size=0)
    assert refused.value.problems == [("questions.reall", "not a vlm4d split (did you mean real?) (splits: real, "
                                                          "synthetic)"),
                                      ("num_questions", "must be >= 1, got 0"), ("batch_size", "must be >= 1, got 0")]
    with pytest.raises(ParamError, match="responder: dict is not a responder"):
        BenchmarkValidation("vlm4d", {"real": "x.json"}, "videos", responder={"target": "x"})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("benchmark-validation")
    bench = write_synthetic_vlm4d(root / "vlm4d", videos=6, frames=6, size=24)
    return {"root": root, "bench": bench, "clip": write_random_clip(root / "clip", image_size=16)}


class FirstOption:
    """Answers the first option; none for real-split questions (a responder may leave a question unanswered)."""

    needs_frames = True

    def __init__(self):
        self.calls: list[int] = []

    def respond(self, questions, frames):
        self.calls.append(len(questions))
        assert all(f.ndim == 4 and f.shape[0] == 4 for f in frames)
        return [None if q.split == "real" else next(iter(q.options)) for q in questions]


def test_undecodable_videos_and_unanswered_questions_are_reported_not_dropped(world, tmp_path):
    bench = world["bench"]
    root = tmp_path / "videos"
    shutil.copytree(bench["video_root"], root)
    (root / bench["videos"][1]).write_bytes(b"not a video")
    callback = BenchmarkValidation("vlm4d", bench["questions"], str(root), num_frames=4, batch_size=5,
                                   responder=FirstOption())
    with pytest.raises(ValueError, match="benchmark_responder"):
        BenchmarkValidation("vlm4d", bench["questions"], str(root)).setup(None, L.LightningModule(), "fit")
    callback.setup(None, L.LightningModule(), "fit")
    trainer = SimpleNamespace(global_step=7, current_epoch=0)
    summary = callback.summarize(callback.answer(callback.subset, None), trainer, ranks=1)
    broken = [list(q.key) for q in callback.subset if q.video == bench["videos"][1]]
    real = [list(q.key) for q in callback.subset if q.split == "real" and list(q.key) not in broken]
    assert broken and summary["videos"]["undecodable"] == broken
    assert list(summary["videos"]["undecodable_videos"]) == [bench["videos"][1]]
    assert sorted(summary["missing"]["ids"]) == sorted(broken + real)  # counted wrong, listed
    assert summary["counts"]["overall"]["total"] == len(callback.subset) and summary["global_step"] == 7
    assert sum(callback.fixed_responder.calls) == len(callback.subset) - len(broken)
    assert max(callback.fixed_responder.calls) <= 5


def test_a_responder_given_as_target_and_params_is_built_by_the_config(world):
    node = {"target": "callbacks.benchmark_validation.BenchmarkValidation",
            "params": {"benchmark": "vlm4d", "questions": world["bench"]["questions"],
                       "video_root": world["bench"]["video_root"],
                       "responder": {"target": "lightning_modules.clip_scorer.ClipScorer",
                                     "params": {"pretrained": str(world["clip"]), "device": "cpu"}}}}
    callback = instantiate(node)
    assert isinstance(callback.responder(None), ClipScorer) and callback.responder(None) is callback.responder(None)


# ----------------------------------------------------------------------------------------------- fits


def benchmark_callback(world: dict, **params) -> dict:
    return {"target": "callbacks.benchmark_validation.BenchmarkValidation",
            "params": {"benchmark": "vlm4d", "questions": world["bench"]["questions"],
                       "video_root": world["bench"]["video_root"], "num_questions": 64, "num_frames": 4, **params}}


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "logs" / "csv" / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(f)]


def test_cpl_fit_logs_benchmark_metrics_and_reports_a_missing_video(world):
    """CPL (CoCoOp variant: no BERTScore) answers with its learned prompts; one video is missing."""
    root, bench = world["root"], world["bench"]
    data = write_base_to_new(root / "cpl-data", shots=2, per_class_test=2, size=16)
    missing = "videos_synthetic/synthetic_missing.mp4"
    synthetic = json.loads(Path(bench["questions"]["synthetic"]).read_text())
    synthetic[0]["video"] = synthetic[0]["video"].rsplit("videos_synthetic/", 1)[0] + missing
    questions = {**bench["questions"], "synthetic": str(root / "synthetic_mc.json")}
    Path(questions["synthetic"]).write_text(json.dumps(synthetic))

    config = yaml.safe_load(CPL_CONFIG.read_text())
    config["base"] = [str((CPL_CONFIG.parent / b).resolve()) for b in config["base"]]
    config["run"].update(root=str(root / "runs"), name="cpl")
    config["model"]["params"].update(variant="cocoop", clip={"pretrained": str(world["clip"])})
    config["data"]["params"].update(train=data["train"], val={"base": data["base"], "new": data["new"]}, image_size=16)
    config["trainer"].update(max_epochs=2, check_val_every_n_epoch=1)
    config["callbacks"].append(benchmark_callback(world, questions=questions, frame_cache=str(root / "frames")))
    path = root / "cpl.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_fit("--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "runs" / "cpl"

    logged = [row for row in metric_rows(run_dir) if "benchmark/vlm4d/overall" in row]
    assert len(logged) == 2  # both validations, not the sanity check
    assert all(0 <= row[f"benchmark/vlm4d/{name}"] <= 100 for row in logged for name in VLM4D_METRICS)
    reports = sorted((run_dir / "benchmarks").glob("vlm4d-step*.json"), key=lambda p: int(p.stem.split("step")[1]))
    # named by global step, as checkpoints are (the logger writes a validation under global step - 1)
    assert [int(p.stem.split("step")[1]) for p in reports] == [int(row["step"]) + 1 for row in logged]
    summary = json.loads(reports[-1].read_text())
    missing_keys = [["synthetic", q["id"]] for q in synthetic if q["video"].endswith(missing)]
    assert summary["videos"]["missing_videos"] == [missing] and summary["videos"]["missing"] == missing_keys
    assert summary["missing"]["ids"] == missing_keys  # not asked, counted wrong
    items = summary["items"]
    assert summary["num_questions"] == len(items) == sum(len(json.loads(Path(p).read_text()))
                                                         for p in questions.values())
    assert summary["overall"] == round(100 * sum(i["correct"] for i in items) / len(items), 2)
    assert logged[-1]["benchmark/vlm4d/overall"] == pytest.approx(summary["overall"])
    assert "have no video" in result.stderr and any((root / "frames").iterdir())

    # the checkpoint of that fit, scored by ClipScorer, answers as the module did at its last validation
    scorer = CPLScorer(cpl_checkpoint=str(run_dir / "checkpoints" / "last.ckpt"), device="cpu")
    asked = [q for split, p in questions.items() for q in load_questions("vlm4d", p, split)
             if resolve_video(q, bench["video_root"]) is not None]
    frames = [sample_frames(resolve_video(q, bench["video_root"]), 4) for q in asked]
    responses = {(i["split"], i["id"]): i["response"] for i in items}
    assert scorer.respond(asked, frames) == [responses[q.key] for q in asked]


def test_ddp_sharded_answers_equal_rank_zero_answers(world):
    """Two gloo ranks; one callback answers on rank 0 alone, the other shards; the second of two validations only."""
    root = world["root"]
    responder = {"target": "lightning_modules.clip_scorer.ClipScorer",
                 "params": {"pretrained": str(world["clip"]), "device": "cpu"}}
    config = {"base": [str(DEMO_CONFIG)],
              "run": {"root": str(root / "runs"), "name": "ddp"},
              "trainer": {"max_steps": 10, "val_check_interval": 5, "strategy": "ddp", "devices": 2},
              "callbacks": [benchmark_callback(world, responder=responder, prefix=prefix, every_n_validations=2,
                                               shard_across_ranks=prefix == "sharded", batch_size=3)
                            for prefix in ("rank0", "sharded")]}
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_fit("--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "runs" / "ddp"
    rows = [row for row in metric_rows(run_dir) if any(k.startswith("rank0/") for k in row)]
    assert len(rows) == 1
    names = [k.split("/", 1)[1] for k in rows[0] if k.startswith("rank0/")]
    assert sorted(names) == sorted(f"vlm4d/{name}" for name in VLM4D_METRICS)
    assert all(rows[0][f"sharded/{name}"] == rows[0][f"rank0/{name}"] for name in names)
    reports = {p.name: json.loads(p.read_text()) for p in (run_dir / "benchmarks").iterdir()}
    assert set(reports) == {"rank0-vlm4d-step10.json", "sharded-vlm4d-step10.json"}
    alone, sharded = reports["rank0-vlm4d-step10.json"], reports["sharded-vlm4d-step10.json"]
    assert (alone["ranks"], sharded["ranks"]) == (1, 2)
    assert alone["items"] == sharded["items"] and alone["videos"]["counts"]["missing"] == 0


class FailsOnRank:
    """Answers "A", except on one rank, where it raises (a model error on one GPU of a job)."""

    needs_frames = False

    def __init__(self, failing_rank: int, rank: int):
        self.failing_rank, self.rank = failing_rank, rank

    def respond(self, questions, frames):
        if self.rank == self.failing_rank:
            raise RuntimeError(f"model exploded on rank {self.rank}")
        return ["A"] * len(questions)


def _evaluate_on_two_ranks(rank: int, init_file: str, questions_file: str, video_root: str, shard: bool,
                           failing_rank: int, out: str) -> None:
    """One of two gloo ranks: runs the callback's evaluation and records what it raised."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        callback = BenchmarkValidation("vlm4d", {"synthetic": questions_file}, video_root, num_questions=6,
                                       shard_across_ranks=shard, responder=FailsOnRank(failing_rank, rank))
        callback.subset = load_questions("vlm4d", questions_file, "synthetic")[:6]

        def broadcast(obj, src=0):
            box = [obj]
            dist.broadcast_object_list(box, src=src)
            return box[0]

        trainer = SimpleNamespace(world_size=2, global_rank=rank, is_global_zero=rank == 0, global_step=0,
                                  current_epoch=0, strategy=SimpleNamespace(broadcast=broadcast))
        try:
            callback.evaluate(trainer, None)
            outcome = "returned"
        except RuntimeError as e:
            outcome = str(e)
        Path(out, f"rank{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("shard,failing_rank", [(True, 1), (False, 0)])
def test_a_failure_on_one_rank_is_raised_on_every_rank_without_hanging(world, tmp_path, shard, failing_rank):
    import torch.multiprocessing as mp

    bench = world["bench"]
    context = mp.start_processes(_evaluate_on_two_ranks, nprocs=2, join=False, start_method="spawn",
                                 args=(str(tmp_path / "init"), str(bench["questions"]["synthetic"]),
                                       str(bench["video_root"]), shard, failing_rank, str(tmp_path)))
    for _ in range(120):  # a hang would be a rank waiting forever in a collective: fail the test instead
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the ranks hung after one of them failed")
    for rank in (0, 1):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert "benchmark vlm4d failed" in outcome and f"model exploded on rank {failing_rank}" in outcome, outcome


def test_a_mistyped_split_or_missing_file_is_a_config_problem_before_the_run(tmp_path):
    from launch.config import load_config
    from launch.fit import check_config

    callback = {"target": "callbacks.benchmark_validation.BenchmarkValidation",
                "params": {"benchmark": "vlm4d", "questions": {"reall": str(tmp_path / "real_mc.json"),
                                                               "synthetic": str(tmp_path / "absent.json")},
                           "video_root": str(tmp_path / "videos")}}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"base": [str(DEMO_CONFIG)], "callbacks": [callback]}))
    with pytest.raises(UsageError) as refused:
        check_config(load_config(config))
    key = "callbacks.0.params"
    assert refused.value.lines == [
        f"{config}: {key}.questions.reall: not a vlm4d split (did you mean real?) (splits: real, synthetic)",
        f"{config}: {key}.questions.synthetic: no such file: {tmp_path / 'absent.json'}",
        f"{config}: {key}.video_root: no such directory: {tmp_path / 'videos'} (the directory holding the videos)"]
