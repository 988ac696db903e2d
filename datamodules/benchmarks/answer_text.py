"""Reading a model's response as text: markup stripped, and option texts found in it however they are worded.

`strip_markup` removes what models wrap answers in: LaTeX (`$\\boxed{B}$`, `\\(B\\)`, `\\text{B}`, an unclosed `$B`),
markdown (`**Answer:** B`, headings, code ticks) and leaked special tokens (`<|im_end|>`); a boxed letter becomes
"(B)", so it reads as a marked letter.

`words` turns text into canonical words, so an option and a response that say the same thing in other words meet:
- lower case; "n't" is "not"; spellings of one direction are one word ("counter-clockwise", "anticlockwise" ->
  counterclockwise; "toward" -> towards; "leftwards" -> left, ...); number words are digits ("two" -> 2);
- a movement between two sides is its destination: "from left to right", "from the right of the frame over to
  the left" (right, left);
- PHRASES: phrases of one meaning become one word: "to the left side" is left, "stays in place" / "remains still"
  / "is not moving" are `_still_`, "closer to the camera" / "approaching the camera" / "coming closer" are
  `_towards_camera_`, "receding" / "farther from the camera" are `_away_from_camera_`; a phrase of stillness followed
  by a direction ("not moving left") is kept as words, so the negation falls on the direction;
- existence: "no car there", "there is no car visible", "no car is present", "I can't find any car", "the car is
  not in the video", "at no point does a car appear" are `_absent_ car` (the head noun, singular).
An option whose whole text is one word of such a phrase ("away", "closer", "stationary") is read as the phrase.

`option_mentions` finds the options whose canonical words occur in a text, except where the text denies them: a
negation word within NEGATION_REACH words before, in its clause ("does not turn left"); a rejection after, in its
sentence ('"left" can be ruled out', 'as for (B), it does not fit'); inside a longer option's mention; or an option
text such as "not moving" that negates the option text right after it ("not moving left").

`restated_options` finds the options whose content words (FUNCTION_WORDS left out, one suffix cut: "grasping",
"grasps" and "grasp" meet) a sentence states in full, in any order: the conclusion rule's reading of a closing
sentence that restates an option without quoting it.
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from typing import Mapping

# -- markup ------------------------------------------------------------------------------------------------------
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text(?:bf)?\s*\{\s*)?([^{}]*?)\s*\}?\s*\}")
_LATEX_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_DELIMS = re.compile(r"\\[()\[\]]|\$+")
_MARKDOWN = re.compile(r"[*_`]{1,3}|^#{1,6}\s+|^\s*>\s+", re.M)
_EMPHASISED_LETTER = re.compile(r"(?:\*\*|__)\s*\(?([A-Za-z])\)?\s*(?:\*\*|__)")
_SPECIAL_TOKENS = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?s>|\[/?INST\]")
_WHITESPACE = re.compile(r"\s+")


def strip_markup(response: str) -> str:
    """The response without LaTeX, markdown and special tokens; whitespace runs made one space or one newline."""
    text = _SPECIAL_TOKENS.sub(" ", response)
    text = _EMPHASISED_LETTER.sub(r"(\1)", text)  # "**B** The car ...": a marked letter, not "B The car"
    text = _BOXED.sub(lambda m: f"({m.group(1).strip()})" if len(m.group(1).strip()) == 1 else m.group(1), text)
    text = _LATEX_COMMAND.sub(r"\1", text)
    text = _LATEX_DELIMS.sub("", text)
    text = _MARKDOWN.sub("", text)
    # one space or newline per whitespace run: the patterns' adjacent \s* then cannot backtrack over long runs
    return _WHITESPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


# -- canonical words ---------------------------------------------------------------------------------------------
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS["single"] = "1"  # "a single camel"
SPELLINGS = {"anticlockwise": "counterclockwise", "toward": "towards", "leftward": "left", "leftwards": "left",
             "rightward": "right", "rightwards": "right", "upward": "up", "upwards": "up", "downward": "down",
             "downwards": "down", "forwards": "forward", "backwards": "backward", "further": "farther"}
JOINED_SPELLINGS = {("counter", "clockwise"): "counterclockwise", ("anti", "clockwise"): "counterclockwise"}
STILL = "_still_"
NOT_ROTATING = "_not_rotating_"
TOWARDS_CAMERA = "_towards_camera_"
AWAY_FROM_CAMERA = "_away_from_camera_"
ABSENT = "_absent_"
# a side of the frame -> the direction of a movement that ends there ("from the bottom to the top" is up)
SIDE_DESTINATION = {"left": "left", "right": "right", "top": "up", "bottom": "down", "up": "up", "down": "down"}
SIDES = set(SIDE_DESTINATION)
DIRECTION_WORDS = {"left", "right", "up", "down", "towards", "away", "closer", "forward", "backward", "clockwise",
                   "counterclockwise", TOWARDS_CAMERA, AWAY_FROM_CAMERA, "north", "south", "east", "west"}


def _with_and_without_the(*phrases: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p2 for p in phrases for p2 in (p, p.replace(" the ", " "))))


# canonical word -> phrases that say it (as canonical words, after spellings and numbers)
PHRASES: dict[str, tuple[str, ...]] = {
    "up": ("ascending", "ascends", "ascend", "going up", "goes up", "moving up", "moves up"),
    "down": ("descending", "descends", "descend", "going down", "goes down", "moving down", "moves down"),
    "left": _with_and_without_the("to the left side", "to the left", "towards the left side", "towards the left",
                                  "the left side", "left hand side", "left side"),
    "right": _with_and_without_the("to the right side", "to the right", "towards the right side", "towards the right",
                                   "the right side", "right hand side", "right side"),
    TOWARDS_CAMERA: _with_and_without_the(
        "closer towards the camera", "closer to the camera", "towards the camera", "nearer to the camera",
        "nearer the camera", "approaching the camera", "approaches the camera", "approach the camera",
        "towards the viewer", "closer to the viewer", "nearer to the viewer", "approaching the viewer", "towards us",
        "closer to us"),
    AWAY_FROM_CAMERA: _with_and_without_the(
        "farther away from the camera", "farther from the camera", "away from the camera", "receding from the camera",
        "moves off from the camera", "moving off from the camera", "away from the viewer", "farther from the viewer",
        "receding into the distance", "into the distance", "receding", "recedes", "recede", "away from us"),
    STILL: ("not moving", "is not moving", "are not moving", "does not move", "do not move", "did not move",
            "is not in motion", "not in motion", "stays still", "stay still", "staying still", "stays in place",
            "stay in place", "staying in place", "stays in the same place", "stays in the same position",
            "stays in the same spot", "stays where it is", "stays where he is", "stays where she is",
            "stays where they are", "stay where they are", "remains where it is", "remains still", "remain still",
            "remaining still",
            "remains stationary", "remain stationary", "remaining stationary", "remains in place",
            "remains in the same place", "remains in the same position", "remains in the same spot", "remains static",
            "stands still", "standing still", "stood still", "stationary", "motionless", "no movement", "no motion",
            "at rest", "static", "does not change position", "not change position", "stays fixed", "remains fixed",
            "has not moved", "not moved"),
    NOT_ROTATING: ("not rotating", "is not rotating", "does not rotate", "not spinning", "is not spinning",
                   "does not spin", "no rotation", "no spinning"),
}
# approaching without "the camera": only where nothing else is approached ("getting closer to the door" is not)
APPROACH_WORDS = ("coming closer", "getting closer", "moving closer", "comes closer", "gets closer", "come closer",
                  "get closer", "getting nearer", "comes nearer", "moves closer")
# an option that is one word of a phrase above means the phrase
OPTION_ALIASES = {"away": AWAY_FROM_CAMERA, "closer": TOWARDS_CAMERA, "nearer": TOWARDS_CAMERA, "still": STILL}
_PHRASE_TABLE: dict[str, list[tuple[tuple[str, ...], str]]] = {}
for _canon, _phrases in [*PHRASES.items(), (TOWARDS_CAMERA, APPROACH_WORDS)]:
    for _phrase in _phrases:
        _words = tuple(_phrase.split())
        _PHRASE_TABLE.setdefault(_words[0], []).append((_words, _canon))
for _entries in _PHRASE_TABLE.values():
    _entries.sort(key=lambda e: -len(e[0]))  # the longest phrase first
_APPROACH = {tuple(p.split()) for p in APPROACH_WORDS}
_KEEP_AS_WORDS = {STILL, NOT_ROTATING}  # stillness followed by a direction: the negation is the direction's
# existence
_PLACES = {"video", "scene", "frame", "frames", "clip", "image", "footage", "picture", "shot"}
_ABSENT_AFTER = {"there", "visible", "present", "shown", "seen", "appears", "appear", "exists", "exist", "here",
                 "anywhere", "around", "in"}
_ABSENT_VERBS = {"is", "are", "can", "could", "was", "were", "be"}
_ABSENT_HEADS = {"there", "no", "can", "could", "do", "did", "cannot", "at", *_PLACES}
_FIND_VERBS = {"find", "see", "spot", "detect", "locate", "notice", "identify"}
_NOUN_STOP = {"is", "are", "can", "could", "was", "were", "be", "in", "on", "at", "there", "visible", "present",
              "shown", "seen", "appears", "appear", "and", "or", "but", "so", "that", "which", "to", "the", "a", "an",
              "of", "any", "it", "moving", "exists", "exist", "here", "anywhere", "around", "enough", "much",
              "more", "other", "such", "way", "doubt", "need", "sign", "evidence", "reason", "matter", "longer",
              "one", "point", "does", "do", "did", "throughout", "during", "from", "with", "for"}
_TOKEN = re.compile(r"[0-9a-z]+(?:['’][0-9a-z]+)*|[,;:.!?()\n\"]")
_APOSTROPHE = re.compile(r"[0-9a-z]+")
_NEGATED_STEMS = {"ca": "can", "wo": "will", "sha": "shall"}  # can't, won't, shan't


@dataclass(frozen=True)
class Word:
    text: str  # canonical; "," ";" ":" "." "!" "?" "(" ")" '"' "\n" are marks
    start: int  # character span in the text it came from
    end: int

    @property
    def is_word(self) -> bool:
        return self.text[0].isalnum() or self.text[0] == "_"


def _raw_words(text: str) -> list[Word]:
    """Lower-case words (contractions split: "isn't" -> is not, "it's" -> it s), numbers as digits, spellings
    made one, and clause marks, each with its span in `text`."""
    out: list[Word] = []

    def add(token: str, start: int, end: int) -> None:
        token = NUMBER_WORDS.get(token, SPELLINGS.get(token, token))
        if out and (out[-1].text, token) in JOINED_SPELLINGS:
            out[-1] = Word(JOINED_SPELLINGS[(out[-1].text, token)], out[-1].start, end)
        else:
            out.append(Word(token, start, end))

    for m in _TOKEN.finditer(text.casefold()):
        if m.group() == "one" and not _counts(text.casefold(), m):
            out.append(Word("one", m.start(), m.end()))
            continue
        token, start = m.group(), m.start()
        if token[-3:] in ("n't", "n’t"):
            stem = _NEGATED_STEMS.get(token[:-3], token[:-3])
            if stem:
                add(stem, start, m.end() - 3)
            add("not", m.end() - 3, m.end())
        elif "'" in token or "’" in token:
            for part in _APOSTROPHE.finditer(token):
                add(part.group(), start + part.start(), start + part.end())
        else:
            add(token, start, m.end())
    return out


_PRONOUN_ONE_BEFORE = {"each", "every", "any", "no", "which", "that", "this", "the", "last", "first", "only",
                       "another", "someone", "anyone", "a", "second", "third", "other", "right", "wrong", "correct"}
_PRONOUN_ONE_AFTER = {"of", "by", "another", "more", "at", "in", "on", "or", "and", "is", "was", "that", "which",
                      "who", "to", "but", "way", "side", "thing", "hand"}
_WORD_BEFORE = re.compile(r"([a-z]+)[^a-z]*$")
_WORD_NEXT = re.compile(r"[^a-z0-9]*([a-z]+)")


def _counts(folded: str, m: re.Match) -> bool:
    """Whether "one" counts something ("one person") rather than standing for a thing ("each one", "one of them")."""
    before = _WORD_BEFORE.search(folded[max(0, m.start() - 20):m.start()])
    after = _WORD_NEXT.match(folded, m.end())
    if before and before.group(1) in _PRONOUN_ONE_BEFORE:
        return False
    return bool(after) and after.group(1) not in _PRONOUN_ONE_AFTER


def _singular(noun: str) -> str:
    return noun[:-1] if len(noun) > 3 and noun.endswith("s") and not noun.endswith("ss") else noun


def _place_after(t: list[str], k: int) -> int:
    """How many words from t[k] say where ("in the video", "anywhere in the scene", "there", "throughout")."""
    n = 0
    if k + n < len(t) and t[k + n] in ("there", "here", "anywhere", "throughout", "visible", "present"):
        n += 1
    if k + n + 1 < len(t) and t[k + n] in ("in", "throughout") and t[k + n + 1] in _PLACES:
        n += 2
    elif k + n + 2 < len(t) and t[k + n] in ("in", "throughout") and t[k + n + 1] in ("the", "this", "any") and \
            t[k + n + 2] in _PLACES:
        n += 3
    return n


def _absent_at(words: list[Word], i: int) -> tuple[int, str] | None:
    """An existence-denying phrase starting at words[i]: (its length in words, the head noun), else None."""
    t = [w.text for w in words[i:i + 12]]

    def noun_phrase(j: int) -> tuple[int, str] | None:
        k = j
        while k < len(t) and t[k] not in _NOUN_STOP and words[i + k].is_word and k - j < 3:
            k += 1
        return (k, _singular(t[k - 1])) if k > j else None

    def article(j: int) -> int:
        return j + (j < len(t) and t[j] in ("any", "a", "an", "the"))

    head = t[0] if t else ""
    found = None
    if head == "there" and len(t) > 3 and t[1] in _ABSENT_VERBS and t[2] in ("no", "not"):
        found = noun_phrase(article(3))  # there is no car / there isn't any car
    elif head == "no":
        found = noun_phrase(1)  # no car there / no car is visible
        if found and not (found[0] < len(t) and (t[found[0]] in _ABSENT_AFTER or t[found[0]] in _ABSENT_VERBS)):
            found = None  # "no movement", "no, the car ..." are not about existence
        elif found and t[found[0]] in _ABSENT_VERBS:
            k = found[0] + 1 + (found[0] + 1 < len(t) and t[found[0] + 1] == "be")
            if not (k < len(t) and t[k] in _ABSENT_AFTER):
                return None
            found = (k, found[1])
    elif head in ("can", "could", "do", "did", "cannot") and len(t) > 2 and t[1] == "not" and t[2] in _FIND_VERBS:
        found = noun_phrase(article(3))  # I can't find any car
    elif head in _PLACES and len(t) > 3 and t[1] in ("does", "do", "did") and t[2] == "not" and \
            t[3] in ("contain", "show", "include", "have", "feature", "depict"):
        found = noun_phrase(article(4))  # the video doesn't contain any car
    elif head == "at" and len(t) > 3 and t[1] == "no" and t[2] in ("point", "time", "moment") and \
            t[3] in ("does", "do", "is", "are"):
        found = noun_phrase(article(4))  # at no point does a car appear
        if found and found[0] < len(t) and t[found[0]] in ("appear", "appears", "show", "visible", "present"):
            found = (found[0] + 1, found[1])
    if not found:
        return None
    k, noun = found
    while k < len(t) and t[k] in ("anywhere", "at", "all") or (k < len(t) and t[k] == "is" and k + 1 < len(t)
                                                                 and t[k + 1] in _ABSENT_AFTER):
        k += 1
    k += (k < len(t) and t[k] in _ABSENT_AFTER - {"in"})
    return k + _place_after(t, k), noun


def _absent_subject(words: list[Word], i: int) -> tuple[int, str] | None:
    """"the car is not present / visible / there / in the video" at words[i] (the noun): (length, noun)."""
    t = [w.text for w in words[i:i + 7]]
    if not t or t[0] in _NOUN_STOP or not words[i].is_word or len(t) < 3:
        return None
    k = 1 + (t[1] in _ABSENT_VERBS)
    if k + 1 < len(t) and t[k] == "not":
        place = _place_after(t, k + 1)
        if place or t[k + 1] in ("present", "visible", "shown", "seen"):
            return k + 1 + max(place, 1), _singular(t[0])
    return None


def _destination(words: list[Word], i: int) -> tuple[int, str] | None:
    """"from (the) left (of the frame) (over) to (the) right" at words[i]: (length, where it ends up)."""
    t = [w.text for w in words[i:i + 12]]
    if len(t) > 2 and t[0] in SIDES and t[1] == "to" and t[2] in SIDES and t[2] != t[0]:
        return 3, SIDE_DESTINATION[t[2]]  # "right to left", "left-to-right"
    if not t or t[0] != "from":
        return None
    j = 1 + (len(t) > 1 and t[1] == "the")
    if j >= len(t) or t[j] not in SIDES:
        return None
    origin = t[j]
    for k in range(j + 1, min(len(t) - 1, j + 7)):
        if not words[i + k].is_word:
            return None
        if t[k] in ("to", "towards"):
            m = k + 1 + (k + 1 < len(t) and t[k + 1] == "the")
            if m < len(t) and t[m] in SIDES and t[m] != origin:
                return m + 1 + (m + 1 < len(t) and t[m + 1] in ("side", "edge")), SIDE_DESTINATION[t[m]]
            return None
    return None


def words(text: str) -> list[Word]:
    """The canonical words and clause marks of `text` (see the module docstring)."""
    raw = _raw_words(text)
    out: list[Word] = []
    i = 0
    while i < len(raw):
        head = raw[i].text
        nxt = raw[i + 1].text if i + 1 < len(raw) else ""
        absent = (_absent_at(raw, i) if head in _ABSENT_HEADS else None) \
            or (_absent_subject(raw, i) if nxt == "not" or nxt in _ABSENT_VERBS else None)
        if absent:
            n, noun = absent
            span = (raw[i].start, raw[i + n - 1].end)
            out += [Word(ABSENT, *span), Word(noun, *span)]
            i += n
            continue
        destination = _destination(raw, i) if head == "from" or head in SIDES else None
        if destination:
            n, side = destination
            out.append(Word(side, raw[i].start, raw[i + n - 1].end))
            i += n
            continue
        for phrase, canon in _PHRASE_TABLE.get(head, ()):
            n = len(phrase)
            if tuple(w.text for w in raw[i:i + n]) != phrase:
                continue
            after = raw[i + n].text if i + n < len(raw) else ""
            if canon in _KEEP_AS_WORDS and after in DIRECTION_WORDS:
                continue  # "not moving left": the direction is what is denied
            if phrase in _APPROACH and after in ("to", "towards"):
                continue  # "getting closer to the door": not the camera
            out.append(Word(canon, raw[i].start, raw[i + n - 1].end))
            i += n
            break
        else:
            out.append(raw[i])
            i += 1
    return out


def canonical(text: str) -> str:
    return " ".join(w.text for w in words(text) if w.is_word)


def option_words(text: str) -> tuple[str, ...]:
    """An option's canonical words; a one-word option that is part of a phrase means the phrase ("away")."""
    canon = tuple(canonical(text).split())
    return (OPTION_ALIASES[canon[0]],) if len(canon) == 1 and canon[0] in OPTION_ALIASES else canon


