"""Answers to multiple-choice benchmark questions: rule-based extraction and an optional LLM judge.

`extract_choice(response, options)` returns an option letter (in the case of the option keys) or None
(unparsed). Rules, first that applies wins:
  1. the whole response is a letter: "B", "(b)", "B.", "**B**", "Option B", "Answer: B";
  2. explicit answer statements ("the answer is B", "final answer: (B)", "correct option is B", "I choose B",
     "answer: <option text>"), and sentences that end on a letter: "So C." / "Therefore, (C)." closing a
     response that weighs the options, a correction "Wait, it's C." / "it's actually C, because ...": a "final
     answer" statement beats other statements, then the last one wins, so a chain of thought that mentions
     other letters first still parses; "the answer is A or B" is unparsed;
  3. a letter opening the response followed by ".", ":", ")" or " - ": "B. text", "(B) text", "B: text" --
     unless the response lists the options back ("A. left\nB. right", "A) left, B) right");
  4. letters marked anywhere: "(B)", "option B", a capital option letter standing alone (not "N/A"); two
     different letters are unparsed;
  5. the text of exactly one option inside the response (case, punctuation and spacing ignored; an option
     whose text lies inside a longer matched option's text does not count; "counter-clockwise", "counter
     clockwise" and "anticlockwise" are "counterclockwise", "toward" is "towards").
"A" and "I" followed by an ordinary word are read as English ("A man is walking"), not as letters; lower-case
letters count only where marked (rules 1-3, "(b)", "option b"); a negated letter ("not A") is no mention, nor is
an option's text with a negation in the few words before it in its clause ("does not turn left"; "not moving
left", where "not moving" is an option too, negates "left"). A letter whose own sentence names a different
option's text and not its own ("B. The car moves left" where B is "right") is a contradiction: unparsed; a
sentence that opens with "Explanation:" or "because" is reasoning, not a contradiction.

Scoring (responses files, accuracy summaries) is in scoring.py; unparsed answers count as wrong there.
"""

from __future__ import annotations

import bisect
import functools
import os
import re
from typing import Any, Callable, Mapping

ARTICLE_LETTERS = {"A", "I"}  # one-letter English words
# Words after "A" that make it a letter reference rather than an article ("A is correct", "A because ...").
REFERENCE_WORDS = {"is", "was", "seems", "would", "should", "could", "might", "appears", "because", "since", "as",
                   "fits", "matches", "and", "or", "describes", "shows", "looks"}
_WORD_AFTER = re.compile(r"[ \t]+([A-Za-z]+)")
_NEGATION = re.compile(r"(?:\bnot|n't|\bnever)\s+(?:(?:option|choice)\s+)?[(\[]?$", re.I)  # "not A", "isn't (B)"
CHOOSE_VERBS = ("choose", "chose", "pick", "select", "go")
AMBIGUOUS = object()  # a statement naming two options or contradicting itself
_SENTENCE_END = re.compile(r"[.!?;]\s|[.!?;]$|\n")
_LETTER_DELIMS = re.compile(r"[ \t.:)\]\-,]*")  # not newlines: a letter on its own line has no clause
_WHITESPACE = re.compile(r"\s+")
# An option's text is not named when one of the few words before it in its clause negates it ("does not turn
# left", "isn't moving left", "not moving away from the camera"); "t" is what n't leaves after normalising.
NEGATION_WORDS = {"not", "no", "never", "t", "neither", "nor", "without", "cannot"}
NEGATION_REACH = 4  # words
_CLAUSE_WORDS = {"but", "however", "instead", "rather", "whereas", "although", "though"}  # they end a negation
_WORD_OR_STOP = re.compile(r"[0-9a-z]+|[,;:.!?()\n]")
CONCLUSION_WORDS = ("so", "therefore", "thus", "hence")
REASON_WORDS = ("because", "since", "as", "given")  # may follow a concluding letter: "So C, because ..."
# "B. Explanation: in the first frame the car is at the left ..." is reasoning, not B's own sentence
_EXPLANATION = re.compile(r"[)\]\"']?[.!:,]?\s*(?:explanation|reason(?:ing)?|because|since)\b", re.I)
# Spellings of one direction, made one word on both the response's and the options' side.
SPELLINGS = {"anticlockwise": "counterclockwise", "toward": "towards"}
JOINED_SPELLINGS = {("counter", "clockwise"): "counterclockwise", ("anti", "clockwise"): "counterclockwise"}


