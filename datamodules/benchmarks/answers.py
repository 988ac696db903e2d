"""Answers to multiple-choice benchmark questions: which option a free-text response chooses, by rules, with the rule
and the words that decided; and an optional local LLM judge for what the rules leave unparsed.

`extract(response, options)` reads the response without its markup (answer_text.strip_markup: `$\\boxed{B}$`,
`**Answer:** B`, `\\(B\\)`, ...) and applies these rules; the first that decides wins (RULES, in this order):

1. whole -- the whole response is one choice: a letter in any dress ("B", "(b)", "B.", "Option B", "Answer: (B)")
   or one option's text ("left", "Not moving.").
2. final statement -- the last answer statement that says "final" ("The final answer is: B", "Final choice: C").
3. answer statement -- the last answer statement: "the answer is B", "Answer: (B)", "the correct option is B",
   "I choose C", "B is correct", "the third option is correct", "the answer is <an option's text>", and, where a
   letter closes its clause, "So C.", "Therefore, (C).", "it's actually D", "most likely B". A statement naming two
   letters ("A or B", "C, D") or a letter whose echo is another option's text ("B (right)" where B is left)
   decides: unparsed; one naming two options' texts is no statement.
4. leading letter -- a letter opening the response ("B. The car ...", "(B) ...", "B: ...", "B - ..."), unless the
   response lists the options back ("A. left\\nB. right") or echoes another option's text ("B. right").
5. conclusion -- the response's last words: a closing letter ("Not c. d."), an option restated after the options
   were listed back, or the last of its closing sentences (at most CONCLUSION_SENTENCES, on its last
   CONCLUSION_LINES lines) that names an option, if it names exactly one (by a marked letter or by its text):
   "... so the hoop stays in place." after an analysis of every option; a sentence naming none may state one
   option's content in other words ("... which reduces swelling and inflammation." for "To reduce swelling and
   inflammation": answer_text.restated_options).
6. marked letter -- every marked letter in the response ("(B)", "option B", a capital standing alone) is the same.
7. option text -- exactly one option's text is named anywhere in the response, and the response was not cut off
   mid-sentence (a length limit stops a model before it concludes: what it named on the way is no answer).

A statement with nothing after it ("The final answer is:" ending the response) names nothing: the rules below it
read what came before. An option's text is found however it is worded (answer_text.py: number words are digits,
"from left to right" is right, "stays in place" is "not moving", "no car is present" is "no car there", ...) and
never where negated ("does not turn left"). "A" and "I" followed by an ordinary word are English ("A man walks"),
not letters; "N/A" is no letter; a negated letter ("not A") is no mention. Unparsed answers are counted and scored
wrong (scoring.py); `launch/evaluate.py score --judge DIR` asks a local causal LM about them (LLMJudge), and
`--explain SPLIT/ID` prints which rule decided an item and on which words.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from datamodules.benchmarks.answer_text import (named_options, option_mentions, rejected_after, restated_options,
                                               strip_markup)

RULES = ("whole", "final statement", "answer statement", "leading letter", "conclusion", "marked letter",
         "option text")
UNPARSED = "unparsed"
ARTICLE_LETTERS = {"A", "I"}  # one-letter English words
# Words after "A" that make it a letter reference rather than an article ("A is correct", "A because ...").
REFERENCE_WORDS = {"is", "was", "seems", "would", "should", "could", "might", "appears", "because", "since", "as",
                   "fits", "matches", "and", "or", "describes", "shows", "looks"}
_WORD_AFTER = re.compile(r"[ \t]+([A-Za-z]+)")
CONCLUSION_SENTENCES, CONCLUSION_LINES = 3, 2
ORDINALS = ("first", "second", "third", "fourth", "fifth", "last")  # "the third option": by position
_NEGATION = re.compile(r"(?:\bnot|n't|\bnever)\s+(?:(?:option|choice)\s+)?[(\[]?$", re.I)  # "not A", "isn't (B)"
CHOOSE_VERBS = ("choose", "chose", "pick", "select", "go")
CONCLUSION_WORDS = ("so", "therefore", "thus", "hence", "overall", "conclusion")
REASON_WORDS = ("because", "since", "as", "given")  # may follow a concluding letter: "So C, because ..."
_SENTENCE_END = re.compile(r"(?<!\b[A-Za-z])[.!?;](?=\s|$)|\n")  # not "B." (a letter's period)
_ORDINAL_CORRECT = re.compile(r"\s+(?:is|seems|looks)\s+(?:to\s+be\s+)?(?:the\s+)?(?:correct|right|best)|\s+describes"
                              r"|\s+fits", re.I)
_LETTER_DELIMS = re.compile(r"[ \t.:)\]\-,]*")  # not newlines: a letter on its own line has no clause
# "B. Explanation: in the first frame ..." and "B because ..." are reasoning after the letter
_EXPLANATION = re.compile(r"[)\]\"']?[.!:,]?\s*(?:explanation|reason(?:ing)?|because|since)\b", re.I)


@dataclass(frozen=True)
class Extraction:
    """What a response chooses (an option key, or None), the rule that decided, and the words it decided on."""
    choice: str | None
    rule: str  # one of RULES, or UNPARSED
    evidence: str = ""

    def explain(self) -> str:
        decided = self.choice if self.choice is not None else "no option"
        return f"{self.rule}: {decided}" + (f", from {self.evidence!r}" if self.evidence else "")


AMBIGUOUS = object()  # a statement that names two options or contradicts itself


@functools.lru_cache(maxsize=64)
def _patterns(keys: tuple[str, ...]) -> dict[str, re.Pattern]:
    upper = "".join(sorted({k.upper() for k in keys}))
    both = upper + upper.lower()
    verb = r"(?:\s*(?:(?:is|would\s+be|should\s+be|will\s+be|must\s+be)\b|[:=]))+"
    after = rf"\s*(?:(?:option|choice|letter)\s+)?[(\[\"']?\s*(?P<letter>[{both}])(?![A-Za-z0-9])"
    statement = (rf"\b(?:(?P<final>final)\s+|(?:correct|best|right|most\s+likely)\s+)?answer[\"']?{verb}"
                 rf"|\b(?:(?P<final2>final)|correct|best|right)\s+(?:option|choice){verb}"
                 rf"|\b(?:(?:i\s+(?:would\s+|will\s+)?)?(?:choose|chose|pick|select)|go\s+with)\b"
                 rf"|\b(?P<conclusion>{'|'.join(CONCLUSION_WORDS)}|it(?:'s|’s|\s+is)(?:\s+actually)?"
                 rf"|(?:most\s+)?likely|probably)\b,?")
    return {
        "whole": re.compile(rf"^[(\[]?\s*(?:(?:(?:final\s+)?(?:option|choice|answer)\s*[:\-]?\s*)?[(\[]?\s*"
                            rf"([{both}])\s*[)\]]?\s*[.:)]?)\s*$", re.I),
        "statement": re.compile(statement, re.I),
        "after": re.compile(after, re.I),
        "is_correct": re.compile(rf"(?:\b(?:option|choice|letter)\s+)?(?<![A-Za-z0-9])[(\[]?(?P<letter>[{both}])"
                                 rf"[)\]]?\s+(?:is|seems|appears)\s+(?:to\s+be\s+)?(?:the\s+)?(?:correct|right|best|"
                                 rf"most\s+(?:likely|accurate|appropriate|plausible))\b", re.I),
        "leading": re.compile(rf"^[(\[]?([{both}])(?:[)\]]|[.:](?![A-Za-z0-9])|\s+-\s|\s*\n|\s*$)"),
        "marked": re.compile(rf"[(\[]([{both}])[)\]]|\b(?:option|choice|letter)\s+([{both}])(?![A-Za-z0-9])", re.I),
        "capital": re.compile(rf"(?<![A-Za-z0-9'’/])([{upper}])(?![A-Za-z0-9'’/]|\.[A-Za-z])"),  # not N/A
        "list_item": re.compile(rf"(?:^|\n|[,;]\s*)[(\[]?([{both}])[.):](?:\s|$)"),
        "lone": re.compile(rf"^[(\[]?([{both}])[)\]]?[.!]?$"),  # a sentence that is only a letter: "b."
        "closing": re.compile(rf"(?:^|[.!?;:\n]\s*)[(\[]?([{both}])[)\]]?[.!]?\s*$"),  # "Not c. d." ends on d
        "ordinal": re.compile(rf"\b(?:the\s+)?({'|'.join(ORDINALS)})\s+(?:option|choice|one|answer|alternative)\b",
                              re.I),
        "or_other": re.compile(rf"\s*(?:or|and|/|,|&)\s*(?:(?:option|choice)\s+)?[(\[]?\s*([{both}])(?![A-Za-z0-9])",
                               re.I),
    }


def _key(letter: str, options: Mapping[str, str]) -> str:
    return next(k for k in options if k.upper() == letter.upper())


def _is_article(text: str, end: int, letter: str) -> bool:
    """`letter` ending at `end` reads as the English word ("A man", "I think")."""
    if letter.upper() not in ARTICLE_LETTERS:
        return False
    word = _WORD_AFTER.match(text, end)
    if word and word.group(1)[0].isupper() and word.group(1) != "I":
        return False  # "A The person ...": a letter, then a sentence
    return bool(word) and word.group(1).lower() not in REFERENCE_WORDS


def _negated(text: str, start: int) -> bool:
    return bool(_NEGATION.search(text[max(0, start - 24):start]))


def _clause_after(text: str, end: int) -> str:
    """The rest of the sentence after a letter (skipping the letter's own delimiters)."""
    start = _LETTER_DELIMS.match(text, end).end()
    stop = _SENTENCE_END.search(text, start)
    return text[start:stop.start() if stop else len(text)]


def _echo_contradicts(text: str, end: int, key: str, options: Mapping[str, str]) -> bool:
    """A letter followed by another option's text as its label ("B. right", "B (right)" where B is left): the response
    says two things. A sentence after the letter is its explanation, whatever options it mentions."""
    if _EXPLANATION.match(text, end):
        return False
    clause = _clause_after(text, end).strip()
    parenthetical = re.match(r"\(([^()]*)\)", clause)
    echo = parenthetical.group(1) if parenthetical else clause
    mentions = option_mentions(echo, options)
    if not mentions or any(m.key == key for m in mentions):
        return False
    # the clause is (almost) nothing but another option's text: its label
    covered = sum(m.end - m.start for m in mentions)
    return parenthetical is not None or covered >= 0.6 * len(re.sub(r"\W", "", echo)) or len(echo.split()) <= 3


def _sentences(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.end()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


class _Reader:
    """One response against one question's options."""

    def __init__(self, text: str, options: Mapping[str, str]):
        self.text, self.options = text, options
        self.pat = _patterns(tuple(options))
        self.items = [(m.start(1), _key(m.group(1), options)) for m in self.pat["list_item"].finditer(text)]
        self.listed = {k for _, k in self.items}

    def ordinal_key(self, word: str) -> str | None:
        """The option a position names: "third" -> the third key, "last" -> the last."""
        keys = list(self.options)
        position = ORDINALS.index(word.lower())
        return keys[-1] if word.lower() == "last" else (keys[position] if position < len(keys) else None)

    def letter_mentions(self, start: int = 0, end: int | None = None) -> list[tuple[int, int, str]]:
        """(start, end, key) of marked letters, capitals standing alone and positions ("the third option") in
        text[start:end]: not articles, not negated, not rejected after ('option (c) can be ruled out'), and none
        when the response lists the options back."""
        if len(self.listed) >= 2:
            return []
        text, found = self.text, []
        end = len(text) if end is None else end
        for m in self.pat["marked"].finditer(text, start, end):
            found.append((m.start(), m.end(), _key(m.group(1) or m.group(2), self.options)))
        marked = [(s, e) for s, e, _ in found]
        for m in self.pat["capital"].finditer(text, start, end):
            inside = any(s <= m.start() and m.end() <= e for s, e in marked)  # the C of "option C"
            if not inside and not _is_article(text, m.end(), m.group(1)):
                found.append((m.start(), m.end(), _key(m.group(1), self.options)))
        for m in self.pat["ordinal"].finditer(text, start, end):
            key = self.ordinal_key(m.group(1))
            if key is not None:
                found.append((m.start(), m.end(), key))
        return sorted((s, e, key) for s, e, key in found if not _negated(text, s) and not rejected_after(text, e))

    def target_at(self, position: int) -> tuple[int, Any] | None:
        """The letter (or position, "the third option") an answer statement names right after `position`:
        (where it ends, key or AMBIGUOUS), or None."""
        text, pat, options = self.text, self.pat, self.options
        after = pat["after"].match(text, position)
        if after and not _is_article(text, after.end(), after.group("letter")):
            other = pat["or_other"].match(text, after.end())
            if other and not _is_article(text, other.end(), other.group(1)):
                return other.end(), AMBIGUOUS
            key = _key(after.group("letter"), options)
            return after.end(), AMBIGUOUS if _echo_contradicts(text, after.end(), key, options) else key
        ordinal = pat["ordinal"].match(text, _LETTER_DELIMS.match(text, position).end())
        if ordinal and (key := self.ordinal_key(ordinal.group(1))) is not None:
            return ordinal.end(), key
        return None

    def statements(self) -> list[tuple[bool, int, Any, str]]:
        """(says final, position, key or AMBIGUOUS, the words) of every answer statement that names something."""
        text, pat, options = self.text, self.pat, self.options
        found = []
        for m in pat["is_correct"].finditer(text):  # "B is correct", "option C seems to be the best"
            found.append((False, m.start(), _key(m.group("letter"), options), m.group(0)))
        for m in pat["ordinal"].finditer(text):  # "the third option is correct"
            if _ORDINAL_CORRECT.match(text, m.end()) and (key := self.ordinal_key(m.group(1))) is not None:
                found.append((False, m.start(), key, text[m.start():m.end() + 20].strip()))
        for m in pat["statement"].finditer(text):
            final = bool(m.group("final") or m.group("final2"))
            target = self.target_at(m.end())
            if m.group("conclusion"):  # "So C." / "Wait, it's C." end a response; "so A is wrong" concludes nothing
                if target and target[1] is not AMBIGUOUS:
                    rest = _clause_after(text, target[0]).strip().lower()
                    if not rest or rest.startswith(REASON_WORDS):
                        found.append((False, m.start(), target[1], text[m.start():target[0]]))
                continue
            if target:
                found.append((final, m.start(), target[1], text[m.start():target[0]]))
            elif not m.group(0).lower().lstrip("i ").startswith(CHOOSE_VERBS):  # "select the best answer": nothing
                clause = _clause_after(text, m.end())
                named = named_options(clause, options)
                if len(named) == 1:  # two options' texts in one statement: not a statement of either
                    found.append((final, m.start(), named[0], f"{m.group(0)}{clause}".strip()))
        return found

    def closing_sentences(self) -> list[tuple[int, int]]:
        """The sentences a conclusion may stand in: at most CONCLUSION_SENTENCES, on the last CONCLUSION_LINES lines
        (further back is the analysis, which names options it goes on to reject)."""
        text = self.text
        lines = [m.start() for m in re.finditer(r"\n", text)]
        floor = lines[-CONCLUSION_LINES] if len(lines) >= CONCLUSION_LINES else 0
        return [span for span in _sentences(text) if span[1] > floor][-CONCLUSION_SENTENCES:]

    def restated_after_listing(self) -> tuple[str, int] | None:
        """The options listed back ("A. left / B. right / ...") and then one of them again: (that key, where)."""
        keys = [k for _, k in self.items]
        n = len(self.options)
        if len(keys) > n and sorted(keys[:n]) == sorted(self.options):
            position, key = self.items[-1]
            return key, position
        return None

    def read(self) -> Extraction:
        text, pat, options = self.text, self.pat, self.options
        whole = pat["whole"].match(text)
        if whole:
            return Extraction(_key(whole.group(1), options), "whole", text)
        named = named_options(text, options)
        if len(named) == 1 and len(option_mentions(text, options)) == 1 and not self.letter_mentions() \
                and not pat["leading"].match(text) \
                and len(text.split()) <= 2 * len(str(options[named[0]]).split()) + 2:
            return Extraction(named[0], "whole", text)

        statements = self.statements()
        if statements:
            final, _, chosen, words = max(statements, key=lambda s: (s[0], s[1]))
            rule = "final statement" if final else "answer statement"
            if chosen is AMBIGUOUS:
                return Extraction(None, UNPARSED, f"{rule} names two options or contradicts itself: {words}")
            return Extraction(chosen, rule, words)

        leading = pat["leading"].match(text)
        if leading and len(self.listed) < 2 and not _is_article(text, leading.end(1), leading.group(1)):
            key = _key(leading.group(1), options)
            if _echo_contradicts(text, leading.end(1), key, options):
                return Extraction(None, UNPARSED, f"the letter and its text disagree: {_first_sentence(text)}")
            return Extraction(key, "leading letter", text[:leading.end()].strip())

        closing = pat["closing"].search(text)
        if closing and len(self.listed) < 2 and not _negated(text, closing.start(1)) and \
                not _is_article(text, closing.end(1), closing.group(1)):
            return Extraction(_key(closing.group(1), options), "conclusion", text[closing.start(1):].strip())
        restated = self.restated_after_listing()
        if restated:
            key, position = restated
            return Extraction(key, "conclusion", text[position:].strip())
        for start, end in reversed(self.closing_sentences()):
            sentence = text[start:end].strip()
            if len(self.listed) >= 2 and pat["list_item"].match(sentence):
                continue  # an option listed back is not a conclusion
            lone = pat["lone"].match(sentence)
            if lone and not _negated(text, start + lone.start(1)):
                return Extraction(_key(lone.group(1), options), "conclusion", sentence)
            keys = {k for _, _, k in self.letter_mentions(start, end)}
            keys |= set(named_options(text[start:end], options))
            if not keys:  # an option's content stated in other words: "... which reduces swelling and inflammation."
                keys = set(restated_options(sentence, options))
            if len(keys) == 1:
                return Extraction(keys.pop(), "conclusion", sentence)
            if keys:
                break

        letters = self.letter_mentions()
        lettered = {k for _, _, k in letters}
        if len(lettered) == 1 and set(named) <= lettered:
            s, e, key = letters[-1]
            return Extraction(key, "marked letter", text[s:e])
        if not lettered and len(named) == 1 and not _cut_off(text):
            mention = next(m for m in option_mentions(text, options) if m.key == named[0])
            return Extraction(named[0], "option text", text[mention.start:mention.end])
        if lettered or named:
            return Extraction(None, UNPARSED, f"names {' and '.join(sorted(lettered | set(named)))}")
        return Extraction(None, UNPARSED, "names no option")


_FINISHED = re.compile(r"[.!?)\]\"'*:]\s*$")


def _cut_off(text: str) -> bool:
    """A response of several sentences that stops mid-sentence was cut off (a length limit) before it concluded: an
    option it named on the way, further back than its closing sentences, is no answer. (Closing sentences still
    conclude without a final period: models often leave it out.)"""
    return len(_sentences(text)) > 1 and not _FINISHED.search(text)


def _first_sentence(text: str) -> str:
    spans = _sentences(text)
    return text[spans[0][0]:spans[0][1]].strip() if spans else text


def extract(response: str | None, options: Mapping[str, str]) -> Extraction:
    """Which option `response` chooses, by which rule, from which words (see the module docstring)."""
    if not response or not options or not response.strip():
        return Extraction(None, UNPARSED, "empty response")
    text = strip_markup(response)
    if not text:
        return Extraction(None, UNPARSED, "empty response")
    return _Reader(text, options).read()


def extract_choice(response: str | None, options: Mapping[str, str]) -> str | None:
    """The option key a free-text response chooses, or None when it cannot be told."""
    return extract(response, options).choice


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
