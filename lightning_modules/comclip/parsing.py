"""Captions parsed into what ComCLIP grounds: a subject entity, optionally a relation and an object entity.

An `Entity` is a noun with its attribute words ("red circle": noun "circle", attributes ("red",)); a `CaptionParse`
is (subject, relation, object), the relation being the words between the two entities ("left of", "riding").
Parsers are pluggable; each has a `name` and `parse(caption, fields) -> CaptionParse`, raising `ParseFailure` (one
line saying why) where it cannot parse. `fields` is the item's JSON (SVO-Probes and ComVG items carry
"triplet": {"subject", "verb", "object"}).

- `TripletParser`: the triplet the data gives.
- `CachedParses`: a JSON file {caption: parse} (the format of `CaptionParse.to_json`), e.g. written offline by a
  large model with `write_cached_parses`.
- `RuleParser`: the project's own rules for simple English captions ("a red circle left of a blue square",
  "the dog chases the cat", "a photo of a red circle").
- `InstructParser`: a local transformers causal LM asked for the parse as JSON.
- `ParserChain`: the first parser that succeeds; `build_parser(specs)` builds one from config specs
  ({"kind": "triplets" | "cached" | "rules" | "instruct", ...params}) and `parser_config_problems` checks them first.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from datamodules.errors import UsageError, count_problems, did_you_mean, first_line, raise_param_problems
from datamodules.files import atomic_write_text
from datamodules.writers.common import read_json


class ParseFailure(Exception):
    """A caption a parser cannot parse; the message is one line saying why."""


@dataclass(frozen=True)
class Entity:
    noun: str
    attributes: tuple[str, ...] = ()

    @property
    def phrase(self) -> str:
        """"red circle": the attribute words, then the noun."""
        return " ".join((*self.attributes, self.noun))

    def to_json(self) -> dict[str, Any]:
        return {"noun": self.noun, "attributes": list(self.attributes)}


@dataclass(frozen=True)
class CaptionParse:
    subject: Entity
    relation: str | None = None
    object: Entity | None = None

    @property
    def entities(self) -> tuple[Entity, ...]:
        return (self.subject,) if self.object is None else (self.subject, self.object)

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject.to_json(), "relation": self.relation,
                "object": None if self.object is None else self.object.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> "CaptionParse":
        """The parse `to_json` wrote; an entity may also be given as its phrase ("red circle"). A malformed parse is
        a ValueError saying which part is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a parse is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"subject", "relation", "object"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}{did_you_mean(unknown[0], ('subject', 'relation', 'object'))}")
        relation = data.get("relation")
        if relation is not None and not (isinstance(relation, str) and relation.strip()):
            raise ValueError(f"relation must be a non-empty string or null, got {relation!r}")
        obj = data.get("object")
        return cls(subject=_entity_from_json(data.get("subject"), "subject"),
                   relation=None if relation is None else " ".join(relation.split()),
                   object=None if obj is None else _entity_from_json(obj, "object"))


def _entity_from_json(data: Any, role: str) -> Entity:
    if isinstance(data, str):
        words = data.split()
        if not words:
            raise ValueError(f"{role} is an empty phrase")
        return Entity(words[-1], tuple(words[:-1]))
    if not isinstance(data, Mapping):
        raise ValueError(f"{role} must be an object {{\"noun\": ..., \"attributes\": [...]}} or a phrase, "
                         f"got {type(data).__name__}")
    unknown = sorted(set(data) - {"noun", "attributes"})
    if unknown:
        raise ValueError(f"{role}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], ('noun', 'attributes'))}")
    noun, attributes = data.get("noun"), data.get("attributes", [])
    if not (isinstance(noun, str) and noun.strip()):
        raise ValueError(f"{role}.noun must be a non-empty string, got {noun!r}")
    if not (isinstance(attributes, list) and all(isinstance(a, str) and a.strip() for a in attributes)):
        raise ValueError(f"{role}.attributes must be a list of non-empty strings, got {attributes!r}")
    return Entity(noun.strip(), tuple(a.strip() for a in attributes))


# ------------------------------------------------------------------------------------------------ words
DETERMINERS = frozenset("a an the this that these those some its his her their my our your".split())
# Words that cannot be part of an entity: a caption that puts them there is not of the simple form the rules read
# ("more dogs than cats", "a cat and a dog", "the sky is blue").
FUNCTION_WORDS = frozenset("and or but nor of to than that which who whom whose is are was were be been being am not "
                           "no it they there while as for from if then so because".split())