@functools.lru_cache(maxsize=64)
def _patterns(keys: tuple[str, ...]) -> dict[str, re.Pattern]:
    upper = "".join(sorted({k.upper() for k in keys}))
    both = upper + upper.lower()
    verb = r"(?:\s*(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be)\b|[:=]))+"
    after = rf"\s*(?:(?:option|choice|letter)\s+)?[(\[\"']?\s*(?P<letter>[{both}])(?![A-Za-z0-9])"
    statement = (rf"\b(?:(?P<final>final)\s+|(?:correct|best|right|most\s+likely)\s+)?answer{verb}"
                 rf"|\b(?:(?P<final2>final)|correct|best|right)\s+(?:option|choice){verb}"
                 rf"|\b(?:choose|chose|pick|select|go\s+with)\b"
                 rf"|\b(?P<conclusion>{'|'.join(CONCLUSION_WORDS)}|it(?:'s|’s|\s+is)(?:\s+actually)?)\b,?")
    return {
        "whole": re.compile(rf"^[(\[]?\s*(?:(?:option|choice|answer)\s*[:\-]?\s*)?[(\[]?\s*([{both}])\s*[)\]]?\s*"
                            rf"[.:)]?\s*$", re.I),
        "statement": re.compile(statement, re.I),
        "after": re.compile(after, re.I),
        "leading": re.compile(rf"^[(\[]?([{both}])(?:[)\]]|[.:](?![A-Za-z0-9])|\s+-\s|\s*\n|\s*$)"),
        "marked": re.compile(rf"[(\[]([{both}])[)\]]|\b(?:option|choice|letter)\s+([{both}])(?![A-Za-z0-9])", re.I),
        "capital": re.compile(rf"(?<![A-Za-z0-9'’/])([{upper}])(?![A-Za-z0-9'’/]|\.[A-Za-z])"),  # not N/A
        "list_item": re.compile(rf"(?:^|\n|[,;]\s*)[(\[]?([{both}])[.):](?:\s|$)"),
        "or_other": re.compile(rf"\s*(?:or|and|/)\s*(?:(?:option|choice)\s+)?[(\[]?\s*([{both}])(?![A-Za-z0-9])",
                               re.I),
    }


def _clean(response: str) -> str:
    text = re.sub(r"[*_`]{1,3}", "", response)  # markdown emphasis around letters: **B**, __B__, `B`
    # one space or newline per whitespace run: the patterns' adjacent \s* then cannot backtrack over long runs
    return _WHITESPACE.sub(lambda m: "\n" if "\n" in m.group() else " ", text).strip()


def _tokens(text: str) -> list[str]:
    """Lower-case words and clause punctuation, spelling variants made one ("counter-clockwise", "toward")."""
    out: list[str] = []
    for token in _WORD_OR_STOP.findall(text.casefold()):
        if out and (out[-1], token) in JOINED_SPELLINGS:
            out[-1] = JOINED_SPELLINGS[(out[-1], token)]
        else:
            out.append(SPELLINGS.get(token, token))
    return out


def _norm_text(text: str) -> str:
    return " ".join(t for t in _tokens(text) if t[0].isalnum())


def _is_article(text: str, end: int, letter: str) -> bool:
    """`letter` ending at `end` reads as the English word ("A man", "I think")."""
    if letter.upper() not in ARTICLE_LETTERS:
        return False
    word = _WORD_AFTER.match(text, end)
    return bool(word) and word.group(1).lower() not in REFERENCE_WORDS


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATION.search(text[max(0, start - 24):start]))


