"""Evaluation: `python launch/evaluate.py run|score|test ...`.

test    runs a LightningModule's test loop over a dataset from a fit-style config (run, model, data, trainer,
        callbacks, slurm sections, as launch/fit.py; `data` gives `test`), with fit.py's trainer: DDP / SLURM
        ranks each read their share of the test data. The module keeps its finished items in the run directory
        (RUN/test/items-rank*.jsonl) and writes its results there (RUN/test/); a stopped run (preemption,
        Ctrl-C, a crash) started again with the same command computes only the unfinished items. A SIGUSR1 on
        SLURM (time-limit warning) requeues the job, as for a fit. --restart discards earlier items first.

run     answers a benchmark's questions with a model and scores them, from a YAML config
        (configs/benchmarks/*.yaml; `base:` files and key=value overrides as in fit.py):
          benchmark: {name: vlm4d|mmworld, questions: {SPLIT: FILE, ...}, video_root: DIR,
                      num_frames: 8, fps: null, max_frames: null, frame_cache: DIR|null, limit: null}
          model:     {target: a responder class, params: {...}}  (lightning_modules/responders.py:
                      TransformersVLM, ResponsesFile; lightning_modules.clip_scorer.ClipScorer; a method's own,
                      e.g. lightning_modules.cpl.inference.CPLScorer for a CPL checkpoint)
          judge:     null | {model_path: DIR, max_new_tokens: 16}
          out:       DIR
        Frames are num_frames uniformly spaced, or (num_frames: null) fps per second thinned to max_frames.
        limit takes the first N questions. Answers are appended to OUT/responses.jsonl batch by batch: after
        Ctrl-C, SIGTERM or a crash the same command resumes where it stopped. Then OUT/items.jsonl,
        summary.json, summary.md (and evalai_submission.json for MMWorld) are written as by `score`.
        The whole config is checked first; every problem is printed, one line each, exit code 2.
        --dry-run: check and print the resolved config only.

score   reads the benchmark's question files and model responses produced elsewhere (a JSON list or JSONL of
        {"id": ..., "response": ...}; for MMWorld "id" is f"{video_id}_{question index}", or give "video_id" and
        "question_index"; a file given without SPLIT= names each record's split in a "split" field; one given
        with SPLIT= may not hold records of another split; other fields are ignored),
        extracts the chosen option by rules (answers.py; --judge MODEL_DIR asks a local causal LM about the
        responses the rules leave unparsed) and writes OUT/items.jsonl (with the rule that decided each item),
        OUT/summary.json, OUT/summary.md. --explain SPLIT/ID prints which rule decided that item, on which words.
        For MMWorld it also writes an EvalAI submission (default OUT/evalai_submission.json):
        {video_id: {question_index: letter or null}}. MMWorld's repository does not publish the EvalAI format;
        this layout follows mmworld.json and is our choice, to be checked against the challenge page.

Files are given as SPLIT=FILE (VLM4D splits: real, synthetic; a released file name tells its split, so a bare
FILE works too) and keyed by (split, id): VLM4D ids repeat across real and synthetic.

Usage errors print one line naming the file or argument (run: one line per config problem) and exit with
code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datamodules.benchmarks.answers import LLMJudge  # noqa: E402
from datamodules.benchmarks.questions import (BENCHMARKS, MMWORLD_SPLIT, VLM4D_SPLITS,  # noqa: E402
                                              BenchmarkFileError, Question, index_questions, load_questions,
                                              vlm4d_split_of)
from datamodules.benchmarks.scoring import (collect_responses, parse_split_file, score_responses,  # noqa: E402
                                            summarize, write_outputs)
from datamodules.errors import UsageError, first_line  # noqa: E402
from launch import cli  # noqa: E402
from launch import config as configs  # noqa: E402
from launch.known_warnings import silence_harmless_warnings  # noqa: E402

PROG = "evaluate.py"


def usage(message: str) -> UsageError:
    """A mistake in the command line: one line, naming the program."""
    return UsageError(f"{PROG}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=cli.ArgumentParser)
    score = commands.add_parser("score", help="score responses produced elsewhere",
                                description="Score model responses against a benchmark's questions.")
    score.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    score.add_argument("--questions", action="append", required=True, metavar="[SPLIT=]FILE",
                       help="question file; repeat for several splits (vlm4d: real=real_mc.json "
                            "synthetic=synthetic_mc.json; mmworld: mmworld.json)")
    score.add_argument("--responses", action="append", required=True, metavar="[SPLIT=]FILE",
                       help="JSON list or JSONL of {id, response}; repeat per split")
    score.add_argument("--out", required=True, type=Path, metavar="DIR")
    score.add_argument("--judge", metavar="MODEL_DIR",
                       help="local transformers causal LM asked about responses the rules cannot parse")
    score.add_argument("--judge-max-new-tokens", type=int, default=16, metavar="N")
    score.add_argument("--evalai", type=Path, metavar="FILE",
                       help="mmworld: where to write the EvalAI submission (default OUT/evalai_submission.json)")
    score.add_argument("--explain", action="append", default=[], metavar="SPLIT/ID",
                       help="print which rule decided this item and on which words (repeatable; ID alone with "
                            "one split)")
    run = commands.add_parser("run", help="answer a benchmark with a model, then score (resumable)",
                              description="Answer a benchmark's questions with a model from a config, then score.")
    run.add_argument("--config", required=True, metavar="FILE", help="benchmark YAML (configs/benchmarks/)")
    run.add_argument("--dry-run", action="store_true", help="check the config and print it; run nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    test = commands.add_parser("test", help="run a model's test loop from a fit-style config (rank-sharded, resumable)",
                               description="Run a LightningModule's test loop over the config's data.test.")
    test.add_argument("--config", required=True, metavar="FILE", help="experiment YAML with data.params.test")
    test.add_argument("--dry-run", action="store_true", help="check the config and print it; run nothing")
    test.add_argument("--restart", action="store_true",
                      help="discard the items finished by an earlier run of this config and start over")
    test.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (OmegaConf dotlist)")
    return parser


def question_files(benchmark: str, values: list[str]) -> list[tuple[str, Path]]:
    files = []
    for value in values:
        split, path = parse_split_file(value)
        if benchmark == "vlm4d":
            split = split or vlm4d_split_of(path)
            if split is None:
                raise usage(f"--questions {value}: cannot tell the split from the file name "
                                 f"(write real=FILE or synthetic=FILE)")
            if split not in VLM4D_SPLITS:
                raise usage(f"--questions {value}: VLM4D splits are {' and '.join(VLM4D_SPLITS)} "
                                 f"(write real=FILE or synthetic=FILE)")
        split = split or MMWORLD_SPLIT
        if split in {s for s, _ in files}:
            raise usage(f"--questions {value}: split {split} given twice (one question file per split)")
        files.append((split, Path(path)))
    return files


def response_files(values: list[str], splits: list[str]) -> list[tuple[str | None, Path]]:
    files = []
    for value in values:
        split, path = parse_split_file(value)
        if split is not None and split not in splits:
            raise usage(f"--responses {value}: no questions for split {split} "
                             f"(add --questions {split}=FILE, or use one of: {', '.join(splits)})")
        files.append((split or (splits[0] if len(splits) == 1 else None), Path(path)))
    return files


def run_score(args: argparse.Namespace) -> dict:
    if args.out.exists() and not args.out.is_dir():
        raise usage(f"--out {args.out}: exists and is not a directory (choose a directory)")
    if args.evalai is not None and args.benchmark != "mmworld":
        raise usage(f"--evalai {args.evalai}: only MMWorld has an EvalAI submission (drop --evalai)")
    if args.judge_max_new_tokens < 1:
        raise usage(f"--judge-max-new-tokens: must be >= 1, got {args.judge_max_new_tokens}")
    questions: list[Question] = []
    for split, path in question_files(args.benchmark, args.questions):
        questions += load_questions(args.benchmark, path, split)
    index = index_questions(questions)
    splits = list(dict.fromkeys(q.split for q in questions))
    responses, unknown = collect_responses(response_files(args.responses, splits), index)

    judge = None
    if args.judge:
        if not Path(args.judge).is_dir():
            raise usage(f"--judge {args.judge}: no such directory (give a local directory holding a "
                             f"transformers causal LM and its tokenizer)")
        try:
            judge = LLMJudge(args.judge, max_new_tokens=args.judge_max_new_tokens)
        except (OSError, ValueError) as e:
            raise usage(f"--judge {args.judge}: cannot load a causal LM and its tokenizer "
                             f"({str(e).splitlines()[0]})") from e
    explained = [explained_key(value, index, splits) for value in args.explain]
    items = score_responses(questions, responses, judge=judge)
    scored = {item.question.key: item for item in items}
    for key in explained:
        print(explanation(index[key], responses.get(key), scored[key]))
    summary = summarize(args.benchmark, items, unknown)
    write_outputs(args.out, items, summary, args.evalai)
    return summary


def explained_key(value: str, index: dict, splits: list[str]) -> tuple[str, str]:
    """--explain SPLIT/ID (or ID with one split) -> the question's key; a usage error naming the ids if unknown."""
    split, sep, qid = value.partition("/")
    key = (split, qid) if sep else (splits[0] if len(splits) == 1 else "", value)
    if key not in index:
        example = "/".join(next(iter(index)))
        raise usage(f"--explain {value}: no such question (write SPLIT/ID, e.g. {example})")
    return key