COPULAS = frozenset("is are".split())
# Spatial phrases, matched longest first at a word position.
RELATION_PHRASES = tuple(sorted((
    "left of", "right of", "to the left of", "to the right of", "on the left of", "on the right of",
    "on top of", "next to", "in front of", "in the middle of", "on the side of", "close to", "far from",
    "above", "below", "under", "underneath", "beneath", "behind", "beside", "besides", "between", "on", "in",
    "inside", "near", "with", "without", "at", "by", "over", "around", "against", "across", "along", "into", "onto",
    "through", "toward", "towards", "among", "outside", "atop"), key=lambda p: -len(p.split())))
# Prepositions a verb may take before its object ("sitting on", "looking at").
VERB_PREPOSITIONS = frozenset("on in at with to into onto over under from through across toward towards off up down "
                              "around along behind".split())
FRAMING_NOUNS = frozenset("photo picture image drawing painting illustration photograph".split())
# Words ending in -s that are no verb ("has" is one, taken on its own below though it is short).
NON_VERBS_ENDING_S = frozenset("lens pants jeans glasses shorts news always perhaps".split())
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def caption_words(caption: str) -> list[str]:
    """Lower-case words; punctuation other than inner hyphens and apostrophes dropped ("T-shirt", "man's")."""
    return _WORD.findall(caption.lower())


def entity_from_words(words: Sequence[str], role: str = "entity") -> Entity:
    """adj* noun: the last word is the noun, the words before it its attributes; determiners dropped."""
    content = [w for w in words if w not in DETERMINERS]
    if not content:
        raise ParseFailure(f"no {role} noun")
    odd = [w for w in content if w in FUNCTION_WORDS]
    if odd:
        raise ParseFailure(f"{role} '{' '.join(content)}' holds {odd[0]!r}, which no simple noun phrase does")
    return Entity(content[-1], tuple(content[:-1]))


def _relation_at(words: Sequence[str], i: int) -> tuple[str, int] | None:
    """(relation words, where the object starts) if a relation starts at word i: a spatial phrase, or a verb (an
    -ing or -s word followed by a determiner or by a preposition it takes, "riding a", "sitting on")."""
    for phrase in RELATION_PHRASES:
        parts = phrase.split()
        if list(words[i:i + len(parts)]) == parts:
            return phrase, i + len(parts)
    word = words[i]
    after = words[i + 1] if i + 1 < len(words) else None
    verb_like = len(word) > 3 and (word.endswith("ing") or (word.endswith("s") and not word.endswith("ss")))
    if word == "has" or (verb_like and word not in NON_VERBS_ENDING_S):
        if after in DETERMINERS:
            return word, i + 1
        if after in VERB_PREPOSITIONS:
            return f"{word} {after}", i + 2
    return None


class TripletParser:
    """The (subject, verb, object) triplet the item carries (SVO-Probes, ComVG): fields["triplet"] =
    {"subject": "red circle", "verb": "left of", "object": "blue square"}; a subject or object of several words is
    attributes + noun, its last word the noun."""

    name = "triplets"

    def parse(self, caption: str, fields: Mapping[str, Any]) -> CaptionParse:
        triplet = fields.get("triplet")
        if not isinstance(triplet, Mapping) or not triplet:
            raise ParseFailure("the item has no triplet")
        parts = {}
        for key in ("subject", "verb", "object"):
            value = triplet.get(key)
            if value is not None and not isinstance(value, str):
                raise ParseFailure(f"triplet {key} must be a string, got {type(value).__name__}")
            parts[key] = caption_words(value or "")
        if not parts["subject"]:
            raise ParseFailure("the triplet has no subject")
        return CaptionParse(subject=entity_from_words(parts["subject"], "subject"),
                            relation=" ".join(parts["verb"]) or None,
                            object=entity_from_words(parts["object"], "object") if parts["object"] else None)


class CachedParses:
    """Parses looked up by caption in a JSON file {caption: parse-json} (`write_cached_parses` writes one); the file
    is read and every entry checked when constructed."""

    name = "cached"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        data = read_json(self.path, "cached parses")
        if not isinstance(data, dict):
            raise UsageError(f"cached parses {self.path}: expected a JSON object {{caption: parse}}, got "
                             f"{type(data).__name__} (write it with write_cached_parses)")
        self.parses: dict[str, CaptionParse] = {}
        problems = []
        for caption, entry in data.items():
            try:
                self.parses[caption] = CaptionParse.from_json(entry)
            except ValueError as e:
                problems.append(f"cached parses {self.path}: entry {caption!r}: {e}")
        if problems:
            raise UsageError(problems)

    def parse(self, caption: str, fields: Mapping[str, Any]) -> CaptionParse:
        if caption not in self.parses:
            raise ParseFailure(f"caption not in {self.path.name}")
        return self.parses[caption]