def _word_context(text: str) -> tuple[list[bool], list[bool]]:
    """For each word of _norm_text(text): whether a negation word precedes it within NEGATION_REACH words of its
    clause (punctuation and words such as "but" end a clause), and whether punctuation comes right before it."""
    negated, after_stop, recent, stop = [], [], [], False  # recent: the clause's last words
    for token in _tokens(text):
        if not token[0].isalnum():
            recent, stop = [], True
            continue
        negated.append(any(w in NEGATION_WORDS for w in recent))
        after_stop.append(stop)
        recent, stop = [] if token in _CLAUSE_WORDS else [*recent[1 - NEGATION_REACH:], token], False
    return negated, after_stop


def _text_groups(text: str, options: Mapping[str, str]) -> list[str]:
    """Normalised option texts found in `text` (whole words, not negated), dropping those inside a longer found
    text."""
    hay = f" {_norm_text(text)} "
    negated, after_stop = _word_context(text)
    spaces = [i for i, c in enumerate(hay) if c == " "]  # the k-th space opens word k

    def word(start: int) -> int:
        return bisect.bisect_left(spaces, start)

    starts: dict[str, list[int]] = {}  # option text -> where it occurs in hay, ascending
    for norm in {_norm_text(v) for v in options.values()} - {""}:
        found, start = [], hay.find(f" {norm} ")
        while start != -1:
            found.append(start)
            start = hay.find(f" {norm} ", start + 1)
        if found:
            starts[norm] = found

    def inside_longer(start: int, norm: str) -> bool:
        for longer, at in starts.items():
            if len(longer) > len(norm):
                k = bisect.bisect_right(at, start) - 1  # the last occurrence opening at or before `start`
                if k >= 0 and at[k] + len(longer) >= start + len(norm):
                    return True
        return False

    found_at = {s for at in starts.values() for s in at}

    def negates_next(start: int, norm: str) -> bool:
        """"not moving left" where "not moving" and "left" are both options says "left" is wrong."""
        end = start + len(norm) + 1
        return norm.split(" ", 1)[0] in NEGATION_WORDS and end in found_at and not after_stop[word(end)]

    return sorted(norm for norm, at in starts.items()
                  if any(not negated[word(s)] and not inside_longer(s, norm)
                         and not negates_next(s, norm) for s in at))


def _letter_of_text(norm: str, options: Mapping[str, str]) -> str:
    return next(k for k, v in options.items() if _norm_text(v) == norm)  # repeated texts: the first letter


def _key(letter: str, options: Mapping[str, str]) -> str:
    return next(k for k in options if k.upper() == letter.upper())


def _clause_after(text: str, end: int) -> str:
    """The rest of the sentence after a letter (skipping the letter's own delimiters)."""
    start = _LETTER_DELIMS.match(text, end).end()
    stop = _SENTENCE_END.search(text, start)
    return text[start:stop.start() if stop else len(text)]


def _consistent(text: str, end: int, key: str, options: Mapping[str, str]) -> bool:
    """False when the letter's own sentence names another option's text and not the letter's."""
    if _EXPLANATION.match(text, end):
        return True
    named = _text_groups(_clause_after(text, end), options)
    return not named or _norm_text(options[key]) in named


def _decide(text: str, match_end: int, letter: str, options: Mapping[str, str]) -> str | None:
    key = _key(letter, options)
    return key if _consistent(text, match_end, key, options) else None


