import json

import pytest

from datamodules.errors import ParamError, UsageError
from lightning_modules.comclip.parsing import (CachedParses, CaptionParse, Entity, InstructParser, ParseFailure,
                                               ParserChain, RuleParser, TripletParser, build_parser,
                                               first_json_object, parse_from_output, parser_config_problems,
                                               write_cached_parses)


def E(phrase: str) -> Entity:
    *attributes, noun = phrase.split()
    return Entity(noun, tuple(attributes))


def test_entity_phrase_and_parse_json_round_trip():
    parse = CaptionParse(E("red circle"), "left of", E("blue square"))
    assert parse.subject.phrase == "red circle" and parse.entities == (E("red circle"), E("blue square"))
    assert parse.to_json() == {"subject": {"noun": "circle", "attributes": ["red"]}, "relation": "left of",
                               "object": {"noun": "square", "attributes": ["blue"]}}
    assert CaptionParse.from_json(json.loads(json.dumps(parse.to_json()))) == parse
    alone = CaptionParse(E("dog"))
    assert alone.entities == (E("dog"),) and CaptionParse.from_json(alone.to_json()) == alone
    assert CaptionParse.from_json({"subject": "big red circle", "relation": None, "object": None}).subject == \
        Entity("circle", ("big", "red"))


@pytest.mark.parametrize("data, message", [
    ([1], "a parse is a JSON object"),
    ({"subject": {"noun": ""}}, "subject.noun must be a non-empty string"),
    ({"subject": {"noun": "dog", "attributes": "brown"}}, "subject.attributes must be a list"),
    ({"subject": "dog", "relation": 3}, "relation must be a non-empty string or null"),
    ({"subject": "dog", "objet": "cat"}, "unknown key 'objet' (did you mean object?)"),
    ({"subject": "dog", "object": {"nown": "cat"}}, "object: unknown key 'nown' (did you mean noun?)"),
    ({"relation": "on"}, "subject must be an object"),
])
def test_malformed_parse_json_says_which_part(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        CaptionParse.from_json(data)


# ------------------------------------------------------------------------------------------------ rules
RULE_CASES = [
    ("a red circle left of a blue square", E("red circle"), "left of", E("blue square")),
    ("A red circle to the left of a blue square.", E("red circle"), "to the left of", E("blue square")),
    ("a photo of a red circle", E("red circle"), None, None),  # framing prefix dropped
    ("a picture of a green triangle above a yellow star", E("green triangle"), "above", E("yellow star")),
    ("an image of the cat", E("cat"), None, None),
    ("a small brown dog", E("small brown dog"), None, None),
    ("the dog chases the cat", E("dog"), "chases", E("cat")),
    ("a man riding a horse", E("man"), "riding", E("horse")),
    ("a man riding a horse near a tree", E("man"), "riding", E("horse")),  # the first relation is kept
    ("an old person kisses a young person", E("old person"), "kisses", E("young person")),
    ("a young person kisses an old person", E("young person"), "kisses", E("old person")),
    ("the plant is eating the bug", E("plant"), "eating", E("bug")),
    ("there is a mug in some grass", E("mug"), "in", E("grass")),
    ("some plants surrounding a lightbulb", E("plants"), "surrounding", E("lightbulb")),
    ("a red building left of a tree", E("red building"), "left of", E("tree")),  # -ing noun, not a verb
    ("a dog sitting on a couch", E("dog"), "sitting on", E("couch")),
    ("the cat is under the table", E("cat"), "under", E("table")),
    ("a mug on top of a book", E("mug"), "on top of", E("book")),
    ("a man has a hat", E("man"), "has", E("hat")),
]


@pytest.mark.parametrize("caption, subject, relation, obj", RULE_CASES)
def test_rule_parser(caption, subject, relation, obj):
    assert RuleParser().parse(caption, {}) == CaptionParse(subject, relation, obj)


@pytest.mark.parametrize("caption, reason", [
    ("", "no words"),
    ("...", "no words"),
    ("the sky is blue", "'is' is followed by neither a spatial relation nor a verb"),
    ("a dog is sleeping", "'is' is followed by neither"),
    ("there are more dogs than cats", "holds 'than'"),
    ("a cat and a dog", "holds 'and'"),
    ("the cat on", "nothing after the relation 'on'"),
    ("the cat on the", "no object noun"),
    ("a cat on a mat and a dog", "object 'mat and dog' holds 'and'"),
    ("the the", "no subject noun"),
])
def test_rule_parser_fails_with_a_reason(caption, reason):
    with pytest.raises(ParseFailure, match=reason):
        RuleParser().parse(caption, {})


# ------------------------------------------------------------------------------------------------ triplets
def test_triplet_parser():
    fields = {"triplet": {"subject": "red circle", "verb": "left of", "object": "the blue square"}}
    assert TripletParser().parse("ignored", fields) == CaptionParse(E("red circle"), "left of", E("blue square"))
    assert TripletParser().parse("x", {"triplet": {"subject": "girl", "verb": "", "object": ""}}) == \
        CaptionParse(E("girl"))
    for fields, reason in [({}, "no triplet"), ({"triplet": {}}, "no triplet"),
                           ({"triplet": {"subject": "", "verb": "eat", "object": "cake"}}, "no subject"),
                           ({"triplet": {"subject": 3}}, "subject must be a string")]:
        with pytest.raises(ParseFailure, match=reason):
            TripletParser().parse("x", fields)


# ------------------------------------------------------------------------------------------------ cached
def test_cached_parses_round_trip_and_missing_caption(tmp_path):
    parses = {"a red circle left of a blue square": CaptionParse(E("red circle"), "left of", E("blue square")),
              "a dog": CaptionParse(E("dog"))}
    path = write_cached_parses(tmp_path / "parses.json", parses)
    assert not list(tmp_path.glob("*.tmp*")) and json.loads(path.read_text())["a dog"]["object"] is None
    cached = CachedParses(path)
    assert all(cached.parse(c, {}) == p for c, p in parses.items())
    with pytest.raises(ParseFailure, match="caption not in parses.json"):
        cached.parse("a cat", {})


def test_cached_parses_malformed_file_names_file_and_entries(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ok": {"subject": "dog"}, "one": {"subject": {"noun": ""}}, "two": {"relation": "on"}}))
    with pytest.raises(UsageError) as error:
        CachedParses(bad)
    assert len(error.value.lines) == 2
    assert error.value.lines[0].startswith(f"cached parses {bad}: entry 'one': subject.noun")
    assert "entry 'two'" in error.value.lines[1]
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "broken.json").write_text("{")
    for name, message in [("list.json", "expected a JSON object"), ("broken.json", "not valid JSON"),
                          ("absent.json", "no such file")]:
        with pytest.raises(UsageError, match=message):
            CachedParses(tmp_path / name)


# ------------------------------------------------------------------------------------------------ instruct
@pytest.mark.parametrize("output, expected", [
    ('{"subject": {"noun": "circle", "attributes": ["red"]}, "relation": "left of", "object": {"noun": "square", '
     '"attributes": []}}', CaptionParse(E("red circle"), "left of", E("square"))),
    ('Sure! Here is the parse:\n```json\n{"subject": {"noun": "dog", "attributes": []}, "relation": null, '
     '"object": null}\n```\nAnything else?', CaptionParse(E("dog"))),
    ('{broken {"subject": "old man", "relation": "kissing", "object": "young woman"} {"subject": "x"}',
     CaptionParse(E("old man"), "kissing", E("young woman"))),  # the first object that decodes
])
def test_parse_from_model_output(output, expected):
    assert parse_from_output(output) == expected


@pytest.mark.parametrize("output, reason", [
    ("the subject is a dog", "no JSON object in the model's output 'the subject is a dog'"),
    ("[1, 2] {not json", "no JSON object"),
    ('{"noun": "dog"}', "the model's JSON is no parse: unknown key 'noun'"),
    ('{"subject": {"noun": "dog", "attributes": [1]}}', "subject.attributes must be a list"),
])
def test_unusable_model_output_is_a_parse_failure(output, reason):
    with pytest.raises(ParseFailure, match=reason):
        parse_from_output(output)


def test_first_json_object_skips_non_objects():
    assert first_json_object('[{"a": 1}]') == {"a": 1}  # inside a list: its first object
    assert first_json_object('"{" {"b": {"c": 2}}') == {"b": {"c": 2}}
    assert first_json_object("no braces") is None


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tests.benchmarks.test_answers import build_tiny_judge

    return build_tiny_judge(tmp_path_factory.mktemp("lm") / "random")


def test_instruct_parser_runs_a_tiny_random_lm(tiny_lm):
    parser = InstructParser(str(tiny_lm), max_new_tokens=6)
    with pytest.raises(ParseFailure, match="no JSON object in the model's output"):
        parser.parse("a red circle left of a blue square", {})
    generated = parser.lm.tokenizer(parser.last_output, add_special_tokens=False)["input_ids"]
    assert 0 < len(generated) <= 6  # a real greedy generation of at most max_new_tokens tokens


def test_instruct_parser_missing_or_unloadable_model(tmp_path):
    with pytest.raises(UsageError, match="not a local directory") as error:
        InstructParser(str(tmp_path / "absent"))
    assert len(error.value.lines) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="cannot load a causal LM"):
        InstructParser(str(tmp_path / "empty"))
    with pytest.raises(ParamError, match="max_new_tokens: must be >= 1"):
        InstructParser(str(tmp_path / "empty"), max_new_tokens=0)