def write_cached_parses(path: str | os.PathLike, parses: Mapping[str, CaptionParse]) -> Path:
    """The file CachedParses reads, written atomically (a reader never sees half of it)."""
    text = json.dumps({caption: p.to_json() for caption, p in parses.items()}, indent=1, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


class RuleParser:
    """Simple English captions by the project's own rules:

    [framing] [det] adj* noun [is|are] RELATION [det] adj* noun [rest]   or   [framing] [det] adj* noun

    RELATION is a spatial phrase (RELATION_PHRASES, longest match) or a verb (an -ing or -s word followed by a
    determiner, or by a preposition it takes: "riding a horse", "the dog chases the cat", "sitting on a couch").
    A noun is the last word of its phrase, the words before it its attributes. A framing prefix ("a photo of",
    "a picture of", "an image of", "there is") is dropped. The first relation is the one parsed: what follows the
    object from a second relation on ("... near a tree") is left out, as ComCLIP matches one subject-relation-object
    triplet. Anything else (a copula without a relation, conjunctions, comparisons) is a ParseFailure."""

    name = "rules"

    def parse(self, caption: str, fields: Mapping[str, Any]) -> CaptionParse:
        words = self._unframed(caption_words(caption))
        if not words:
            raise ParseFailure("no words")
        for i in range(1, len(words)):
            start = i + 1 if words[i] in COPULAS else i
            found = _relation_at(words, start) if start < len(words) else None
            if found is None:
                if words[i] in COPULAS:
                    raise ParseFailure(f"{words[i]!r} is followed by neither a spatial relation nor a verb")
                continue
            relation, object_start = found
            subject = entity_from_words(words[:i], "subject")
            end = next((j for j in range(object_start + 1, len(words))
                        if words[j] in COPULAS or _relation_at(words, j)), len(words))
            if object_start >= len(words):
                raise ParseFailure(f"nothing after the relation {relation!r}")
            return CaptionParse(subject, relation, entity_from_words(words[object_start:end], "object"))
        return CaptionParse(entity_from_words(words, "subject"))

    @staticmethod
    def _unframed(words: list[str]) -> list[str]:
        """Without "a photo of" / "there is" in front."""
        rest = words[1:] if words[:1] and words[0] in DETERMINERS else words
        if len(rest) >= 2 and rest[0] in FRAMING_NOUNS and rest[1] == "of":
            return rest[2:]
        if len(words) >= 2 and words[0] == "there" and words[1] in COPULAS:
            return words[2:]
        return words


# ------------------------------------------------------------------------------------------------ LM
INSTRUCT_PROMPT = (
    "Parse the image caption into its subject, the relation between the subject and the object, and the object. "
    "Reply with one JSON object: {\"subject\": {\"noun\": ..., \"attributes\": [...]}, \"relation\": ... or null, "
    "\"object\": {\"noun\": ..., \"attributes\": [...]} or null}.\n"
    "Caption: a red circle left of a blue square\n"
    "JSON: {\"subject\": {\"noun\": \"circle\", \"attributes\": [\"red\"]}, \"relation\": \"left of\", "
    "\"object\": {\"noun\": \"square\", \"attributes\": [\"blue\"]}}\n"
    "Caption: an old man kissing a young woman\n"
    "JSON: {\"subject\": {\"noun\": \"man\", \"attributes\": [\"old\"]}, \"relation\": \"kissing\", "
    "\"object\": {\"noun\": \"woman\", \"attributes\": [\"young\"]}}\n"
    "Caption: a small brown dog\n"
    "JSON: {\"subject\": {\"noun\": \"dog\", \"attributes\": [\"small\", \"brown\"]}, \"relation\": null, "
    "\"object\": null}\n"
    "Caption: {caption}\nJSON:")


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model's output (markdown fences, prose around it), or None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_from_output(output: str) -> CaptionParse:
    """The CaptionParse in a model's output: its first JSON object, validated."""
    data = first_json_object(output)
    if data is None:
        shown = " ".join(output.split())[:60]
        raise ParseFailure(f"no JSON object in the model's output {shown!r}")
    try:
        return CaptionParse.from_json(data)
    except ValueError as e:
        raise ParseFailure(f"the model's JSON is no parse: {e}") from e


class InstructParser:
    """A local transformers causal LM (directory in save_pretrained layout, with its tokenizer) asked for the parse
    as JSON, greedily, through the tokenizer's chat template where it has one, else as the plain few-shot prompt.
    Loading and generation are LLMJudge's (datamodules/benchmarks/answers.py), the project's one local-LM caller."""

    name = "instruct"

    def __init__(self, model_path: str, max_new_tokens: int = 64, device: str | None = None):
        from datamodules.benchmarks.answers import LLMJudge

        raise_param_problems(count_problems({"max_new_tokens": max_new_tokens}, ["max_new_tokens"]))
        if not Path(model_path).is_dir():
            raise UsageError(f"instruct parser model_path {model_path}: not a local directory (give a transformers "
                             f"causal LM saved with save_pretrained, with its tokenizer)")
        try:
            self.lm = LLMJudge(model_path, max_new_tokens=max_new_tokens, device=device)
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"instruct parser model_path {model_path}: cannot load a causal LM and its tokenizer "
                             f"({first_line(e)})") from e
        self.last_output = ""

    def parse(self, caption: str, fields: Mapping[str, Any]) -> CaptionParse:
        self.last_output = self.lm.reply(INSTRUCT_PROMPT.replace("{caption}", " ".join(caption.split())))
        return parse_from_output(self.last_output)