# -- option mentions ---------------------------------------------------------------------------------------------
NEGATION_WORDS = {"not", "no", "never", "neither", "nor", "without", "cannot", "unlike", "rather", "instead"}
CLAUSE_NEGATIONS = {"nothing", "nobody", "never"}  # they deny the rest of their clause ("nothing shows it going right")
_DENIAL_NOUNS = {"sign", "evidence", "indication", "hint", "trace"}  # "no sign of the skater coming closer"
NEGATION_REACH = 5  # words: "no movement towards the right"
_CLAUSE_WORDS = {"but", "however", "whereas", "although", "though", "yet"}  # they end a negation
# said of an option after naming it, in the same sentence: it is rejected ('"left" can be ruled out')
REJECTIONS = re.compile(
    r"\b(?:can|could|should|must|may)\s+be\s+(?:ruled\s+out|excluded|eliminated|dismissed|discarded|rejected)"
    r"|\bruled\s+out|\brule\s+(?:it|this|that)?\s*out|\beliminat|\b(?:is|are|seems?|looks?)\s+(?:wrong|incorrect|"
    r"unlikely|implausible|inaccurate|not\s+(?:correct|right|the\s+case|the\s+answer|supported|accurate|it))"
    r"|\b(?:does|do|did)\s*(?:n['’]t|\s+not)\s+(?:fit|match|apply|hold|work|make\s+sense|describe|agree)"
    r"|\bis\s*n['’]t\s+(?:correct|right|supported|the\s+case|it)|\bnot\s+supported|\bno\s+(?:evidence|sign|support)"
    r"|\bnothing\s+(?:in\s+the\s+(?:video|clip|scene)\s+)?(?:suggests|supports|indicates|shows)|\bdoes\s*n['’]t\s+"
    r"(?:happen|occur)|\bcan\s+be\s+excluded|\bfalse\b|\bcontradict|\b(?:is|are)\s*(?:n['’]t|\s+not)\s+what\b",
    re.I)
