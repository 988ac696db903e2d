"""The loop of `launch/evaluate.py run`: a responder over a benchmark's questions, resumably, then scored:
`run_benchmark`. The questions are asked through lightning_modules/responders.py `answer_in_batches`, as the
training-time callback asks them.

OUT/responses.jsonl is the run's memory: one {"split", "id", "response", "asked"} line per answered question
("asked": Question.asked_digest, a hash of the video, question and options shown), appended a batch at a time
(written with SIGINT / SIGTERM held back, flushed and fsynced). A rerun reads it and sends only the questions it
lacks; a torn last line (the process killed mid-write) is cut off and its question asked again; a question that
changed under its id since is refused. OUT/run.json records what produced the responses (benchmark, frame
sampling, the responder's settings): a rerun with different settings refuses to mix its answers with the old ones
(until the directory holds a response, run.json is simply rewritten).

Questions whose video is missing or cannot be decoded are not sent; they are scored as missing (wrong) and
listed, with the video check, in the summary. Finally OUT/items.jsonl, summary.json, summary.md (and for MMWorld
evalai_submission.json) are written by scoring.write_outputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from datamodules.benchmarks.frames import Sampling, VideoDecodeError, sample_frames
from datamodules.benchmarks.questions import (BenchmarkFileError, QKey, Question, VideoReport, check_videos,
                                              index_questions, resolve_video)
from datamodules.benchmarks.scoring import score_responses, summarize, write_outputs
from datamodules.files import atomic_write_text
from lightning_modules.responders import Responder, answer_in_batches

RESPONSES = "responses.jsonl"
RUN_INFO = "run.json"
FRAME_MEMORY = 8  # decoded videos kept in memory: MMWorld asks several questions about one video in a row


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during a run; responses.jsonl holds every batch finished before it."""

    def __init__(self, answered: int, total: int, path: Path):
        self.answered, self.total, self.path = answered, total, path
        super().__init__(f"interrupted with {answered} of {total} questions answered in {path}; "
                         f"run the same command again to resume")


# ----------------------------------------------------------------------------------------------- responses file
def read_run_records(path: str | os.PathLike, repair: bool = True) -> dict[QKey, dict[str, Any]]:
    """(split, id) -> record of a run's responses.jsonl. A last line without its newline or not valid JSON is
    what a kill mid-write leaves: it is dropped (and with `repair`, cut from the file). A bad line before the
    last one is an error."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" after a final newline, else an unterminated (torn) line
    keep = len(data) - len(tail)
    if not tail and lines:
        try:
            json.loads(lines[-1])
        except ValueError:  # a newline made it to disk but the line is damaged
            keep -= len(lines.pop()) + 1
    records: dict[QKey, dict[str, Any]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (str(record["split"]), str(record["id"]))
            record["response"]  # KeyError: not a response record
        except (ValueError, KeyError, TypeError) as e:
            raise BenchmarkFileError(f"{path}: line {n} is not a {{\"split\", \"id\", \"response\"}} record "
                                     f"({type(e).__name__}); delete the line (its question is asked again) "
                                     f"or the file (all are)") from e
        records[key] = record
    if repair and keep < len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return records


def read_run_responses(path: str | os.PathLike, repair: bool = True) -> dict[QKey, str | None]:
    """(split, id) -> response of a run's responses.jsonl (see read_run_records)."""
    return {key: record["response"] for key, record in read_run_records(path, repair).items()}


