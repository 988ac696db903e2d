"""Benchmark evaluation: `python launch/evaluate.py score --benchmark vlm4d|mmworld ...`.

score   reads the benchmark's question files and model responses produced elsewhere (a JSON list or JSONL of
        {"id": ..., "response": ...}; for MMWorld "id" is f"{video_id}_{question index}", or give "video_id" and
        "question_index"; an optional "split" field overrides the file's split; other fields are ignored),
        extracts the chosen option by rules (answers.py; --judge MODEL_DIR asks a local causal LM about the
        responses the rules leave unparsed) and writes OUT/items.jsonl, OUT/summary.json, OUT/summary.md.
        For MMWorld it also writes an EvalAI submission (default OUT/evalai_submission.json):
        {video_id: {question_index: letter or null}}. MMWorld's repository does not publish the EvalAI format;
        this layout follows mmworld.json and is our choice, to be checked against the challenge page.

Files are given as SPLIT=FILE (VLM4D splits: real, synthetic; a released file name tells its split, so a bare
FILE works too) and keyed by (split, id): VLM4D ids repeat across real and synthetic.

Usage errors print one line naming the file or argument and exit with code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datamodules.benchmarks.answers import (LLMJudge, collect_responses, evalai_submission,  # noqa: E402
                                            parse_split_file, score_responses, summarize, summary_markdown)
from datamodules.benchmarks.questions import (BENCHMARKS, MMWORLD_SPLIT, VLM4D_SPLITS,  # noqa: E402
                                              BenchmarkFileError, Question, index_questions, load_questions,
                                              vlm4d_split_of)

PROG = "evaluate.py"


class UsageError(Exception):
    """One line for the user; exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
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
    return parser


def question_files(benchmark: str, values: list[str]) -> list[tuple[str, Path]]:
    files = []
    for value in values:
        split, path = parse_split_file(value)
        if benchmark == "vlm4d":
            split = split or vlm4d_split_of(path)
            if split is None:
                raise UsageError(f"--questions {value}: cannot tell the split from the file name "
                                 f"(write real=FILE or synthetic=FILE)")
            if split not in VLM4D_SPLITS:
                raise UsageError(f"--questions {value}: VLM4D splits are {' and '.join(VLM4D_SPLITS)} "
                                 f"(write real=FILE or synthetic=FILE)")
        split = split or MMWORLD_SPLIT
        if split in {s for s, _ in files}:
            raise UsageError(f"--questions {value}: split {split} given twice (one question file per split)")
        files.append((split, Path(path)))
    return files


def response_files(values: list[str], splits: list[str]) -> list[tuple[str | None, Path]]:
    files = []
    for value in values:
        split, path = parse_split_file(value)
        if split is not None and split not in splits:
            raise UsageError(f"--responses {value}: no questions for split {split} "
                             f"(add --questions {split}=FILE, or use one of: {', '.join(splits)})")
        files.append((split or (splits[0] if len(splits) == 1 else None), Path(path)))
    return files


def write_outputs(out: Path, items: list, summary: dict, evalai: Path | None, submission: dict | None) -> None:
    # launch.runs imports lightning (seconds): only once there is something to write
    from launch.runs import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "items.jsonl", "".join(json.dumps(i.to_dict()) + "\n" for i in items))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    if submission is not None:
        evalai.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(evalai, json.dumps(submission, indent=1) + "\n")


def run_score(args: argparse.Namespace) -> dict:
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory (choose a directory)")
    if args.evalai is not None and args.benchmark != "mmworld":
        raise UsageError(f"--evalai {args.evalai}: only MMWorld has an EvalAI submission (drop --evalai)")
    if args.judge_max_new_tokens < 1:
        raise UsageError(f"--judge-max-new-tokens: must be >= 1, got {args.judge_max_new_tokens}")
    questions: list[Question] = []
    for split, path in question_files(args.benchmark, args.questions):
        questions += load_questions(args.benchmark, path, split)
    index = index_questions(questions)
    splits = list(dict.fromkeys(q.split for q in questions))
    responses, unknown = collect_responses(response_files(args.responses, splits), index)

    judge = None
    if args.judge:
        if not Path(args.judge).is_dir():
            raise UsageError(f"--judge {args.judge}: no such directory (give a local directory holding a "
                             f"transformers causal LM and its tokenizer)")
        try:
            judge = LLMJudge(args.judge, max_new_tokens=args.judge_max_new_tokens)
        except (OSError, ValueError) as e:
            raise UsageError(f"--judge {args.judge}: cannot load a causal LM and its tokenizer "
                             f"({str(e).splitlines()[0]})") from e
    items = score_responses(questions, responses, judge=judge)
    summary = summarize(args.benchmark, items, unknown)
    evalai = submission = None
    if args.benchmark == "mmworld":
        evalai = args.evalai or args.out / "evalai_submission.json"
        submission = evalai_submission(items)
    write_outputs(args.out, items, summary, evalai, submission)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        summary = run_score(args)
    except (UsageError, BenchmarkFileError) as e:
        print(f"{PROG}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{args.benchmark}: overall {summary['overall']}% over {summary['counts']['overall']['total']} questions; "
          f"unparsed {summary['unparsed']['count']}, missing {summary['missing']['count']}, "
          f"unknown ids {summary['unknown_ids']['count']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
