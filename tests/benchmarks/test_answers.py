"""Answer extraction rules, the LLM judge on a tiny locally built causal LM, and scoring with a judge."""

import json

import pytest
import torch

from datamodules.benchmarks.answers import LLMJudge, extract, extract_choice
from datamodules.benchmarks.questions import Question
from datamodules.benchmarks.scoring import score_responses, summarize
from launch import evaluate

torch.set_num_threads(1)

DIRECTIONS = {"A": "right", "B": "left", "C": "not moving", "D": "towards the camera"}
MMWORLD = {"a": "The reason might be to imply the practical uses of Atlas in a commercial setting",
           "b": "To show how professional engineers can be forgetful sometimes",
           "c": "The engineer is controlling the robot manually",
           "d": "The engineer is instructing Atlas to build a house"}
NESTED = {"A": "left", "B": "left and towards the camera", "C": "right", "D": "not moving"}
ROTATION = {"A": "clockwise", "B": "counterclockwise", "C": "not rotating", "D": "moving up"}
CAMERA = {"A": "towards the camera", "B": "away from the camera", "C": "left", "D": "right"}
WEIGHED = ("A) right - the car does not drift that way. B) left - no. C) not moving - the car stays where it is. "
           "D) towards the camera - it keeps its size. So C.")

COT = ("Option A would mean the car moves right and option C that it stays still. Across the frames the car "
       "drifts towards the left edge.\nThe final answer is: B")

CASES = [
    # letters in the usual formats
    ("B", DIRECTIONS, "B"),
    ("(B)", DIRECTIONS, "B"),
    ("B.", DIRECTIONS, "B"),
    ("B: left", DIRECTIONS, "B"),
    ("B) left", DIRECTIONS, "B"),
    ("**B**", DIRECTIONS, "B"),
    ("Option D", DIRECTIONS, "D"),
    ("The answer is B", DIRECTIONS, "B"),
    ("The answer is B.", DIRECTIONS, "B"),
    ("Final Answer: **C**", DIRECTIONS, "C"),
    ("The correct option is D because it comes closer.", DIRECTIONS, "D"),
    ("I choose C", DIRECTIONS, "C"),
    ("A is correct", DIRECTIONS, "A"),
    ("C\nExplanation: the person walks left while the car stays", DIRECTIONS, "C"),
    # chain of thought: the final statement wins over earlier mentions and statements
    (COT, DIRECTIONS, "B"),
    ("At first glance the answer is A. Looking again at the last frames, the final answer is: B", DIRECTIONS, "B"),
    # lower-case letters and MMWorld's a-d keys: returned in the keys' case
    ("b", DIRECTIONS, "B"),
    ("B", MMWORLD, "b"),
    ("(c)", MMWORLD, "c"),
    ("The answer is d", MMWORLD, "d"),
    ("a", MMWORLD, "a"),
    ("the answer is a.", MMWORLD, "a"),
    # an option's text without its letter
    ("left", DIRECTIONS, "B"),
    ("The car is moving to the LEFT.", DIRECTIONS, "B"),
    ("It is not moving at all", DIRECTIONS, "C"),
    ("Answer: not moving", DIRECTIONS, "C"),
    ("To show how professional engineers can be forgetful sometimes.", MMWORLD, "b"),
    ("left and towards the camera", NESTED, "B"),  # "left" inside the longer option does not count
    # traps
    ("A man is walking left", DIRECTIONS, "B"),  # "A" is an article; the text names B
    ("A man is walking", DIRECTIONS, None),
    ("a man is here", MMWORLD, None),
    ("The answer is a person", MMWORLD, None),
    ("A or B", DIRECTIONS, None),
    ("The answer is A or B", DIRECTIONS, None),
    ("Both B and C look plausible", DIRECTIONS, None),
    ("B. The car moves right.", DIRECTIONS, "B"),  # the stated letter, then its (wrong) explanation: a judge takes B
    ("B. right", DIRECTIONS, None),  # letter B, labelled with A's text
    ("The answer is B (right)", DIRECTIONS, None),
    ("It moves left, then right", DIRECTIONS, None),
    ("The answer is E", DIRECTIONS, None),
    ("The answer is not A", DIRECTIONS, None),
    ("B, not A", DIRECTIONS, "B"),
    ("It isn't (A); the answer is B and a car confirms it", DIRECTIONS, "B"),
    ("A right turn is made", DIRECTIONS, "A"),  # no letter: "right" is the text of A
    # negated option texts name nothing
    ("The car is not going left.", DIRECTIONS, None),
    ("The car doesn't turn left; it turns right.", DIRECTIONS, "A"),
    ("The answer is A because the car isn't moving left.", DIRECTIONS, "A"),
    ("A. The car is getting closer, not moving away from the camera.", CAMERA, "A"),
    ("The car does not move towards the camera; it drives away from the camera.", CAMERA, "B"),
    ("It is not moving at all, but it was moving left before", DIRECTIONS, None),  # "but" ends the negation
    # a closing "So X." after weighing every option
    (WEIGHED, DIRECTIONS, "C"),
    ("Therefore, (D).", DIRECTIONS, "D"),
    ("So A is wrong and B is wrong.", DIRECTIONS, None),  # concludes nothing: two letters
    ("So A man walks left", DIRECTIONS, "B"),  # "A" is an article: the text names B
    # spellings of one direction
    ("Counter-clockwise", ROTATION, "B"),
    ("anti-clockwise", ROTATION, "B"),
    ("The fan spins counter clockwise.", ROTATION, "B"),  # not "clockwise" inside it
    ("clockwise", ROTATION, "A"),
    ("It comes toward the camera", DIRECTIONS, "D"),
    # an option text starting with a negation, followed by another option's text, negates that one
    ("The car is not moving left; it is moving right.", DIRECTIONS, "A"),
    ("It is not rotating clockwise. It rotates counterclockwise.", ROTATION, "B"),
    ("The car is not moving, left of the tree.", DIRECTIONS, None),  # the comma ends it: two texts named
    # the options listed back are not an answer
    ("A. right\nB. left\nC. not moving\nD. towards the camera", DIRECTIONS, None),
    ("A) right, B) left", DIRECTIONS, None),
    ("N/A", DIRECTIONS, None),
    # corrections and explanations after the letter
    ("The answer is B. Actually, wait, it's C.", DIRECTIONS, "C"),
    ("B. Wait, no, it is A.", DIRECTIONS, "A"),
    ("I first thought A, but it's actually D.", DIRECTIONS, "D"),
    ("It is A, because the car drives right.", DIRECTIONS, "A"),
    ("It is a car.", DIRECTIONS, None),
    ("The answer is B. Explanation: in the first frames the car is on the right.", DIRECTIONS, "B"),
    ("", DIRECTIONS, None),
    ("   \n", DIRECTIONS, None),
    (None, DIRECTIONS, None),
]