_SENTENCE_STOP = re.compile(r"[.!?;\n]")


REJECTION_REACH = 120  # characters after a mention that may reject it


@functools.lru_cache(maxsize=64)
def _marks(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where the sentences of `text` end, and where its rejections start: found once per text."""
    return (tuple(m.start() for m in _SENTENCE_STOP.finditer(text)),
            tuple(m.start() for m in REJECTIONS.finditer(text)))


def rejected_after(text: str, end: int) -> bool:
    """Whether the rest of the sentence after `end` rejects what was just named."""
    stops, rejections = _marks(text)
    k = bisect.bisect_left(stops, end)
    stop = min(stops[k] if k < len(stops) else len(text), end + REJECTION_REACH)
    r = bisect.bisect_left(rejections, end)
    return r < len(rejections) and rejections[r] < stop


@dataclass(frozen=True)
class Mention:
    key: str  # the option
    start: int  # character span of its words in the text
    end: int


def option_mentions(text: str, options: Mapping[str, str]) -> list[Mention]:
    """Where the options' texts are named in `text` (see the module docstring), in text order."""
    return list(_mentions(text, tuple((str(k), str(v)) for k, v in options.items())))


@functools.lru_cache(maxsize=256)  # a response is read several times over (whole, conclusion, anywhere)
def _mentions(text: str, option_items: tuple[tuple[str, str], ...]) -> tuple[Mention, ...]:
    found_words = words(text)
    seq = [w for w in found_words if w.is_word]
    # per word of seq: negated within its clause, and whether a clause mark comes right before it
    negated, after_stop = [], []
    recent: list[str] = []
    stop = denied = False  # denied: a clause negation came earlier in this clause
    for w in found_words:
        if not w.is_word:
            if w.text != '"':
                recent, stop, denied = [], True, False
            continue
        negated.append(denied or any(r in NEGATION_WORDS for r in recent))
        after_stop.append(stop)
        if w.text in CLAUSE_NEGATIONS or (w.text in _DENIAL_NOUNS and recent and recent[-1] == "no"):
            denied = True
        if w.text in _CLAUSE_WORDS:
            recent, denied = [], False
        else:
            recent = [*recent[1 - NEGATION_REACH:], w.text]
        stop = False
    texts = [w.text for w in seq]
    by_words: dict[tuple[str, ...], str] = {}
    for key, value in option_items:
        canon = option_words(value)
        if canon:
            by_words.setdefault(canon, key)  # a text repeated under two letters: the first letter
    first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for canon, key in by_words.items():
        first.setdefault(canon[0], []).append((canon, key))
    spans: list[tuple[int, int, tuple[str, ...], str]] = []  # (first word, end word, words, key)
    for i, t in enumerate(texts):
        for canon, key in first.get(t, ()):
            if tuple(texts[i:i + len(canon)]) == canon:
                spans.append((i, i + len(canon), canon, key))
    starts_at = {s for s, _, _, _ in spans}
    longest_from: dict[int, int] = {}  # first word -> the furthest end of a span starting there
    for s, e, _, _ in spans:
        longest_from[s] = max(e, longest_from.get(s, e))
    reach_before, furthest = {}, -1  # first word -> the furthest end of the spans starting before it
    for s in sorted(longest_from):
        reach_before[s] = furthest
        furthest = max(furthest, longest_from[s])

    def inside_longer(s: int, e: int) -> bool:
        return reach_before[s] >= e or longest_from[s] > e

    def negates_next(e: int, canon: tuple[str, ...]) -> bool:
        return canon[0] in NEGATION_WORDS and e in starts_at and not after_stop[e]

    return tuple(Mention(key, seq[s].start, seq[e - 1].end) for s, e, canon, key in sorted(spans)
                 if not negated[s] and not inside_longer(s, e) and not negates_next(e, canon)
                 and not rejected_after(text, seq[e - 1].end))


def named_options(text: str, options: Mapping[str, str]) -> list[str]:
    """The distinct options named in `text`, in the order of their first mention."""
    return list(dict.fromkeys(m.key for m in option_mentions(text, options)))


# -- an option restated in other words ---------------------------------------------------------------------------
# Words that carry no content of an option: "To reduce swelling" and "which reduces swelling" say the same thing.
FUNCTION_WORDS = {"a", "an", "the", "to", "of", "in", "on", "at", "by", "for", "with", "and", "or", "it", "its", "is",
                  "are", "was", "were", "be", "been", "being", "would", "will", "could", "can", "should", "may",
                  "might", "he", "she", "they", "them", "his", "her", "their", "this", "that", "these", "those", "s",
                  "yes", "no", "from", "into", "as", "more", "than", "then", "there", "do", "does", "did"}
_SUFFIXES = ("ing", "ed", "es", "s", "e")  # one is cut, so "grasping", "grasps" and "grasp" share a stem
MIN_STEM = 3


def stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= MIN_STEM:
            return word[:-len(suffix)]
    return word


def content_stems(text: str) -> frozenset[str]:
    """The stems of a text's canonical words other than FUNCTION_WORDS (phrase words such as `_still_` kept)."""
    return frozenset(stem(w.text) for w in words(text) if w.is_word and w.text not in FUNCTION_WORDS)


def _denies(text: str) -> bool:
    return any(w.text in NEGATION_WORDS or w.text in CLAUSE_NEGATIONS for w in words(text)) \
        or REJECTIONS.search(text) is not None


def restated_options(sentence: str, options: Mapping[str, str]) -> list[str]:
    """The options whose content the sentence states in full, in any order and inflection ("grasping the mug by
    its handle" for "Grasp the mug by its handle"): an option needs two content words, or one phrase word
    (`_still_`); a sentence that negates or rejects anything the option does not itself say restates nothing."""
    have = content_stems(sentence)
    found = []
    for key, value in options.items():
        need = content_stems(str(value))
        if not need or (len(need) < 2 and not next(iter(need)).startswith("_")) or not need <= have:
            continue
        if _denies(sentence) and not _denies(str(value)):
            continue
        found.append(str(key))
    return found

