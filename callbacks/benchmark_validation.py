"""Benchmark accuracy while training: a fixed stratified subset of MMWorld / VLM4D questions, answered at the end of
every k-th validation (never in the sanity check).

The subset (datamodules/benchmarks/subset.py) is drawn once from the question files: proportional per VLM4D split and
group or MMWorld discipline, seeded. Its frames are decoded once and kept in memory (or in `frame_cache` on disk).
The responder is `responder` (a config builds it from target/params: lightning_modules/responders.py,
lightning_modules/clip_scorer.py), or asked of the LightningModule at each evaluation
(`pl_module.benchmark_responder()`: e.g. CPL scores options with its learned prompts), so this callback knows no
method. Questions are asked through lightning_modules/responders.py `answer_in_batches`, as `launch/evaluate.py run`
asks them.

Ranks: by default rank 0 answers everything and broadcasts the summary; with `shard_across_ranks` each rank answers
every world_size-th question and the responses are gathered. Either way every rank logs the same values (so
monitoring a benchmark metric agrees across ranks): `{prefix}/{benchmark}/overall` and one metric per category
(VLM4D real_exo, real_ego, real, synthetic_directional, synthetic_fp, synthetic; MMWorld discipline/..., type/...,
flag/...). Rank 0 writes `<default_root_dir>/benchmarks/{benchmark}-step{global_step}.json` (another prefix than
"benchmark" leads the file name): the summary of scoring.summarize, the video check, and every item. A question whose
video is missing or undecodable is not asked; it counts as wrong, is listed in the summary and warned about once.
"""

from __future__ import annotations

import json
import re
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.benchmarks.frames import VideoDecodeError, sample_frames
from datamodules.benchmarks.questions import (BENCHMARKS, MMWORLD_SPLIT, VLM4D_SPLITS, Question, VideoReport,
                                              index_questions, load_questions, resolve_video)
from datamodules.benchmarks.scoring import score_responses, summarize
from datamodules.benchmarks.subset import stratified_subset
from datamodules.errors import ParamError, count_problems, did_you_mean, raise_param_problems
from datamodules.files import atomic_write_text
from lightning_modules.responders import answer_in_batches

DEFAULT_PREFIX = "benchmark"