def check_same_questions(path: Path, records: Mapping[QKey, Mapping[str, Any]], questions: Sequence[Question]) -> None:
    """Refuse responses recorded for a question that has changed since (same id, other video/text/options).
    A line without "asked" (written before the digest was recorded) is taken as answering the same question."""
    changed = [q.key for q in questions
               if q.key in records and records[q.key].get("asked", q.asked_digest) != q.asked_digest]
    if changed:
        split, qid = changed[0]
        raise BenchmarkFileError(
            f"{path}: {len(changed)} responses answer questions that have changed since (e.g. {split}/{qid}: its "
            f"video, question or options differ); choose another output directory, or delete {path} to ask again")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back (delivered right after) so that a batch is appended whole."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # not Unix, or not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def append_responses(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    if not records:
        return
    payload = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with _signals_held():
        with open(path, "ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


def describe_run(benchmark: str, sampling: Sampling | None, responder: Any) -> dict[str, Any]:
    """What OUT/run.json records: the benchmark, the frame sampling (None: no frames) and the responder."""
    return {"benchmark": benchmark,
            "sampling": None if sampling is None else {"num_frames": sampling.num_frames, "fps": sampling.fps,
                                                       "max_frames": sampling.max_frames},
            "responder": responder}


def check_run_info(out: Path, info: Mapping[str, Any]) -> None:
    """Write OUT/run.json, or check that the existing one describes the same run."""
    path = out / RUN_INFO
    info = json.loads(json.dumps(info, default=str))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None and old != info and _holds_responses(out):
            changed = sorted(k for k in set(old) | set(info) if old.get(k) != info.get(k))
            raise BenchmarkFileError(
                f"{out}: holds responses of a different run (changed: {', '.join(changed)}; see {path}); "
                f"choose another output directory, or delete {out / RESPONSES} and {path} to start over")
        if old == info:
            return
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")


def _holds_responses(out: Path) -> bool:
    """Whether OUT has answers to protect (a run that failed before answering leaves run.json only)."""
    path = out / RESPONSES
    return path.is_file() and path.stat().st_size > 0


# ----------------------------------------------------------------------------------------------- progress
class _Progress:
    """A rich progress bar on a terminal; elsewhere (batch jobs' logs) a line now and then."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.bar = None
        self.last_line = time.monotonic()
        if not self.enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(description, total=total)
            self.bar.start()
        else:
            print(f"{description}: {total} questions to answer", file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif time.monotonic() - self.last_line > 60 or self.done == self.total:
            self.last_line = time.monotonic()
            print(f"answered {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ----------------------------------------------------------------------------------------------- run
def run_benchmark(questions: Sequence[Question], responder: Responder, video_root: str | os.PathLike | None,
                  out_dir: str | os.PathLike, *, num_frames: int | None = 8, fps: float | None = None,
                  max_frames: int | None = None, frame_cache: str | os.PathLike | None = None,
                  batch_size: int | None = None, progress: bool = True,
                  judge: Callable[[str, Mapping[str, str], str], str | None] | None = None,
                  run_info: Mapping[str, Any] | None = None, evalai: str | os.PathLike | None = None) -> dict:
    """Answer every question not yet in OUT/responses.jsonl, then score all of them; returns the summary.

    Frames: `num_frames` uniformly spaced, or (num_frames=None) `fps` frames per second thinned to `max_frames`
    (frames.sample_frames, cached under `frame_cache`). `batch_size` questions are decoded, answered and appended
    together (default: the responder's own batch_size, else 1). `video_root` may be None for a responder that
    needs no frames. `run_info` (the responder's settings) goes into OUT/run.json with the benchmark and sampling.
    Raises RunInterrupted on Ctrl-C / SIGTERM (resume by calling again), BenchmarkFileError for unusable files.
    """
    questions = list(questions)
    if not questions:
        raise ValueError("no questions to run")
    benchmarks = {q.benchmark for q in questions}
    if len(benchmarks) != 1:
        raise ValueError(f"questions of several benchmarks: {sorted(benchmarks)}")
    benchmark = benchmarks.pop()
    index_questions(questions)  # a repeated (split, id) is an error
    needs_frames = bool(getattr(responder, "needs_frames", True))
    sampling = Sampling(num_frames=num_frames, fps=fps, max_frames=max_frames) if needs_frames else None
    batch_size = batch_size or int(getattr(responder, "batch_size", 1) or 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BenchmarkFileError(f"{out}: exists and is not a directory (choose a directory for the results)")
    out.mkdir(parents=True, exist_ok=True)
    check_run_info(out, describe_run(benchmark, sampling, dict(run_info) if run_info is not None
                                     else type(responder).__name__))

    report: VideoReport | None = None
    if needs_frames:
        if video_root is None:
            raise ValueError(f"{type(responder).__name__} answers from video frames: give video_root")
        if not Path(video_root).is_dir():
            raise BenchmarkFileError(f"{video_root}: no such directory (give the directory holding the videos)")
        report = check_videos(questions, video_root, decode=True)
    elif video_root is not None and Path(video_root).is_dir():
        report = check_videos(questions, video_root, decode=False)  # reported only: the answers need no video

    responses_path = out / RESPONSES
    records = read_run_records(responses_path)
    check_same_questions(responses_path, records, questions)
    done = {key: record["response"] for key, record in records.items()}
    sendable = set(report.present) if (needs_frames and report is not None) else {q.key for q in questions}
    todo = [q for q in questions if q.key in sendable and q.key not in done]
    reused = sum(q.key in done for q in questions)
    bar = _Progress(len(todo), f"{benchmark}: answering", progress)
    frames_memory: OrderedDict[Path, np.ndarray] = OrderedDict()
    failed: dict[str, str] = {}  # videos that probed fine but failed to decode in full
    generated = 0

    def frames_of(q: Question) -> np.ndarray | None:
        path = resolve_video(q, video_root)
        if path is None:  # removed since the check
            failed[q.video] = "missing"
            return None
        if path in frames_memory:
            frames_memory.move_to_end(path)
            return frames_memory[path]
        try:
            frames = sample_frames(path, sampling.num_frames, fps=sampling.fps, max_frames=sampling.max_frames,
                                   cache_dir=frame_cache)
        except (VideoDecodeError, FileNotFoundError) as e:
            failed[q.video] = str(e)
            return None
        frames_memory[path] = frames
        while len(frames_memory) > FRAME_MEMORY:
            frames_memory.popitem(last=False)
        return frames

    try:
        for batch, responses in answer_in_batches(todo, responder, frames_of if needs_frames else None, batch_size):
            answered = [{"split": q.split, "id": q.id, "response": a, "asked": q.asked_digest}
                        for q, a in responses if a is not None]
            append_responses(responses_path, answered)
            for r in answered:
                done[(r["split"], r["id"])] = r["response"]
            generated += len(answered)
            bar.advance(len(batch))
    except KeyboardInterrupt as e:
        bar.close()
        on_disk = read_run_responses(responses_path, repair=False)  # the file, not `done`: a batch may be in both
        raise RunInterrupted(sum(q.key in on_disk for q in questions), len(questions), responses_path) from e
    finally:
        bar.close()

    if report is not None and failed:  # move questions whose video failed in full decoding out of "present"
        for q in questions:
            if q.video in failed and q.key in report.present and q.key not in done:
                report.present.remove(q.key)
                if failed[q.video] == "missing":
                    report.missing.append(q.key)
                    if q.video not in report.missing_videos:
                        report.missing_videos.append(q.video)
                else:
                    report.undecodable.append(q.key)
                    report.undecodable_videos[q.video] = failed[q.video]

    known = {q.key for q in questions}
    responses = {k: v for k, v in done.items() if k in known}
    unknown = list(dict.fromkeys([*(k for k in done if k not in known),
                                  *getattr(responder, "unknown_ids", lambda qs: [])(questions)]))
    items = score_responses(questions, responses, judge=judge)
    summary = summarize(benchmark, items, unknown, videos=report)
    summary["run"] = {"responses": str(responses_path), "answered": len(responses), "generated_now": generated,
                      "reused": reused, "questions": len(questions)}
    write_outputs(out, items, summary, evalai)
    return summary