def extract_choice(response: str | None, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text response chooses, or None when it cannot be told (see module docstring)."""
    if not response or not options or not response.strip():
        return None
    text = _clean(response)
    pat = _patterns(tuple(options))

    whole = pat["whole"].match(text)
    if whole:
        return _key(whole.group(1), options)

    statements = []  # (is_final, position, letter or AMBIGUOUS), only statements that name something
    for m in pat["statement"].finditer(text):
        final = bool(m.group("final") or m.group("final2"))
        after = pat["after"].match(text, m.end())
        if m.group("conclusion"):  # "So C." / "Wait, it's C." end a response; "so A is wrong" concludes nothing
            if after and not _is_article(text, after.end(), after.group("letter")):
                rest = _clause_after(text, after.end()).strip().lower()
                if not rest or rest.startswith(REASON_WORDS):
                    statements.append((False, m.start(), _key(after.group("letter"), options)))
            continue
        if after and not _is_article(text, after.end(), after.group("letter")):
            other = pat["or_other"].match(text, after.end())
            if other and not _is_article(text, other.end(), other.group(1)):
                statements.append((final, m.start(), AMBIGUOUS))
            else:
                key = _key(after.group("letter"), options)
                consistent = _consistent(text, after.end(), key, options)
                statements.append((final, m.start(), key if consistent else AMBIGUOUS))
        elif not m.group(0).lower().startswith(CHOOSE_VERBS):  # "select the best answer" names nothing
            named = _text_groups(_clause_after(text, m.end()), options)
            if named:
                statements.append((final, m.start(),
                                   _letter_of_text(named[0], options) if len(named) == 1 else AMBIGUOUS))
    if statements:
        chosen = max(statements, key=lambda s: (s[0], s[1]))[2]
        return None if chosen is AMBIGUOUS else chosen

    leading = pat["leading"].match(text)
    listed = {m.group(1).upper() for m in pat["list_item"].finditer(text)}  # "A. left\nB. right": the options
    if leading and len(listed) < 2 and not _is_article(text, leading.end(1), leading.group(1)):
        return _decide(text, leading.end(1), leading.group(1), options)

    mentions = [(m.end(), m.group(1) or m.group(2), m.start()) for m in pat["marked"].finditer(text)]
    mentions += [(m.end(), m.group(1), m.start()) for m in pat["capital"].finditer(text)]
    mentions = [(end, letter) for end, letter, start in mentions
                if not _is_article(text, end, letter) and not _negated(text, start)]
    letters = {letter.upper() for _, letter in mentions}
    if len(letters) > 1:
        return None
    if letters:
        end, letter = max(mentions)
        return _decide(text, end, letter, options)

    named = _text_groups(text, options)
    return _letter_of_text(named[0], options) if len(named) == 1 else None


# ----------------------------------------------------------------------------------------------- judge
class LLMJudge:
    """Asks a local causal LM which option a free-text response chooses; its reply is read by extract_choice.

    For responses the rules leave unparsed. `model_path` is a local directory holding a transformers causal LM
    and its tokenizer (save_pretrained layout).
    """

    PROMPT = ("A model answered a multiple-choice question. Decide which option its response chooses.\n"
              "{question}Options:\n{options}\nResponse: {response}\n"
              "Reply with the letter of the chosen option only, or 'none' if it chooses none.\nChosen option:")
    MAX_RESPONSE_CHARS = 4000  # a long chain of thought ends with its answer: keep the end

    def __init__(self, model_path: str | os.PathLike, max_new_tokens: int = 16, device: str | None = None,
                 dtype: Any = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = str(model_path)
        self.max_new_tokens = max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).eval()
        if device is not None:
            self.model.to(device)
        self.last_reply = ""

    def prompt(self, response: str, options: Mapping[str, str], question: str = "") -> str:
        listed = "\n".join(f"{k}. {v}" for k, v in options.items())
        return self.PROMPT.format(question=f"Question: {question}\n" if question else "", options=listed,
                                  response=response[-self.MAX_RESPONSE_CHARS:])

    def reply(self, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        inputs = tok(prompt, return_tensors="pt").to(self.model.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad)
        return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def choose(self, response: str, options: Mapping[str, str], question: str = "") -> str | None:
        self.last_reply = self.reply(self.prompt(response, options, question))
        return extract_choice(self.last_reply, options)

    __call__ = choose


Judge = Callable[[str, Mapping[str, str], str], "str | None"]