def metric_name(text: str) -> str:
    """A category as a metric name part: 'Art & Sports' -> 'art_sports'."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_") or "none"


def summary_metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """`{prefix}/{benchmark}/{category}` -> accuracy (%) for every category with questions."""
    benchmark = summary["benchmark"]
    found: dict[str, float | None] = {}
    if benchmark == "vlm4d":
        found = {name: summary[name] for name in summary["counts"]}
    else:
        found["overall"] = summary["overall"]
        for group, part in (("by_discipline", "discipline"), ("by_type", "type"), ("by_flag", "flag")):
            found.update({f"{part}/{metric_name(k)}": v for k, v in summary[group].items()})
    return {f"{prefix}/{benchmark}/{name}": float(v) for name, v in found.items() if v is not None}


class BenchmarkValidation(Callback):
    """benchmark: vlm4d or mmworld. questions: split -> question file (vlm4d: real / synthetic; mmworld: test).
    video_root: where the videos lie (VLM4D: the paths after resolve/main/; MMWorld: by video_id).
    num_questions: size of the stratified subset. every_n_validations: answer at every k-th validation.
    num_frames: frames sampled uniformly per video. frame_cache: directory for decoded frames (else memory).
    shard_across_ranks: each rank answers a share (else rank 0 answers all while the others wait).
    responder: a responder (in a config: its target/params); None asks pl_module.benchmark_responder().
    batch_size: questions per responder call. prefix: first part of the metric names.
    """

    def __init__(self, benchmark: str, questions: dict[str, str], video_root: str, num_questions: int = 64,
                 every_n_validations: int = 1, num_frames: int = 8, frame_cache: str | None = None, seed: int = 0,
                 shard_across_ranks: bool = False, responder: Any = None, batch_size: int = 8,
                 prefix: str = DEFAULT_PREFIX):
        raise_param_problems(self.config_problems(
            {"benchmark": benchmark, "questions": questions, "num_questions": num_questions,
             "every_n_validations": every_n_validations, "num_frames": num_frames, "batch_size": batch_size},
            check_files=False))
        if responder is not None and not callable(getattr(responder, "respond", None)):
            raise ParamError([("responder", f"{type(responder).__name__} is not a responder (no respond(questions, "
                                            f"frames)); give target/params of one, or null")])
        self.benchmark, self.question_files = benchmark, dict(questions)
        self.video_root, self.num_questions, self.seed = Path(video_root), num_questions, seed
        self.every_n_validations, self.num_frames, self.batch_size = every_n_validations, num_frames, batch_size
        self.frame_cache, self.shard_across_ranks, self.prefix = frame_cache, shard_across_ranks, prefix
        self.fixed_responder = responder
        self.subset: list[Question] | None = None
        self.validations = 0  # full validations seen (saved in checkpoints: a resumed run keeps the rhythm)
        self._frames: dict[str, np.ndarray] = {}  # video -> decoded frames, when there is no frame_cache
        self._warned = False
        # Every rank logs the same, already complete values: Lightning's advice to sync them does not apply.
        warnings.filterwarnings("ignore", message=rf".*self\.log\('{re.escape(prefix)}/{benchmark}/")

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """(param, message) for values that cannot work, checked with the config before anything runs: the
        benchmark, its splits (vlm4d: real, synthetic; mmworld: test), the counts, and with `check_files` the
        question files and the video directory."""
        problems = []
        benchmark, questions = params.get("benchmark"), params.get("questions") or {}
        if benchmark not in BENCHMARKS:
            problems.append(("benchmark", f"must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}"))
        splits = VLM4D_SPLITS if benchmark == "vlm4d" else (MMWORLD_SPLIT,)
        if not questions:
            problems.append(("questions", "give at least one split: file (vlm4d: real, synthetic; mmworld: test)"))
        for split, path in questions.items():
            if benchmark in BENCHMARKS and split not in splits:
                problems.append((f"questions.{split}", f"not a {benchmark} split{did_you_mean(split, splits)} "
                                                       f"(splits: {', '.join(splits)})"))
            elif check_files and not Path(path).is_file():
                problems.append((f"questions.{split}", f"no such file: {path}"))
        problems += count_problems(params, ("num_questions", "every_n_validations", "num_frames", "batch_size"))
        video_root = params.get("video_root")
        if check_files and isinstance(video_root, str) and not Path(video_root).is_dir():
            problems.append(("video_root", f"no such directory: {video_root} (the directory holding the videos)"))
        return problems

    @property
    def state_key(self) -> str:
        return self._generate_state_key(benchmark=self.benchmark, prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Read the question files and draw the subset before training starts, so a bad file fails early."""
        if self.fixed_responder is None and not callable(getattr(pl_module, "benchmark_responder", None)):
            raise ValueError(f"BenchmarkValidation: {type(pl_module).__name__} has no benchmark_responder(); give "
                             f"the callback a responder (target/params)")
        if self.subset is None:
            questions: list[Question] = []
            for split, path in self.question_files.items():
                questions += load_questions(self.benchmark, path, split)
            index_questions(questions)  # a split given twice is an error
            self.subset = stratified_subset(questions, self.num_questions, self.seed)

    def responder(self, pl_module: L.LightningModule) -> Any:
        if self.fixed_responder is None:
            return pl_module.benchmark_responder()  # asked each time: it answers with the module's current state
        return self.fixed_responder

    # -- answering ------------------------------------------------------------------------------------------------
    def frames(self, question: Question, videos: dict[str, tuple[str, str]]) -> np.ndarray | None:
        """The question's sampled frames, or None (its video's status recorded in `videos`)."""
        if question.video in self._frames:
            videos[question.video] = ("present", "")
            return self._frames[question.video]
        path = resolve_video(question, self.video_root)
        if path is None:
            videos[question.video] = ("missing", "")
            return None
        try:
            frames = sample_frames(path, self.num_frames, cache_dir=self.frame_cache)
        except FileNotFoundError:
            videos[question.video] = ("missing", "")
            return None
        except VideoDecodeError as e:
            videos[question.video] = ("undecodable", str(e))
            return None
        videos[question.video] = ("present", "")
        if self.frame_cache is None:
            self._frames[question.video] = frames
        return frames

    def answer(self, questions: list[Question], pl_module: L.LightningModule) -> dict[str, Any]:
        """{"responses": {(split, id): text}, "videos": {video: (status, reason)}} for these questions; a None
        response (no answer) is left out, so it is scored as missing."""
        responses: dict[tuple[str, str], str] = {}
        videos: dict[str, tuple[str, str]] = {}
        for _, answered in answer_in_batches(questions, self.responder(pl_module),
                                             lambda q: self.frames(q, videos), self.batch_size):
            responses.update((q.key, text) for q, text in answered if text is not None)
        return {"responses": responses, "videos": videos}

    @staticmethod
    def _guarded(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """work() or {"error": traceback}: ranks waiting in a collective learn of a failure instead of hanging."""
        try:
            return work()
        except Exception:  # re-raised on every rank by `evaluate`, with this rank's traceback
            return {"error": traceback.format_exc()}

    def summarize(self, answered: dict[str, Any], trainer: L.Trainer, ranks: int) -> dict[str, Any]:
        """scoring.summarize of the responses, with the video check, the step, the items and how many ranks
        answered."""
        questions = self.subset
        items = score_responses(questions, answered["responses"])
        report = None
        if answered["videos"]:
            report = VideoReport(root=str(self.video_root))
            for q in questions:
                status, reason = answered["videos"].get(q.video, ("present", ""))
                getattr(report, status).append(q.key)
                if status == "missing" and q.video not in report.missing_videos:
                    report.missing_videos.append(q.video)
                elif status == "undecodable":
                    report.undecodable_videos[q.video] = reason
        summary = summarize(self.benchmark, items, videos=report)
        summary.update(global_step=trainer.global_step, epoch=trainer.current_epoch, num_questions=len(questions),
                       ranks=ranks)
        summary["items"] = [{**item.to_dict(), "response": answered["responses"].get(item.question.key)}
                            for item in items]
        return summary

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The summary of answering the subset, identical on every rank."""
        world = trainer.world_size
        distributed = world > 1 and dist.is_available() and dist.is_initialized()
        if self.shard_across_ranks and distributed:
            share = self.subset[trainer.global_rank::world]
            mine = self._guarded(lambda: self.answer(share, pl_module))
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, mine)
            errors = [f"rank {r}: {p['error']}" for r, p in enumerate(parts) if "error" in p]
            if errors:
                raise RuntimeError(f"benchmark {self.benchmark} failed:\n" + "\n".join(errors))
            answered = {"responses": {}, "videos": {}}
            for part in parts:
                answered["responses"].update(part["responses"])
                answered["videos"].update(part["videos"])
            return self.summarize(answered, trainer, ranks=world)
        result = None
        if trainer.is_global_zero:
            def work() -> dict[str, Any]:
                return self.summarize(self.answer(self.subset, pl_module), trainer, ranks=1)

            result = self._guarded(work) if distributed else work()
        if distributed:
            result = trainer.strategy.broadcast(result, src=0)
        if "error" in result:
            raise RuntimeError(f"benchmark {self.benchmark} failed on rank 0:\n{result['error']}")
        return result

    # -- hook -----------------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.subset is None:
            return
        self.validations += 1
        if self.validations % self.every_n_validations:
            return
        summary = self.evaluate(trainer, pl_module)
        if trainer.is_global_zero:
            self.write(trainer, summary)
        for name, value in summary_metrics(summary, self.prefix).items():
            pl_module.log(name, value, sync_dist=False)

    def write(self, trainer: L.Trainer, summary: dict[str, Any]) -> Path:
        # another prefix leads the name: two callbacks on one benchmark do not overwrite each other's files
        name = self.benchmark if self.prefix == DEFAULT_PREFIX else f"{metric_name(self.prefix)}-{self.benchmark}"
        path = Path(trainer.default_root_dir) / "benchmarks" / f"{name}-step{trainer.global_step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
        videos = summary.get("videos")
        if videos and not self._warned and (videos["counts"]["missing"] or videos["counts"]["undecodable"]):
            self._warned = True
            c = videos["counts"]
            rank_zero_warn(f"benchmark {self.benchmark}: {c['missing']} of {c['questions']} subset questions have no "
                           f"video under {self.video_root} and {c['undecodable']} an undecodable one; they count as "
                           f"wrong (listed in {path})")
        return path