def explanation(question: Question, response: str | None, item: Any) -> str:
    """How an item was decided: the rule and its words (answers.extract), the judge if it was asked, the verdict."""
    head = f"{question.split}/{question.id}: "
    if response is None:
        return head + "no response (missing: scored wrong)"
    shown = " ".join(response.split())
    lines = [head + item.extraction.explain(),
             f"  response: {shown[:300]}{' ...' if len(shown) > 300 else ''}",
             "  options:  " + "; ".join(f"{k}. {v}" for k, v in question.options.items())]
    if item.method == "judge":
        lines.append(f"  judge:    {item.extracted}")
    verdict = "correct" if item.correct else "wrong"
    lines.append(f"  scored:   {item.extracted or 'unparsed'} against {question.answer_letter}: {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- run
RUN_SECTIONS = ("benchmark", "model", "judge", "out")
FINGERPRINT_IGNORES = ("batch_size", "device")  # responder params that do not change the answers


@dataclass
class BenchmarkSettings:
    """The `benchmark` section of a run config."""

    name: Literal["vlm4d", "mmworld"]
    questions: dict[str, str]  # split -> question file
    video_root: str | None = None
    num_frames: int | None = 8
    fps: float | None = None
    max_frames: int | None = None
    frame_cache: str | None = None
    limit: int | None = None

    def problems(self, check_files: bool = True, needs_frames: bool = True) -> list[tuple[str, str]]:
        found = []
        if not self.questions:
            found.append(("questions", "give at least one question file as SPLIT: FILE"))
        if self.name == "vlm4d":
            for split in self.questions:
                if split not in VLM4D_SPLITS:
                    found.append((f"questions.{split}", f"VLM4D splits are {' and '.join(VLM4D_SPLITS)} "
                                                        f"(real: real_mc.json, synthetic: synthetic_mc.json)"))
        elif len(self.questions) > 1:
            found.append(("questions", f"MMWorld has one question file (write {MMWORLD_SPLIT}: mmworld.json)"))
        if check_files:
            for split, path in self.questions.items():
                if not Path(path).is_file():
                    found.append((f"questions.{split}", f"no such file: {path} (where to get the question files: "
                                                        f"configs/benchmarks/base/*.yaml)"))
        if needs_frames:
            if self.video_root is None:
                found.append(("video_root", "the model answers from video frames: give the directory of the videos"))
            elif check_files and not Path(self.video_root).is_dir():
                found.append(("video_root", f"no such directory: {self.video_root} (give the directory holding "
                                            f"the benchmark's videos)"))
        if self.num_frames is None and self.fps is None:
            found.append(("num_frames", "give num_frames (frames per video) or fps (frames per second)"))
        elif self.num_frames is not None and self.fps is not None:
            found.append(("fps", "give num_frames or fps, not both (num_frames: null samples by fps)"))
        if self.num_frames is not None and self.num_frames < 1:
            found.append(("num_frames", f"must be >= 1, got {self.num_frames}"))
        if self.fps is not None and not self.fps > 0:
            found.append(("fps", f"must be > 0, got {self.fps}"))
        if self.max_frames is not None:
            if self.max_frames < 1:
                found.append(("max_frames", f"must be >= 1, got {self.max_frames}"))
            elif self.fps is None:
                found.append(("max_frames", "thins fps sampling only: with num_frames leave it null"))
        if self.limit is not None and self.limit < 1:
            found.append(("limit", f"must be >= 1 or null (all questions), got {self.limit}"))
        if check_files and self.frame_cache is not None and Path(self.frame_cache).exists() \
                and not Path(self.frame_cache).is_dir():
            found.append(("frame_cache", f"{self.frame_cache} exists and is not a directory"))
        return found


@dataclass
class JudgeSettings:
    """The `judge` section: a local causal LM asked about the responses the rules cannot parse."""

    model_path: str
    max_new_tokens: int = 16

    def problems(self, check_files: bool = True) -> list[tuple[str, str]]:
        found = []
        if check_files and not Path(self.model_path).is_dir():
            found.append(("model_path", f"no such directory: {self.model_path} (give a local directory holding a "
                                        f"transformers causal LM and its tokenizer)"))
        if self.max_new_tokens < 1:
            found.append(("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"))
        return found


def _settings(cls: type, key: str, loaded: configs.LoadedConfig, issues: list, **problem_kwargs: Any):
    """A settings section: keys and types first (from the dataclass signature), then its values."""
    from omegaconf import OmegaConf

    section = loaded.cfg.get(key)
    if not hasattr(section, "keys"):
        issues.append(configs.ConfigIssue(loaded.source_of(key), key, f"must be a mapping ({cls.__doc__.strip()})"))
        return None
    before = len(issues)
    configs.check_params(cls, section, key, loaded, issues)
    if len(issues) > before:
        return None
    settings = cls(**OmegaConf.to_container(section, resolve=True))
    issues += [configs.ConfigIssue(loaded.source_of(f"{key}.{name}"), f"{key}.{name}", message)
               for name, message in settings.problems(**problem_kwargs)]
    return settings


def _responder_class(loaded: configs.LoadedConfig, issues: list) -> tuple[Any, bool]:
    """Check the `model` section (target + params); its class (None if it cannot be imported) and whether the
    params passed the checks."""
    node = loaded.cfg.get("model")
    if node is None:
        issues.append(configs.ConfigIssue(str(loaded.path), "model", "missing section (target + params of a "
                                                                      "responder, e.g. TransformersVLM)"))
        return None, False
    if not configs.is_target_node(node):
        issues.append(configs.ConfigIssue(loaded.source_of("model"), "model", "must be target + params"))
        return None, False
    before = len(issues)
    configs.check_target_node(node, "model", loaded, issues)
    cls = configs.resolve_target(node.get("target"), "model.target", loaded.source_of("model.target"), [])
    if cls is not None and not callable(getattr(cls, "respond", None)):
        issues.append(configs.ConfigIssue(loaded.source_of("model.target"), "model.target",
                                          f"'{node.target}' is not a responder (no respond(questions, frames))"))
        return None, False
    return cls, len(issues) == before


def check_run_config(loaded: configs.LoadedConfig, check_files: bool = True) -> None:
    """Every problem of a run config at once (UsageError, one line each); builds nothing heavy.

    With check_files=False the files and directories it names are not looked at (shipped configs in tests)."""
    issues: list[configs.ConfigIssue] = []
    loaded.check_files = check_files
    cfg = loaded.cfg
    for section in cfg.keys():
        if section not in RUN_SECTIONS:
            issues.append(configs.ConfigIssue(loaded.source_of(str(section)), str(section),
                                              f"unknown section{configs.did_you_mean(str(section), RUN_SECTIONS)}; "
                                              f"sections are {', '.join(RUN_SECTIONS)}"))
    cls, _ = _responder_class(loaded, issues)  # its config_problems are checked with its params
    needs_frames = bool(getattr(cls, "needs_frames", True)) if cls is not None else False
    if cfg.get("benchmark") is None:
        issues.append(configs.ConfigIssue(str(loaded.path), "benchmark",
                                          "missing section (name, questions, video_root, ...)"))
        settings = None
    else:
        settings = _settings(BenchmarkSettings, "benchmark", loaded, issues, check_files=check_files,
                             needs_frames=needs_frames)
    if cfg.get("judge") is not None:
        _settings(JudgeSettings, "judge", loaded, issues, check_files=check_files)
    out = cfg.get("out")
    if out is None:
        issues.append(configs.ConfigIssue(str(loaded.path), "out", "missing key (the directory for the results)"))
    elif not isinstance(out, str):
        issues.append(configs.ConfigIssue(loaded.source_of("out"), "out", f"expected a directory path, got {out!r}"))
    elif check_files and Path(out).exists() and not Path(out).is_dir():
        issues.append(configs.ConfigIssue(loaded.source_of("out"), "out", f"{out} exists and is not a directory"))
    if settings is not None and check_files and not issues:
        for split, path in settings.questions.items():
            try:
                load_questions(settings.name, path, split)
            except BenchmarkFileError as e:
                issues.append(configs.ConfigIssue(loaded.source_of(f"benchmark.questions.{split}"),
                                                  f"benchmark.questions.{split}", str(e).splitlines()[0]))
    if issues:
        raise UsageError([str(i) for i in issues])


def _fingerprint(model: dict) -> dict:
    params = {k: v for k, v in (model.get("params") or {}).items() if k not in FINGERPRINT_IGNORES}
    return {"target": model.get("target"), "params": params}


def run_config(loaded: configs.LoadedConfig, progress: bool = True) -> dict:
    """Answer and score the benchmark of a checked config; returns the summary."""
    from omegaconf import OmegaConf

    from datamodules.benchmarks.frames import Sampling
    from launch.benchmark_run import check_run_info, describe_run, run_benchmark
    from lightning_modules.responders import ResponderError

    cfg = OmegaConf.to_container(loaded.cfg, resolve=True)
    settings = BenchmarkSettings(**cfg["benchmark"])
    questions: list[Question] = []
    for split, path in settings.questions.items():
        questions += load_questions(settings.name, path, split)
    if settings.limit is not None:
        questions = questions[:settings.limit]
    # an output directory of other settings is refused before the model is loaded
    cls = configs.resolve_target(cfg["model"]["target"], "model.target", str(loaded.path), [])
    sampling = Sampling(settings.num_frames, settings.fps, settings.max_frames) \
        if getattr(cls, "needs_frames", True) else None
    Path(cfg["out"]).mkdir(parents=True, exist_ok=True)
    check_run_info(Path(cfg["out"]), describe_run(settings.name, sampling, _fingerprint(cfg["model"])))

    responder = configs.build(loaded, "model", usage_errors=(ValueError, ResponderError, BenchmarkFileError, OSError))
    judge = None
    if cfg.get("judge"):
        try:
            judge = LLMJudge(**cfg["judge"])
        except (OSError, ValueError) as e:
            key = "judge.model_path"
            raise UsageError([str(configs.ConfigIssue(loaded.source_of(key), key, first_line(e)))]) from e
    return run_benchmark(questions, responder, settings.video_root, cfg["out"], num_frames=settings.num_frames,
                         fps=settings.fps, max_frames=settings.max_frames, frame_cache=settings.frame_cache,
                         progress=progress, judge=judge, run_info=_fingerprint(cfg["model"]))


def _interrupt_on_sigterm() -> Any:
    """SIGTERM (scancel, preemption) raises KeyboardInterrupt like Ctrl-C; returns the previous handler."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def run_command(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from launch.benchmark_run import RunInterrupted

    loaded = configs.load_config(args.config, args.overrides)
    check_run_config(loaded)
    if args.dry_run:
        print(OmegaConf.to_yaml(loaded.cfg).rstrip())
        return 0
    previous = _interrupt_on_sigterm()
    try:
        summary = run_config(loaded, progress=not args.no_progress)
    except RunInterrupted as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {loaded.cfg.out}/responses.jsonl keeps every finished batch: run the same "
              f"command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    run = summary["run"]
    print(f"{summary['benchmark']}: overall {summary['overall']}% over {summary['counts']['overall']['total']} "
          f"questions ({run['generated_now']} answered now, {run['reused']} from before); "
          f"unparsed {summary['unparsed']['count']}, missing {summary['missing']['count']}; wrote {loaded.cfg.out}")
    if "videos" in summary:
        c = summary["videos"]["counts"]
        print(f"videos: {c['present']} of {c['questions']} questions have one; {c['missing']} missing, "
              f"{c['undecodable']} undecodable (listed in summary.json)")
    return 0


# ----------------------------------------------------------------------------------------------- test
def test_command(args: argparse.Namespace) -> int:
    """The test loop of a fit-style config; exit code 0, or 130 after Ctrl-C (items kept, rerun resumes)."""
    from omegaconf import OmegaConf

    from launch import fit as fit_entry  # installs the stop-signal flag before the heavy imports

    loaded = configs.load_config(args.config, args.overrides)
    fit_entry.check_config(loaded)
    if (loaded.cfg.data.get("params") or {}).get("test") is None:
        raise UsageError([str(configs.ConfigIssue(loaded.source_of("data.params"), "data.params.test",
                                                  "missing: the dataset the test loop reads (a shard directory)"))])
    if args.dry_run:
        print(OmegaConf.to_yaml(loaded.cfg).rstrip())
        return 0
    try:
        return _run_test(loaded, fit_entry.prepare_run(loaded, None), args.restart)
    finally:
        fit_entry.close_process_group()


def _run_test(loaded: configs.LoadedConfig, prepared: Any, restart: bool) -> int:
    import shutil
    import subprocess

    from lightning.pytorch.utilities.model_helpers import is_overridden
    from omegaconf import OmegaConf

    from callbacks.preemption import TestStopped
    from launch.trainer import slurm_job_id
    from lightning_modules.test_items import TEST_DIR

    if not is_overridden("test_step", prepared.model):
        raise UsageError(f"{loaded.source_of('model.target')}: model.target: {loaded.cfg.model.target} has no "
                         f"test_step (evaluate.py test runs a module's test loop; use fit.py to train it)")
    trainer, run_dir = prepared.trainer, prepared.run_dir
    test_dir = run_dir.path / TEST_DIR
    if trainer.is_global_zero:
        if restart:
            shutil.rmtree(test_dir, ignore_errors=True)
        run_dir.save_config(OmegaConf.to_yaml(loaded.cfg))
        run_dir.write_status("testing", slurm_job_id=slurm_job_id())
    try:
        trainer.test(prepared.model, datamodule=prepared.datamodule)
    except TestStopped as stop:
        job = slurm_job_id()
        if trainer.is_global_zero:
            state = "interrupted" if stop.signum == signal.SIGINT else "preempted"
            run_dir.write_status(state, slurm_job_id=job)
            kept = f"finished items kept in {test_dir}"
            if stop.signum == signal.SIGUSR1 and job:
                print(f"preempted; {kept}; requeueing SLURM job {job}", flush=True)
                subprocess.run(["scontrol", "requeue", job], check=False)  # the job's last action, as in fit.py
            else:
                print(f"stopped by {signal.Signals(stop.signum).name}; {kept}; run the same command again to "
                      f"resume", flush=True)
        return 130 if stop.signum == signal.SIGINT else 0
    except BaseException:
        if trainer.is_global_zero:
            run_dir.write_status("failed")
        raise
    if trainer.is_global_zero:
        run_dir.write_status("tested", results=str(test_dir))
        print(f"tested; results in {test_dir}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    silence_harmless_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)

    def work() -> int:
        args = build_parser().parse_args(argv)
        if args.command == "run":
            return run_command(args)
        if args.command == "test":
            return test_command(args)
        summary = run_score(args)
        print(f"{args.benchmark}: overall {summary['overall']}% over {summary['counts']['overall']['total']} "
              f"questions; unparsed {summary['unparsed']['count']}, missing {summary['missing']['count']}, "
              f"unknown ids {summary['unknown_ids']['count']}; wrote {args.out}")
        return 0

    from lightning_modules.responders import ResponderError

    return cli.main(work, PROG, one_line=(BenchmarkFileError, ResponderError))


if __name__ == "__main__":
    sys.exit(main())