# ------------------------------------------------------------------------------------------------ chain
class ParserChain:
    """The parsers in order; the first that parses a caption wins."""

    name = "chain"

    def __init__(self, parsers: Sequence[Any]):
        if not parsers:
            raise ValueError("a parser chain needs at least one parser")
        self.parsers = list(parsers)

    def parse_named(self, caption: str, fields: Mapping[str, Any]) -> tuple[str, CaptionParse]:
        """(the name of the parser that parsed it, the parse); ParseFailure naming each parser's reason."""
        reasons = []
        for parser in self.parsers:
            try:
                return parser.name, parser.parse(caption, fields)
            except ParseFailure as e:
                reasons.append(f"{parser.name}: {e}")
        raise ParseFailure("; ".join(reasons))

    def parse(self, caption: str, fields: Mapping[str, Any]) -> CaptionParse:
        return self.parse_named(caption, fields)[1]


PARSER_KINDS: dict[str, type] = {"triplets": TripletParser, "cached": CachedParses, "rules": RuleParser,
                                 "instruct": InstructParser}
FILE_PARAMS = {"cached": "path", "instruct": "model_path"}


def parser_config_problems(specs: Any, check_files: bool = True) -> list[tuple[str, str]]:
    """(key, message) for every parser spec that cannot work, keys as the config writes them ("parsers.1.path"),
    without loading anything."""
    if not isinstance(specs, (list, tuple)) or not specs:
        return [("parsers", "give a non-empty list of parsers, e.g. [{kind: triplets}, {kind: rules}]")]
    problems = []
    for n, spec in enumerate(specs):
        key = f"parsers.{n}"
        if not isinstance(spec, Mapping):
            problems.append((key, f"a parser is a mapping {{kind: ..., params}}, got {type(spec).__name__}"))
            continue
        kind = spec.get("kind")
        if kind not in PARSER_KINDS:
            shown = "missing" if kind is None else f"unknown parser kind {kind!r}"
            problems.append((f"{key}.kind", f"{shown}{did_you_mean(str(kind), PARSER_KINDS)} "
                                            f"(one of {', '.join(PARSER_KINDS)})"))
            continue
        signature = inspect.signature(PARSER_KINDS[kind].__init__)
        accepted = [p for p in signature.parameters.values() if p.name != "self"
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # object.__init__ has *args
        for name in sorted(set(spec) - {"kind"} - {p.name for p in accepted}):
            problems.append((f"{key}.{name}", f"unknown key for the {kind} parser"
                                              f"{did_you_mean(name, [p.name for p in accepted])}"))
        for p in accepted:
            if p.default is inspect.Parameter.empty and p.name not in spec:
                problems.append((f"{key}.{p.name}", f"missing (the {kind} parser needs it)"))
        problems += [(f"{key}.{name}", message) for name, message in count_problems(spec, ["max_new_tokens"])]
        file_param = FILE_PARAMS.get(kind)
        if check_files and file_param in spec:
            problems += _file_problems(f"{key}.{file_param}", kind, spec[file_param])
    return problems


def _file_problems(key: str, kind: str, value: Any) -> list[tuple[str, str]]:
    path = Path(str(value))
    if kind == "cached" and not path.is_file():
        return [(key, f"no such file: {value} (the cached parses JSON, written with write_cached_parses)")]
    if kind == "instruct" and not path.is_dir():
        return [(key, f"not a local directory: {value} (a causal LM saved with save_pretrained, with its tokenizer)")]
    return []


def build_parser(specs: Sequence[Mapping[str, Any]]) -> ParserChain:
    """The ParserChain the specs describe, in order ([{"kind": "triplets"}, {"kind": "rules"}])."""
    raise_param_problems(parser_config_problems(specs))
    return ParserChain([PARSER_KINDS[spec["kind"]](**{k: v for k, v in spec.items() if k != "kind"})
                        for spec in specs])
