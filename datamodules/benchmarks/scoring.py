"""Scoring benchmark responses: reading response files, deciding each question, summarising as the papers do.

`score_responses` decides each question's chosen option with `answers.extract` (and an optional judge for
what the rules leave unparsed) and records how it was decided; unparsed and missing responses count as wrong.
`summarize` gives accuracies with counts and lists every unscored item; `summary_markdown` renders it,
`evalai_submission` writes MMWorld answers for the challenge server, `write_outputs` puts them all in a directory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from datamodules.benchmarks.answers import Extraction, Judge, extract
from datamodules.benchmarks.questions import (MMWORLD_FLAGS, MMWORLD_SPLIT, VLM4D_GROUPS, VLM4D_SPLITS,
                                              BenchmarkFileError, QKey, Question, VideoReport, mmworld_id)
from datamodules.files import atomic_write_text

BENCHMARK_SPLITS = (*VLM4D_SPLITS, MMWORLD_SPLIT)


# ----------------------------------------------------------------------------------------------- responses
def parse_split_file(value: str) -> tuple[str | None, str]:
    """'real=path.json' -> ('real', 'path.json'); 'path.json' -> (None, 'path.json')."""
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_\-]*)=(.+)", value)
    return (m.group(1), m.group(2)) if m else (None, value)


def read_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """(line or position, record) from a JSON list or a JSONL file."""
    path = Path(path)
    fix = "give a JSON list or JSONL of {\"id\": ..., \"response\": ...}"
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: no such file ({fix})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchmarkFileError(f"{path}: not UTF-8 text ({fix})") from e
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkFileError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}) ({fix})") from e
        return [(i, r) for i, r in enumerate(data)]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise BenchmarkFileError(f"{path}: line {n}: not valid JSON ({e.msg}) ({fix})") from e
    return records


def read_responses(path: str | os.PathLike, split: str | None,
                   give_split: str = "write --responses SPLIT=FILE") -> list[tuple[QKey, str | None]]:
    """(split, id) and response text of each record.

    An id is `id`, or for MMWorld `video_id` + `question_index`. Without `split` each record names its own in a
    'split' field. With `split`, a record's 'split' field is ignored unless it names another of the benchmarks'
    splits (a file holding both VLM4D splits given as one of them: an error, as VLM4D ids repeat across splits).
    Other fields are ignored. `give_split` is the fix a record without any split is told.
    """
    path = Path(path)
    out = []
    for n, record in read_records(path):
        where = f"{path}: record {n}"
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{where}: expected an object, got {type(record).__name__} "
                                     f"(each record is {{\"id\": ..., \"response\": ...}})")
        if "id" in record and record["id"] is not None:
            qid = str(record["id"])
        elif "video_id" in record and "question_index" in record:
            try:
                qid = mmworld_id(str(record["video_id"]), int(record["question_index"]))
            except (TypeError, ValueError) as e:
                raise BenchmarkFileError(f"{where}: question_index {record['question_index']!r} is not an integer "
                                         f"(give the question's position in its video's list, from 0)") from e
        else:
            raise BenchmarkFileError(f"{where}: no 'id' (or 'video_id' + 'question_index') field "
                                     f"(each response names its question)")
        if "response" not in record:
            raise BenchmarkFileError(f"{where}: no 'response' field (give the model's text, \"\" if none)")
        response = record["response"]
        if response is not None and not isinstance(response, str):
            raise BenchmarkFileError(f"{where}: 'response' is {type(response).__name__}, expected text")
        record_split = record.get("split")
        if split is None:
            if record_split is None:
                raise BenchmarkFileError(f"{where}: no 'split' field and the file was given without a split "
                                         f"({give_split})")
            split_of_record = str(record_split)
        elif record_split is not None and str(record_split) != split and str(record_split) in BENCHMARK_SPLITS:
            raise BenchmarkFileError(f"{where}: its 'split' is {record_split!r} but the file was given as split "
                                     f"{split!r} (give the file without a split to use its records' own, or "
                                     f"fix the records)")
        else:
            split_of_record = split
        out.append(((split_of_record, qid), response))
    return out


def collect_responses(files: Iterable[tuple[str | None, str | os.PathLike]],
                      questions: Mapping[QKey, Question]) -> tuple[dict[QKey, str | None], list[QKey]]:
    """Responses for known questions and the keys of those that match no question (reported, not fatal)."""
    responses: dict[QKey, str | None] = {}
    where: dict[QKey, str] = {}
    unknown: list[QKey] = []
    for split, path in files:
        for key, response in read_responses(path, split):
            if key in where:
                raise BenchmarkFileError(f"{path}: second response for {key[0]}/{key[1]} (first in {where[key]}; "
                                         f"give one response per question)")
            where[key] = str(path)
            if key in questions:
                responses[key] = response
            else:
                unknown.append(key)
    return responses, unknown


# ----------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class ScoredItem:
    question: Question
    extracted: str | None
    method: str  # rule | judge | unparsed | missing
    extraction: Extraction | None = None  # how the rules read the response (None: no response)

    @property
    def correct(self) -> bool:
        return self.extracted is not None and self.extracted in self.question.correct_letters

    def to_dict(self) -> dict[str, Any]:
        q = self.question
        return {"split": q.split, "id": q.id, "extracted": self.extracted, "answer": q.answer_letter,
                "correct": self.correct, "method": self.method,
                "rule": self.extraction.rule if self.extraction is not None else ""}


def score_responses(questions: Iterable[Question], responses: Mapping[QKey, str | None],
                    judge: Judge | None = None) -> list[ScoredItem]:
    """One item per question, in order; a question without a response is 'missing' and wrong."""
    items = []
    for q in questions:
        if q.key not in responses:
            items.append(ScoredItem(q, None, "missing"))
            continue
        response = responses[q.key] or ""
        extraction = extract(response, q.options)
        letter, method = extraction.choice, "rule"
        if letter is None and judge is not None and response.strip():
            letter = judge(response, q.options, q.question)
            method = "judge"
        items.append(ScoredItem(q, letter, method if letter is not None else "unparsed", extraction))
    return items


def _tally(items: Iterable[ScoredItem]) -> dict[str, Any]:
    items = list(items)
    correct = sum(i.correct for i in items)
    return {"correct": correct, "total": len(items),
            "accuracy": round(100.0 * correct / len(items), 2) if items else None}


def _listing(keys: Iterable[QKey]) -> dict[str, Any]:
    keys = [list(k) for k in keys]
    return {"count": len(keys), "ids": keys}


def summarize(benchmark: str, items: list[ScoredItem], unknown_ids: Iterable[QKey] = (),
              videos: VideoReport | None = None) -> dict[str, Any]:
    """Accuracies in percent (2 decimals) as the papers report them, with counts and every unscored item.

    VLM4D: real_ego, real_exo, real, synthetic_directional, synthetic_fp, synthetic (only for the splits
    scored) and overall, weighted by question count. MMWorld: overall, by_discipline, by_type and by_flag
    (accuracy over the questions that have the flag set, as the official evaluation counts them). With
    `videos`, the video check (present / missing / undecodable) is reported beside the totals.
    """
    tallies: dict[str, Any] = {}
    summary: dict[str, Any] = {"benchmark": benchmark}
    if benchmark == "vlm4d":
        for split in VLM4D_SPLITS:
            in_split = [i for i in items if i.question.split == split]
            if not in_split:
                continue
            for group in VLM4D_GROUPS[split]:
                tallies[f"{split}_{group}"] = _tally(i for i in in_split if i.question.categories["group"] == group)
            tallies[split] = _tally(in_split)
        tallies["overall"] = _tally(items)
        summary.update({k: v["accuracy"] for k, v in tallies.items()})
        counts: dict[str, Any] = {k: {"correct": v["correct"], "total": v["total"]} for k, v in tallies.items()}
    else:
        overall = _tally(items)
        by = {"by_discipline": "discipline", "by_type": "type"}
        nested = {name: {value: _tally(i for i in items if i.question.categories[field] == value)
                         for value in sorted({i.question.categories[field] for i in items})}
                  for name, field in by.items()}
        nested["by_flag"] = {flag: _tally(i for i in items if i.question.flags.get(flag)) for flag in MMWORLD_FLAGS}
        summary["overall"] = overall["accuracy"]
        summary.update({name: {k: v["accuracy"] for k, v in group.items()} for name, group in nested.items()})
        counts = {"overall": {"correct": overall["correct"], "total": overall["total"]}}
        counts.update({name: {k: {"correct": v["correct"], "total": v["total"]} for k, v in group.items()}
                       for name, group in nested.items()})
    summary["counts"] = counts
    summary["unparsed"] = _listing(i.question.key for i in items if i.method == "unparsed")
    summary["missing"] = _listing(i.question.key for i in items if i.method == "missing")
    summary["judged"] = _listing(i.question.key for i in items if i.method == "judge")
    summary["unknown_ids"] = _listing(unknown_ids)
    if videos is not None:
        summary["videos"] = videos.to_dict()
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (accuracy in percent, correct, total)."""
    counts = summary["counts"]
    lines = [f"# {summary['benchmark']} results", "", "| | accuracy (%) | correct | total |", "|---|---:|---:|---:|"]
    if summary["benchmark"] == "vlm4d":
        for name, c in counts.items():
            lines.append(f"| {name} | {_fmt(summary[name])} | {c['correct']} | {c['total']} |")
    else:
        c = counts["overall"]
        lines.append(f"| overall | {_fmt(summary['overall'])} | {c['correct']} | {c['total']} |")
        for group in ("by_discipline", "by_type", "by_flag"):
            lines += ["", f"| {group.replace('_', ' ')} | accuracy (%) | correct | total |", "|---|---:|---:|---:|"]
            for name, c in counts[group].items():
                lines.append(f"| {name} | {_fmt(summary[group][name])} | {c['correct']} | {c['total']} |")
    lines += ["", f"- unparsed (counted wrong): {summary['unparsed']['count']}",
              f"- missing responses (counted wrong): {summary['missing']['count']}",
              f"- decided by the judge: {summary['judged']['count']}",
              f"- responses for unknown ids (ignored): {summary['unknown_ids']['count']}"]
    if "videos" in summary:
        c = summary["videos"]["counts"]
        lines.append(f"- videos: {c['present']} of {c['questions']} questions have one; {c['missing']} missing, "
                     f"{c['undecodable']} undecodable")
    lines.append("")
    return "\n".join(lines)


