"""Benchmark question files (MMWorld `mmworld.json`, VLM4D `real_mc.json` / `synthetic_mc.json`) as `Question`s.

Every question is keyed by (split, id): VLM4D ids restart at validation_1 in each file. Categories follow the
benchmarks' own statistics: VLM4D real questions are exo-centric when the number in the id is <= 922, else
ego-centric; a synthetic question is a false positive ("fp") when its answer text, stripped and lower-cased,
is "no" or starts with "no ", else "directional" (ShijieZhou-UCLA/VLM4D acc_final_statistics.py). MMWorld
questions carry discipline, subdiscipline, type and the four requires_* / question_only flags; an MMWorld id is
f"{video_id}_{question index}".

A file that is missing, not JSON or not in the expected structure raises BenchmarkFileError: one line naming
the file (and entry) and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from datamodules.benchmarks.frames import VideoDecodeError, probe_video

BENCHMARKS = ("vlm4d", "mmworld")
VLM4D_SPLITS = ("real", "synthetic")
VLM4D_GROUPS = {"real": ("ego", "exo"), "synthetic": ("directional", "fp")}  # Table 1 column order
VLM4D_EXO_MAX_ID = 922  # real ids 1..922 are exo-centric (DAVIS, YouTube-VOS), the rest ego-centric (Ego4D)
MMWORLD_SPLIT = "test"  # MMWorld has a single evaluation set
MMWORLD_FLAGS = ("requires_domain_knowledge", "requires_audio", "requires_visual", "question_only")
# MMWorld videos are named by video_id; when several files match, the first extension here wins.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
HF_PATH_MARK = "resolve/main/"

QKey = tuple[str, str]  # (split, id)


class BenchmarkFileError(ValueError):
    """A question or response file that cannot be used; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Question:
    benchmark: str
    split: str
    id: str
    video: str  # path relative to the video root (MMWorld: the video_id, extension found on disk)
    question: str
    options: dict[str, str]  # letter -> text, in the file's order; letters keep the file's case
    answer_letter: str
    answer_text: str
    correct_letters: tuple[str, ...]  # letters whose text is the answer: more than one where options repeat
    categories: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)  # MMWorld requires_* and question_only
    url: str = ""  # where the video is published

    @property
    def key(self) -> QKey:
        return (self.split, self.id)

    @property
    def asked_digest(self) -> str:
        """A short hash of what a model is shown (video, question, options): a run's responses record it, so a
        resumed run notices a question file that changed under the same ids."""
        shown = json.dumps([self.video, self.question, list(self.options.items())], ensure_ascii=False)
        return hashlib.sha1(shown.encode("utf-8")).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- reading
def read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise BenchmarkFileError(f"{path}: no such file (give the path of the {what})")
    if path.is_dir():
        raise BenchmarkFileError(f"{path}: is a directory (give the path of the {what})")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise BenchmarkFileError(f"{path}: not UTF-8 text ({e.reason}) (give the {what})") from e
    except json.JSONDecodeError as e:
        raise BenchmarkFileError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}) (give the {what})") from e


def read_entries(path: Path, what: str, items: str, fix: str) -> list[dict]:
    """A question file's top level: a non-empty JSON list of objects."""
    data = read_json(path, what)
    if not isinstance(data, list) or not data:
        raise BenchmarkFileError(f"{path}: expected a non-empty JSON list of {items}, got {type(data).__name__} ({fix})")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BenchmarkFileError(f"{path}: entry {i}: expected an object, got {type(entry).__name__} ({fix})")
    return data


