"""The vqa kind: VQAv2 questions + annotations -> image, question, answer class (the normalised majority answer's
index in the answer vocabulary) and the annotators' answer counts; and VQA answer normalisation (`normalize_answer`).

The vocabulary is the N most frequent normalised answers of a training split (`top_answers`), or a training
dataset's (`answers_from`), so that val/test classes mean what they meant in training.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from datamodules.errors import UsageError
from datamodules.shards import DatasetError, read_index
from datamodules.writers.common import (DEFAULT_OPTIONS, Encoded, ShardKind, ShardOptions, check_out, image_bytes,
                                        json_bytes, read_json, seeded_subset, shared_image_ext, write_shards)

NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
DEFAULT_VQA_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"
_IN_NUMBER = re.compile(r"(?<=\d)[.:/](?=\d)")  # 2.5, 10:30, 1/2 keep their punctuation
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # 1,000 -> 1000
_DROPPED = re.compile(r"['.`]")  # joined without a space: don't -> dont, u.s.a. -> usa
_PUNCT = re.compile(r"[!\"#$%&()*+,\-/:;<=>?@\[\\\]^_{|}~]")  # the rest of ASCII punctuation -> a space


def normalize_answer(text: str) -> str:
    """VQA-style answer normalisation: lowercase; punctuation removed ("." "'" dropped, the rest become spaces) except
    inside a number ("2.5", "10:30", "1/2" stay, "1,000" -> "1000"); number words zero..ten -> digits; articles
    a/an/the dropped; whitespace collapsed. "Two dogs!" -> "2 dogs", "the U.S.A." -> "usa", "T-shirt" -> "t shirt"."""
    text = _THOUSANDS.sub("", str(text).lower().strip())
    kept = _IN_NUMBER.findall(text)
    text = _IN_NUMBER.sub("\x00", text)  # protect number punctuation from the two passes below
    text = _PUNCT.sub(" ", _DROPPED.sub("", text))
    for mark in kept:
        text = text.replace("\x00", mark, 1)
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def _vqa_questions(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    data = read_json(path, "--questions")
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise UsageError(f"--questions {path}: expected an object with a \"questions\" list (VQAv2 format)")
    subtype = data.get("data_subtype")
    if subtype is not None and not isinstance(subtype, str):
        raise UsageError(f"--questions {path}: \"data_subtype\" must be a string, got {subtype!r}")
    seen: dict[int, int] = {}
    for i, q in enumerate(data["questions"]):
        where = f"--questions {path}: questions[{i}]"
        if not isinstance(q, dict):
            raise UsageError(f"{where}: expected an object")
        for field, kind in (("question_id", int), ("image_id", int), ("question", str)):
            if not isinstance(q.get(field), kind) or isinstance(q.get(field), bool):
                raise UsageError(f"{where}: \"{field}\" must be {'an int' if kind is int else 'a string'}, "
                                 f"got {q.get(field)!r}")
        if q["question_id"] in seen:
            raise UsageError(f"{where}: question_id {q['question_id']} repeats questions[{seen[q['question_id']]}]")
        seen[q["question_id"]] = i
    return data["questions"], subtype


def _vqa_annotations(path: Path) -> dict[int, dict[str, Any]]:
    data = read_json(path, "--annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise UsageError(f"--annotations {path}: expected an object with an \"annotations\" list (VQAv2 format)")
    by_question: dict[int, dict[str, Any]] = {}
    for i, a in enumerate(data["annotations"]):
        where = f"--annotations {path}: annotations[{i}]"
        if not isinstance(a, dict):
            raise UsageError(f"{where}: expected an object")
        for field, kind, what in (("question_id", int, "an int"), ("image_id", int, "an int"),
                                  ("multiple_choice_answer", str, "a string"), ("answers", list, "a list")):
            if not isinstance(a.get(field), kind) or isinstance(a.get(field), bool):
                raise UsageError(f"{where}: \"{field}\" must be {what}, got {a.get(field)!r}")
        if not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in a["answers"]):
            raise UsageError(f"{where}: \"answers\" must be objects with an \"answer\" string")
        if a["question_id"] in by_question:
            raise UsageError(f"{where}: a second annotation for question_id {a['question_id']}")
        by_question[a["question_id"]] = a
    return by_question


def _vqa_vocabulary(annotations_path: Path, annotations: dict[int, dict[str, Any]], top_answers: int | None,
                    answers_from: Path | None) -> list[str]:
    if top_answers is not None:
        counts: dict[str, int] = {}
        for a in annotations.values():
            answer = normalize_answer(a["multiple_choice_answer"])
            if answer:
                counts[answer] = counts.get(answer, 0) + 1
        if not counts:
            raise UsageError(f"--annotations {annotations_path}: no non-empty multiple_choice_answer")
        return [answer for answer, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_answers]]
    try:
        meta = read_index(answers_from)["metadata"]
    except DatasetError as e:
        raise UsageError(f"--answers-from {answers_from}: not a dataset ({e})".splitlines()[0]) from e
    if not isinstance(meta, dict) or meta.get("kind") != "vqa":
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise UsageError(f"--answers-from {answers_from}: a {kind!r} dataset, not vqa; give the training split "
                         f"written by `make_shards.py vqa --top-answers N`")
    answers = meta.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise UsageError(f"--answers-from {answers_from}: its index.json metadata has no \"answers\" list")
    return answers


def encode_vqa(item: tuple[int, str, str, dict[str, Any]]) -> Encoded:
    idx, path, ext, meta = item
    return f"{idx:08d}", {ext: image_bytes(path, ext), "cls": str(meta["cls"]).encode(),
                          "json": json_bytes({k: v for k, v in meta.items() if k != "cls"})}


def write_vqa_shards(out: Path, *, questions: Path, annotations: Path, root: Path, image_pattern: str | None = None,
                     top_answers: int | None = None, answers_from: Path | None = None,
                     max_questions: int | None = None, options: ShardOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """One sample per question of the VQAv2 `questions` and `annotations` files, images at `root / image_pattern`
    ({data_subtype} and {image_id}; default DEFAULT_VQA_PATTERN). The vocabulary: exactly one of `top_answers` (a
    training split: questions it cannot answer are left out) and `answers_from` (a vqa dataset's; others get class
    -1). `max_questions` keeps a seeded subset. Returns the index."""
    out, questions_path, annotations_path, root = Path(out), Path(questions), Path(annotations), Path(root)
    answers_from = None if answers_from is None else Path(answers_from)
    if (top_answers is None) == (answers_from is None):
        raise UsageError("vqa: give exactly one of --top-answers N or --answers-from DIR")
    if max_questions is not None and max_questions < 1:
        raise UsageError(f"--max-questions: must be at least 1, got {max_questions}")
    if top_answers is not None and top_answers < 1:
        raise UsageError(f"--top-answers: must be at least 1, got {top_answers}")
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such directory")
    question_list, subtype = _vqa_questions(questions_path)
    by_question = _vqa_annotations(annotations_path)
    pattern = image_pattern
    if pattern is None:
        if subtype is None:
            raise UsageError(f"--questions {questions_path}: no \"data_subtype\" to name the images; give "
                             f"--image-pattern (e.g. 'images/{{image_id}}.jpg')")
        pattern = DEFAULT_VQA_PATTERN
    vocab = _vqa_vocabulary(annotations_path, by_question, top_answers, answers_from)
    index_of = {answer: i for i, answer in enumerate(vocab)}
    rows: list[tuple[dict[str, Any], dict[str, Any], int]] = []
    for i, q in enumerate(question_list):
        a = by_question.get(q["question_id"])
        if a is None:
            raise UsageError(f"--annotations {annotations_path}: no annotation for question_id {q['question_id']} "
                             f"(questions[{i}] of {questions_path})")
        if a["image_id"] != q["image_id"]:
            raise UsageError(f"--annotations {annotations_path}: question_id {q['question_id']} has image_id "
                             f"{a['image_id']} there but {q['image_id']} in {questions_path}")
        cls = index_of.get(normalize_answer(a["multiple_choice_answer"]), -1)
        if top_answers is not None and cls < 0:
            continue  # training: a question the vocabulary cannot answer teaches nothing
        rows.append((q, a, cls))
    if max_questions is not None and max_questions < len(rows):
        rows = [rows[j] for j in seeded_subset(len(rows), max_questions, options.seed, "vqa")]
    if not rows:
        raise UsageError(f"--questions {questions_path}: no question left (none has an answer among the "
                         f"{len(vocab)} vocabulary answers)")
    files: list[Path] = []
    for q, _, _ in rows:
        try:
            rel = pattern.format(data_subtype=subtype, image_id=q["image_id"])
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise UsageError(f"--image-pattern {pattern!r}: cannot format it ({type(e).__name__}: {e}); it may use "
                             f"{{data_subtype}} and {{image_id}}") from e
        file = root / rel
        if not file.is_file():
            raise UsageError(f"{file}: image {q['image_id']} of question_id {q['question_id']} is missing")
        files.append(file)
    check_out(out)
    ext = shared_image_ext(files)
    items = []
    for i, ((q, a, cls), file) in enumerate(zip(rows, files)):
        counts: dict[str, int] = {}
        for answer in a["answers"]:
            j = index_of.get(normalize_answer(answer["answer"]))
            if j is not None:
                counts[str(j)] = counts.get(str(j), 0) + 1
        meta = {"question": q["question"], "question_id": q["question_id"], "image_id": q["image_id"],
                "answer_counts": counts, "num_annotators": len(a["answers"]),
                "answer": normalize_answer(a["multiple_choice_answer"]), "answer_type": a.get("answer_type"),
                "cls": cls}
        items.append((i, str(file), ext, meta))
    metadata = {"kind": "vqa", "split": subtype, "answers": vocab,
                "questions": [[q["question"], cls] for q, _, cls in rows], "num_questions": len(rows),
                "source": {"questions": str(questions_path), "annotations": str(annotations_path)},
                "image_ext": ext, "image_pattern": pattern, "top_answers": top_answers,
                "answers_from": None if answers_from is None else str(answers_from),
                "max_questions": max_questions,
                "answer_normalization": "datamodules/writers/vqa.py normalize_answer",
                "cls": "vocabulary index of the normalised multiple_choice_answer, -1 when not in the vocabulary"}
    return write_shards(out, items, encode_vqa, options, metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", type=Path, required=True, help="VQAv2 questions JSON")
    parser.add_argument("--annotations", type=Path, required=True, help="VQAv2 annotations JSON")
    parser.add_argument("--root", type=Path, required=True, help="directory the image pattern is relative to")
    parser.add_argument("--image-pattern", default=None,
                        help=f"image path from {{data_subtype}} and {{image_id}} (default: {DEFAULT_VQA_PATTERN})")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--top-answers", type=int, default=None,
                       help="vocabulary: the N most frequent normalised answers here (training split)")
    group.add_argument("--answers-from", type=Path, default=None,
                       help="vocabulary: the answers of this vqa dataset (val/test use the training vocabulary)")
    parser.add_argument("--max-questions", type=int, default=None, help="keep at most N questions (seeded)")


KIND = ShardKind(
    name="vqa", help="VQAv2 questions + annotations", add_arguments=add_arguments,
    from_args=lambda args, options: write_vqa_shards(
        args.out, questions=args.questions, annotations=args.annotations, root=args.root,
        image_pattern=args.image_pattern, top_answers=args.top_answers, answers_from=args.answers_from,
        max_questions=args.max_questions, options=options))