# ------------------------------------------------------------------------------------------------ chain
def test_chain_first_success_wins_and_failure_names_every_parser():
    chain = ParserChain([TripletParser(), RuleParser()])
    fields = {"triplet": {"subject": "man", "verb": "rides", "object": "horse"}}
    assert chain.parse_named("a man riding a horse", fields) == ("triplets", CaptionParse(E("man"), "rides",
                                                                                         E("horse")))
    assert chain.parse_named("a man riding a horse", {}) == ("rules", CaptionParse(E("man"), "riding", E("horse")))
    with pytest.raises(ParseFailure) as error:
        chain.parse("the sky is blue", {})
    assert str(error.value) == ("triplets: the item has no triplet; rules: 'is' is followed by neither a spatial "
                                "relation nor a verb")


def test_build_parser_and_config_problems(tmp_path):
    path = write_cached_parses(tmp_path / "p.json", {"a dog": CaptionParse(E("dog"))})
    chain = build_parser([{"kind": "cached", "path": str(path)}, {"kind": "rules"}])
    assert [p.name for p in chain.parsers] == ["cached", "rules"]
    assert chain.parse_named("a dog", {})[0] == "cached" and chain.parse_named("a cat", {})[0] == "rules"
    specs = [{"kind": "rule"}, {"kind": "cached", "path": "x.json"}, {"kind": "instruct", "model_path": "nope",
                                                                      "max_new_token": 4, "max_new_tokens": 0},
             {"kind": "cached"}, "rules", {"path": "y"}]
    assert parser_config_problems(specs) == [
        ("parsers.0.kind", "unknown parser kind 'rule' (did you mean rules?) (one of triplets, cached, rules, "
                           "instruct)"),
        ("parsers.1.path", "no such file: x.json (the cached parses JSON, written with write_cached_parses)"),
        ("parsers.2.max_new_token", "unknown key for the instruct parser (did you mean max_new_tokens?)"),
        ("parsers.2.max_new_tokens", "must be >= 1, got 0"),
        ("parsers.2.model_path", "not a local directory: nope (a causal LM saved with save_pretrained, with its "
                                 "tokenizer)"),
        ("parsers.3.path", "missing (the cached parser needs it)"),
        ("parsers.4", "a parser is a mapping {kind: ..., params}, got str"),
        ("parsers.5.kind", "missing (one of triplets, cached, rules, instruct)"),
    ]
    assert parser_config_problems(specs[1:3], check_files=False) == [
        ("parsers.1.max_new_token", "unknown key for the instruct parser (did you mean max_new_tokens?)"),
        ("parsers.1.max_new_tokens", "must be >= 1, got 0")]
    assert parser_config_problems([]) == [("parsers", "give a non-empty list of parsers, e.g. [{kind: triplets}, "
                                                      "{kind: rules}]")]
    with pytest.raises(ParamError, match="parsers.0.kind: unknown parser kind 'rule'"):
        build_parser([{"kind": "rule"}])