def test_long_responses_do_not_stall_extraction():
    import time

    start = time.perf_counter()  # degenerate generations: long whitespace runs, one option repeated at length
    for response in ("Answer" + "\n" * 5000 + "The car moves left.", "Option" + " \t" * 5000 + "x",
                     "(" + " " * 5000 + "B" + " " * 5000 + ")", "left " * 20000,
                     "left and towards the camera " * 5000):
        extract_choice(response, DIRECTIONS)
    assert time.perf_counter() - start < 3.0  # about 1 s on a loaded 2-core machine; a quadratic scan takes minutes
    assert extract_choice("Answer" + "\n" * 5000 + "The car moves left.", DIRECTIONS) == "B"
    assert extract_choice("(" + " " * 5000 + "B" + " " * 5000 + ")", DIRECTIONS) == "B"


@pytest.mark.parametrize("response, options, expected", CASES)
def test_extract_choice(response, options, expected):
    assert extract_choice(response, options) == expected


# one response per rule, in the order of precedence, with the words it decides on
RULE_CASES = [
    ("$\\boxed{C}$", "whole", "C", "(C)"),
    ("Not moving.", "whole", "C", "Not moving."),
    ("The answer is A. Checking again... **Final answer:** B", "final statement", "B", "Final answer: B"),
    ("Looking at the frames, the answer is D and nothing else.", "answer statement", "D", "answer is D"),
    ("B. The car keeps to the left lane and drifts left.", "leading letter", "B", "B."),
    ("Option A would need it to move right and option D to grow.\nThe hoop stays in place.", "conclusion", "C",
     "The hoop stays in place."),
    ("On reflection option C fits best; I checked every frame.\nThe scene is calm.\nThe clip ends there.",
     "marked letter", "C", "option C"),
    ("It looks like the car, which barely moves, goes left. Other cars pass.\nThe scene is calm.\nThe clip ends.",
     "option text", "B", "left"),
]


@pytest.mark.parametrize("response, rule, choice, evidence", RULE_CASES, ids=[c[1] for c in RULE_CASES])
def test_each_rule_decides_and_says_on_which_words(response, rule, choice, evidence):
    extraction = extract(response, DIRECTIONS)
    assert (extraction.rule, extraction.choice, extraction.evidence) == (rule, choice, evidence)
    assert extraction.explain() == f"{rule}: {choice}, from {evidence!r}"


MECHANISM = {"A": "Push the mug off the table", "B": "Grab the mug by the rim with one finger",
             "C": "Grasp the mug by its handle", "D": "Tilt the mug to pour out the coffee"}


@pytest.mark.parametrize("response, expected", [
    # a closing sentence that states one option's content in other words and inflections decides
    ("Pushing it would spill the coffee. The stable way is grasping the mug by its handle.", "C"),
    ("Option A spills. Option B tips it over. The robot grasps the mug by the handle.", "C"),
    # ... unless it negates or rejects what the option says, or states two options
    ("Pushing it spills. It is not grasping the mug by its handle.", None),
    ("It is grasping the mug by its handle and tilting the mug to pour out the coffee.", None),
    # one content word is too little to restate an option ("mug" is in all four)
    ("The robot looks at the mug.", None),
])
def test_a_closing_sentence_restating_an_option_in_other_words(response, expected):
    assert extract_choice(response, MECHANISM) == expected