def evalai_submission(items: Iterable[ScoredItem]) -> dict[str, dict[str, str | None]]:
    """MMWorld answers as {video_id: {question_index: letter or null}}, every question listed.

    The official EvalAI format is not published in the benchmark's repository; this layout mirrors
    mmworld.json (videos, then their questions in order) and is documented in launch/evaluate.py.
    """
    out: dict[str, dict[str, str | None]] = {}
    for item in items:
        q = item.question
        out.setdefault(q.video, {})[q.id[len(q.video) + 1:]] = item.extracted  # id is f"{video_id}_{index}"
    return out


# ----------------------------------------------------------------------------------------------- outputs
def write_outputs(out: str | os.PathLike, items: list[ScoredItem], summary: dict[str, Any],
                  evalai: str | os.PathLike | None = None) -> dict[str, Path]:
    """OUT/items.jsonl, OUT/summary.json, OUT/summary.md and, for MMWorld, the EvalAI submission (default
    OUT/evalai_submission.json). Returns the paths written by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {"items": out / "items.jsonl", "summary": out / "summary.json", "markdown": out / "summary.md"}
    atomic_write_text(written["items"], "".join(json.dumps(i.to_dict()) + "\n" for i in items))
    atomic_write_text(written["summary"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(written["markdown"], summary_markdown(summary))
    if summary["benchmark"] == "mmworld":
        written["evalai"] = Path(evalai) if evalai is not None else out / "evalai_submission.json"
        written["evalai"].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(written["evalai"], json.dumps(evalai_submission(items), indent=1) + "\n")
    return written