def _require(path: Path, where: str, entry: dict, name: str, kind: type | tuple[type, ...], fix: str) -> Any:
    if name not in entry:
        raise BenchmarkFileError(f"{path}: {where}: no '{name}' field ({fix})")
    value = entry[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BenchmarkFileError(f"{path}: {where}: '{name}' is {type(value).__name__}, expected {expected} ({fix})")
    if isinstance(value, str) and not value.strip():
        raise BenchmarkFileError(f"{path}: {where}: '{name}' is empty ({fix})")
    return value


def _options(path: Path, where: str, entry: dict, name: str, fix: str) -> dict[str, str]:
    options = _require(path, where, entry, name, dict, fix)
    if not options:
        raise BenchmarkFileError(f"{path}: {where}: '{name}' is empty ({fix})")
    for letter, text in options.items():
        if not re.fullmatch(r"[A-Za-z]", letter) or not _is_text(text):
            raise BenchmarkFileError(f"{path}: {where}: option {letter!r} is not a letter with a text ({fix})")
    if len({k.upper() for k in options}) != len(options):
        raise BenchmarkFileError(f"{path}: {where}: option letters repeat across case ({fix})")
    return {k: str(v) for k, v in options.items()}


def _is_text(value: Any) -> bool:
    """Option and answer texts; VLM4D counting questions give numbers (choices 0..8, answer 2)."""
    return isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def letters_for_text(options: dict[str, str], text: str) -> tuple[str, ...]:
    """Option letters whose text is `text` (exact match first, else whitespace/case-insensitive)."""
    exact = tuple(k for k, v in options.items() if v == text)
    return exact or tuple(k for k, v in options.items() if _norm(v) == _norm(text))


def _unique(path: Path, questions: list[Question]) -> list[Question]:
    seen: set[QKey] = set()
    for q in questions:
        if q.key in seen:
            raise BenchmarkFileError(f"{path}: id {q.id} appears twice (ids must be unique within a file)")
        seen.add(q.key)
    return questions


# ----------------------------------------------------------------------------------------------- VLM4D
def vlm4d_split_of(path: str | os.PathLike) -> str | None:
    """'real' / 'synthetic' from a released file name (real_mc.json, synthetic_mc.json), else None."""
    name = Path(path).name.lower()
    found = [s for s in VLM4D_SPLITS if name.startswith(s)]
    return found[0] if len(found) == 1 else None


def vlm4d_number(qid: str) -> int | None:
    """The number an id ends with (validation_923 -> 923), as the official statistics parse it."""
    tail = qid.split("_")[-1]
    return int(tail) if tail.isdigit() else None


def vlm4d_group(split: str, qid: str, answer_text: str) -> str | None:
    """exo / ego for real, directional / fp for synthetic (the VLM4D paper's Table 1 columns)."""
    if split == "real":
        number = vlm4d_number(qid)
        return None if number is None else ("exo" if number <= VLM4D_EXO_MAX_ID else "ego")
    answer = answer_text.strip().lower()
    return "fp" if answer == "no" or answer.startswith("no ") else "directional"


def vlm4d_video_path(url: str) -> str:
    """Local relative path of a VLM4D video URL: what follows resolve/main/ (a non-URL is kept as given)."""
    if HF_PATH_MARK in url:
        return url.split(HF_PATH_MARK, 1)[1]
    if "://" in url:
        raise ValueError(f"video URL {url!r} has no '{HF_PATH_MARK}' part")
    return url


def load_vlm4d(path: str | os.PathLike, split: str | None = None) -> list[Question]:
    """Questions of a VLM4D multiple-choice file; `split` is real or synthetic (default: from the file name)."""
    path = Path(path)
    named = vlm4d_split_of(path)
    if split and named and split != named:
        raise BenchmarkFileError(f"{path}: given as the {split} split but named like the {named} file "
                                 f"(write {named}=FILE, or rename a subset file)")
    split = split or named
    if split not in VLM4D_SPLITS:
        raise BenchmarkFileError(f"{path}: split {split!r} is not one of {', '.join(VLM4D_SPLITS)} "
                                 f"(name it: real=FILE or synthetic=FILE)")
    fix = "use the released real_mc.json / synthetic_mc.json"
    questions = []
    for i, entry in enumerate(read_entries(path, f"VLM4D {split}_mc.json", "questions", fix)):
        where = f"entry {i}"
        qid = str(_require(path, where, entry, "id", (str, int), fix))
        where = f"entry {i} (id {qid})"
        url = _require(path, where, entry, "video", str, fix)
        text = _require(path, where, entry, "question", str, fix)
        options = _options(path, where, entry, "choices", fix)
        answer = _require(path, where, entry, "answer", (str, int, float), fix)
        if not _is_text(answer):
            raise BenchmarkFileError(f"{path}: {where}: 'answer' is {type(answer).__name__}, expected the text of "
                                     f"a choice ({fix})")
        answer = str(answer)
        letters = letters_for_text(options, answer)
        if not letters:
            raise BenchmarkFileError(f"{path}: {where}: answer {answer!r} is not one of the choices "
                                     f"{list(options.values())} (correct the answer text or the choices)")
        group = vlm4d_group(split, qid, answer)
        if group is None:
            raise BenchmarkFileError(f"{path}: {where}: id has no trailing number, needed for the ego/exo split "
                                     f"({fix}: ids are validation_N)")
        try:
            video = vlm4d_video_path(url)
        except ValueError as e:
            raise BenchmarkFileError(f"{path}: {where}: {e} ({fix})") from e
        questions.append(Question(
            benchmark="vlm4d", split=split, id=qid, video=video, question=text, options=options,
            answer_letter=letters[0], answer_text=answer, correct_letters=letters,
            categories={"question_type": str(entry.get("question_type", "multiple-choice")), "group": group},
            url=url))
    return _unique(path, questions)


# ----------------------------------------------------------------------------------------------- MMWorld
def mmworld_id(video_id: str, question_index: int) -> str:
    return f"{video_id}_{question_index}"


def load_mmworld(path: str | os.PathLike, split: str = MMWORLD_SPLIT) -> list[Question]:
    """Questions of MMWorld's mmworld.json (a list of videos, each with its questions)."""
    path = Path(path)
    fix = "use the released mmworld.json"
    questions = []
    for i, video in enumerate(read_entries(path, "MMWorld mmworld.json", "videos", fix)):
        where = f"entry {i}"
        video_id = _require(path, where, video, "video_id", str, fix)
        where = f"entry {i} (video_id {video_id})"
        discipline = _require(path, where, video, "discipline", str, fix)
        subdiscipline = video.get("subdiscipline") or ""
        items = _require(path, where, video, "questions", list, fix)
        for j, item in enumerate(items):
            qwhere = f"{where} question {j}"
            if not isinstance(item, dict):
                raise BenchmarkFileError(f"{path}: {qwhere}: expected an object ({fix})")
            text = _require(path, qwhere, item, "question", str, fix)
            qtype = _require(path, qwhere, item, "type", str, fix)
            options = _options(path, qwhere, item, "options", fix)
            label = _require(path, qwhere, item, "correct_answer_label", str, fix).strip()
            letter = next((k for k in options if k.lower() == label.lower()), None)
            if letter is None:
                raise BenchmarkFileError(f"{path}: {qwhere}: correct_answer_label {label!r} is not one of the "
                                         f"options {list(options)} (correct the label)")
            flags = {name: _require(path, qwhere, item, name, bool, fix) for name in MMWORLD_FLAGS}
            same_text = letters_for_text(options, options[letter])
            questions.append(Question(
                benchmark="mmworld", split=split, id=mmworld_id(video_id, j), video=video_id, question=text,
                options=options, answer_letter=letter, answer_text=options[letter], correct_letters=same_text,
                categories={"discipline": discipline, "subdiscipline": subdiscipline, "type": qtype},
                flags=flags, url=str(video.get("video_url", ""))))
    return _unique(path, questions)


def load_questions(benchmark: str, path: str | os.PathLike, split: str | None = None) -> list[Question]:
    if benchmark == "vlm4d":
        return load_vlm4d(path, split)
    if benchmark == "mmworld":
        return load_mmworld(path, split or MMWORLD_SPLIT)
    raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")


def index_questions(questions: Iterable[Question]) -> dict[QKey, Question]:
    """(split, id) -> Question; a repeated key is an error (two files given for one split)."""
    index: dict[QKey, Question] = {}
    for q in questions:
        if q.key in index:
            raise BenchmarkFileError(f"question {q.split}/{q.id} given twice (give each split's file once)")
        index[q.key] = q
    return index


# ----------------------------------------------------------------------------------------------- videos
def resolve_video(question: Question, root: str | os.PathLike) -> Path | None:
    """The local video file of a question, or None.

    VLM4D: root / video. MMWorld (video_id without extension): root / video_id if it is a file; else the
    video files inside a directory root / video_id (the official evaluation's layout), first by name; else
    root / (video_id + extension), extensions tried in VIDEO_EXTENSIONS order, any case.
    """
    root = Path(root)
    direct = root / question.video
    if direct.is_file():
        return direct
    if question.benchmark != "mmworld":
        return None
    if direct.is_dir():
        inside = sorted(p for p in direct.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        return inside[0] if inside else None
    parent, stem = direct.parent, direct.name
    if not parent.is_dir():
        return None
    found = [p for p in parent.glob(f"{glob_escape(stem)}.*")
             if p.is_file() and p.stem == stem and p.suffix.lower() in VIDEO_EXTENSIONS]
    found.sort(key=lambda p: (VIDEO_EXTENSIONS.index(p.suffix.lower()), p.name))
    return found[0] if found else None


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass
class VideoReport:
    """Which questions have a decodable video under a root; counted, never dropped silently."""

    root: str
    present: list[QKey] = field(default_factory=list)
    missing: list[QKey] = field(default_factory=list)
    undecodable: list[QKey] = field(default_factory=list)
    missing_videos: list[str] = field(default_factory=list)  # relative paths, each once
    undecodable_videos: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def total(self) -> int:
        return len(self.present) + len(self.missing) + len(self.undecodable)

    def counts(self) -> dict[str, int]:
        return {"questions": self.total, "present": len(self.present), "missing": len(self.missing),
                "undecodable": len(self.undecodable), "missing_videos": len(self.missing_videos),
                "undecodable_videos": len(self.undecodable_videos)}

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "counts": self.counts(), "missing": [list(k) for k in self.missing],
                "undecodable": [list(k) for k in self.undecodable], "missing_videos": self.missing_videos,
                "undecodable_videos": self.undecodable_videos}

    def line(self) -> str:
        c = self.counts()
        return (f"videos under {self.root}: {c['present']}/{c['questions']} questions have a video, "
                f"{c['missing']} missing ({c['missing_videos']} files), "
                f"{c['undecodable']} undecodable ({c['undecodable_videos']} files)")


def check_videos(questions: Iterable[Question], root: str | os.PathLike, decode: bool = True) -> VideoReport:
    """Find each question's video under `root` and (with `decode`) check its first frame decodes."""
    report = VideoReport(root=str(root))
    status: dict[str, str] = {}  # video -> present / missing / undecodable, each file probed once
    for q in questions:
        if q.video not in status:
            path = resolve_video(q, root)
            if path is None:
                status[q.video] = "missing"
                report.missing_videos.append(q.video)
            else:
                status[q.video] = "present"
                if decode:
                    try:
                        probe_video(path)
                    except VideoDecodeError as e:
                        status[q.video] = "undecodable"
                        report.undecodable_videos[q.video] = str(e)
        getattr(report, status[q.video]).append(q.key)
    return report