def test_a_response_cut_off_mid_sentence_chose_nothing_on_the_way():
    cut = ("1. The glider starts near the right side of the frame.\n2. It passes the tall tree.\n"
           "3. Its size stays the same, so its distance from the camera is")
    assert extract_choice(cut, DIRECTIONS) is None
    assert extract_choice(cut + " constant.", DIRECTIONS) == "A"


def test_an_unparsed_response_says_why():
    assert extract("Either A or C could be right.", DIRECTIONS).explain() == "unparsed: no option, from 'names A and C'"
    assert extract("I cannot tell from these frames.", DIRECTIONS).evidence == "names no option"
    assert extract("The answer is A or B.", DIRECTIONS).evidence.startswith("answer statement names two options")


# ------------------------------------------------------------------------------------------- judge
def build_tiny_judge(directory, always: str | None = None):
    """A 1-layer GPT-2 with a word-level tokenizer, saved locally; `always` forces every generated token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "[EOS]", "A", "B", "C", "D", "a", "b", "c", "d", "none", "option", "the", "is",
             "answer", "Response", "Options", "Question", "Chosen", ":", ".", "left", "right", "moving", "not"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                     pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="[EOS]", model_max_length=512)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=2, eos_token_id=2, pad_token_id=1))
    if always is not None:  # constant final hidden state aligned with one (tied) embedding row
        with torch.no_grad():
            direction = torch.randn(16)
            model.transformer.ln_f.weight.zero_()
            model.transformer.ln_f.bias.copy_(direction)
            model.transformer.wte.weight[words.index(always)] = 10 * direction
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_llm_judge_runs_on_a_random_tiny_model(tmp_path):
    judge = LLMJudge(build_tiny_judge(tmp_path / "random"), max_new_tokens=4)
    for response in ["I think it goes somewhere", "", "B or C", "x" * 10000]:
        letter = judge(response, DIRECTIONS, "Where does the car go?")
        assert letter in (None, *DIRECTIONS) and isinstance(judge.last_reply, str)
        assert letter == extract_choice(judge.last_reply, DIRECTIONS)  # the reply is read by the same rules
    prompt = judge.prompt("the end of a long response" + "y" * 9000, DIRECTIONS, "Where?")
    assert "B. left" in prompt and "Question: Where?" in prompt and len(prompt) < 4600


def test_llm_judge_reply_decides_the_letter(tmp_path):
    judge = LLMJudge(build_tiny_judge(tmp_path / "says_b", always="B"), max_new_tokens=3)
    assert judge("no letter here", DIRECTIONS) == "B"
    assert judge("no letter here", MMWORLD) == "b"


def test_score_uses_the_judge_only_for_unparsed_responses(tmp_path):
    questions = [Question("vlm4d", "synthetic", f"validation_{i}", "v.mp4", "Where?", DIRECTIONS, "B", "left",
                          ("B",), {"question_type": "multiple-choice", "group": "directional"}) for i in (1, 2, 3)]
    calls = []

    def judge(response, options, question):
        calls.append(response)
        return "B"

    responses = {("synthetic", "validation_1"): "A", ("synthetic", "validation_2"): "hard to say"}
    items = score_responses(questions, responses, judge=judge)
    assert [(i.extracted, i.method, i.correct) for i in items] == [("A", "rule", False), ("B", "judge", True),
                                                                   (None, "missing", False)]
    assert calls == ["hard to say"]
    summary = summarize("vlm4d", items)
    assert summary["judged"] == {"count": 1, "ids": [["synthetic", "validation_2"]]}
    assert summary["synthetic"] == 33.33 and summary["missing"]["count"] == 1


def test_score_cli_with_judge(tmp_path, capsys):
    model = build_tiny_judge(tmp_path / "says_b", always="B")
    questions = tmp_path / "synthetic_mc.json"
    questions.write_text(json.dumps([{"id": "validation_1", "video": "videos_synthetic/s.mp4", "question": "Where?",
                                      "question_type": "multiple-choice", "choices": DIRECTIONS, "answer": "left"}]))
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"id": "validation_1", "response": "hard to say"}) + "\n")
    out = tmp_path / "out"
    assert evaluate.main(["score", "--benchmark", "vlm4d", "--questions", str(questions), "--responses",
                          str(responses), "--out", str(out), "--judge", str(model)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] == 100.0 and summary["judged"]["count"] == 1 and summary["unparsed"]["count"] == 0
    assert json.loads((out / "items.jsonl").read_text())["method"] == "judge"
    capsys.readouterr()  # transformers' progress bars
    assert evaluate.main(["score", "--benchmark", "vlm4d", "--questions", str(questions), "--responses",
                          str(responses), "--out", str(out), "--judge", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evaluate.py: --judge {tmp_path / 'nothing'}: no such directory") and err.count("\n") == 1
