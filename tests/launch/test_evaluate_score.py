"""`launch/evaluate.py score` on subsets of the real question files, with hand-computed summaries."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import evaluate
from tests.conftest import REPO

BENCHMARKS = REPO.parent / "shared" / "benchmarks"
REAL = BENCHMARKS / "vlm4d" / "real_mc.json"
SYNTHETIC = BENCHMARKS / "vlm4d" / "synthetic_mc.json"
MMWORLD_EXAMPLE = BENCHMARKS / "mmworld" / "example.json"


def subset(source: Path, ids: list[str], path: Path) -> Path:
    by_id = {x["id"]: x for x in json.loads(source.read_text())}
    path.write_text(json.dumps([by_id[i] for i in ids]))
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def score(*args: str) -> int:
    return evaluate.main(["score", *map(str, args)])


@pytest.fixture
def vlm4d_subset(tmp_path):
    # real: validation_1, _2, _922 are exo (id <= 922), _923, _924 ego; synthetic: _1 directional ("left"),
    # _2 false positive ("no car there"). Ids 1 and 2 exist in both splits.
    real = subset(REAL, ["validation_1", "validation_2", "validation_922", "validation_923", "validation_924"],
                  tmp_path / "real_subset.json")
    synthetic = subset(SYNTHETIC, ["validation_1", "validation_2"], tmp_path / "synthetic_subset.json")
    real_responses = write_jsonl(tmp_path / "real.jsonl", [
        {"id": "validation_1", "response": "B", "model": "ignored"},  # B = there are no buses: right
        {"id": "validation_2", "response": "The batter hits it right.\nThe final answer is: A"},  # answer C: wrong
        {"id": "validation_922", "response": "It is going further away."},  # option text of B: right
        {"id": "validation_923", "response": "The answer is (A)"},  # A = 4: right
        {"id": "validation_924", "response": "I cannot tell from the video."},  # unparsed: wrong
        {"id": "validation_5000", "response": "A"},  # no such question
    ])
    synthetic_responses = tmp_path / "synthetic.json"  # a JSON list; validation_2 has no response
    synthetic_responses.write_text(json.dumps([{"id": "validation_1", "response": "left"}]))
    return real, synthetic, real_responses, synthetic_responses


def test_vlm4d_summary_by_hand(tmp_path, vlm4d_subset):
    real, synthetic, real_responses, synthetic_responses = vlm4d_subset
    out = tmp_path / "out"
    assert score("--benchmark", "vlm4d", "--questions", f"real={real}", "--questions", f"synthetic={synthetic}",
                 "--responses", f"real={real_responses}", "--responses", f"synthetic={synthetic_responses}",
                 "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = {"real_ego": 50.0, "real_exo": 66.67, "real": 60.0, "synthetic_directional": 100.0,
                "synthetic_fp": 0.0, "synthetic": 50.0, "overall": 57.14}  # 1/2, 2/3, 3/5, 1/1, 0/1, 1/2, 4/7
    assert {k: summary[k] for k in expected} == expected
    assert summary["counts"]["real_exo"] == {"correct": 2, "total": 3}
    assert summary["counts"]["overall"] == {"correct": 4, "total": 7}
    assert summary["unparsed"] == {"count": 1, "ids": [["real", "validation_924"]]}
    assert summary["missing"] == {"count": 1, "ids": [["synthetic", "validation_2"]]}
    assert summary["unknown_ids"] == {"count": 1, "ids": [["real", "validation_5000"]]}

    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 7
    by_key = {(i["split"], i["id"]): i for i in items}
    # same ids, different questions: each split scored against its own answer
    assert by_key[("real", "validation_1")] == {"split": "real", "id": "validation_1", "extracted": "B",
                                                "answer": "B", "correct": True, "method": "rule", "rule": "whole"}
    assert (by_key[("synthetic", "validation_1")]["extracted"], by_key[("synthetic", "validation_1")]["answer"]) \
        == ("A", "A")
    assert by_key[("real", "validation_2")]["correct"] is False
    assert by_key[("synthetic", "validation_2")]["method"] == "missing"
    markdown = (out / "summary.md").read_text()
    assert "| real_exo | 66.67 | 2 | 3 |" in markdown and "| overall | 57.14 | 4 | 7 |" in markdown
    assert not (out / "evalai_submission.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temporary file


def test_a_split_alone_gives_its_keys_and_overall(tmp_path, vlm4d_subset):
    real, _, real_responses, _ = vlm4d_subset
    out = tmp_path / "out"
    assert score("--benchmark", "vlm4d", "--questions", f"real={real}", "--responses", real_responses,
                 "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [k for k in summary if k in ("real_ego", "real_exo", "real", "synthetic_directional", "synthetic_fp",
                                        "synthetic", "overall")] == ["real_ego", "real_exo", "real", "overall"]
    assert summary["overall"] == summary["real"] == 60.0


def test_full_files_count_every_missing_response(tmp_path):
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"split": "real", "id": "validation_1", "response": "B"},
        {"split": "synthetic", "id": "validation_1", "response": "A"},
        {"split": "synthetic", "id": "validation_9999", "response": "A"},
        {"split": "other", "id": "validation_1", "response": "A"}])
    out = tmp_path / "out"
    assert score("--benchmark", "vlm4d", "--questions", REAL, "--questions", SYNTHETIC, "--responses", responses,
                 "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["overall"] == {"correct": 2, "total": 1816}
    assert summary["missing"]["count"] == 1814 and summary["unparsed"]["count"] == 0
    assert summary["unknown_ids"]["ids"] == [["synthetic", "validation_9999"], ["other", "validation_1"]]
    assert summary["counts"]["real_ego"]["total"] == 449 and summary["counts"]["synthetic_fp"]["total"] == 45


def test_mmworld_summary_and_evalai_submission(tmp_path):
    example = json.loads(MMWORLD_EXAMPLE.read_text())[0]
    second = json.loads(json.dumps(example))
    second.update(video_id="sci_vid7", discipline="Science")
    second["questions"].append(dict(second["questions"][0], type="Future Prediction", correct_answer_label="c",
                                    requires_audio=True, requires_visual=False))
    questions = tmp_path / "mmworld.json"
    questions.write_text(json.dumps([example, second]))
    responses = write_jsonl(tmp_path / "responses.jsonl", [
        {"id": "eng_vid1_0", "response": "(a)"},  # right
        {"video_id": "sci_vid7", "question_index": 0, "response": "b"},  # wrong (a)
        {"video_id": "sci_vid7", "question_index": "1", "response": "The answer is C."}])  # right
    out = tmp_path / "out"
    assert score("--benchmark", "mmworld", "--questions", questions, "--responses", responses, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == 66.67
    assert summary["by_discipline"] == {"Science": 50.0, "Tech & Engineering": 100.0}
    assert summary["by_type"] == {"Explanation": 50.0, "Future Prediction": 100.0}
    # flags: accuracy over the questions that have the flag set; no such question -> null
    assert summary["by_flag"] == {"requires_domain_knowledge": None, "requires_audio": 100.0,
                                  "requires_visual": 50.0, "question_only": None}
    assert summary["counts"]["by_flag"]["requires_visual"] == {"correct": 1, "total": 2}
    submission = json.loads((out / "evalai_submission.json").read_text())
    assert submission == {"eng_vid1": {"0": "a"}, "sci_vid7": {"0": "b", "1": "c"}}
    assert "| Science | 50.00 | 1 | 2 |" in (out / "summary.md").read_text()

    elsewhere = tmp_path / "submit" / "mmworld_evalai.json"
    assert score("--benchmark", "mmworld", "--questions", MMWORLD_EXAMPLE, "--responses", responses, "--out",
                 tmp_path / "out2", "--evalai", elsewhere) == 0
    assert json.loads(elsewhere.read_text()) == {"eng_vid1": {"0": "a"}}
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["unknown_ids"]["count"] == 2


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "launch/evaluate.py", "score", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_bad_questions_file_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "real_mc.json"
    bad.write_text('[{"id": "validation_1", "video": "x.mp4"')
    responses = write_jsonl(tmp_path / "r.jsonl", [{"id": "validation_1", "response": "A"}])
    out = tmp_path / "out"
    result = run_cli("--benchmark", "vlm4d", "--questions", bad, "--responses", responses, "--out", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"evaluate.py: {bad}: not valid JSON")
    assert not out.exists()


@pytest.mark.parametrize("make_args, expected", [
    (lambda t, r: ["--questions", f"real={t / 'missing.json'}", "--responses", r], "missing.json: no such file"),
    (lambda t, r: ["--questions", REAL, "--responses", t / "none.jsonl"], "none.jsonl: no such file"),
    (lambda t, r: ["--questions", f"other={REAL}", "--responses", r], "VLM4D splits are real and synthetic"),
    (lambda t, r: ["--questions", t / "r.jsonl", "--responses", r], "cannot tell the split from the file name"),
    (lambda t, r: ["--questions", REAL, "--responses", f"synthetic={r}"], "no questions for split synthetic"),
    (lambda t, r: ["--questions", REAL, "--questions", SYNTHETIC, "--responses", r], "no 'split' field"),
    (lambda t, r: ["--questions", REAL, "--responses", r, "--responses", f"real={r}"], "second response for"),
    (lambda t, r: ["--questions", REAL, "--responses", r, "--evalai", t / "e.json"], "only MMWorld"),
    (lambda t, r: ["--questions", REAL], "required: --responses"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, make_args, expected):
    responses = write_jsonl(tmp_path / "r.jsonl", [{"id": "validation_1", "response": "A"}])
    out = tmp_path / "out"
    assert score("--benchmark", "vlm4d", "--out", out, *make_args(tmp_path, responses)) == 2
    err = capsys.readouterr().err
    assert err.startswith(("evaluate.py: ", "evaluate.py score: ")) and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_bad_response_records_are_named(tmp_path, capsys):
    for records, expected in [([{"id": "validation_1"}], "record 1: no 'response' field"),
                              ([{"response": "A"}], "no 'id' (or 'video_id' + 'question_index') field"),
                              ([{"id": "validation_1", "response": 3}], "'response' is int")]:
        responses = write_jsonl(tmp_path / "r.jsonl", records)
        assert score("--benchmark", "vlm4d", "--questions", REAL, "--responses", responses, "--out",
                     tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"evaluate.py: {responses}: ") and expected in err, err


def test_a_records_split_field_is_ignored_unless_it_names_another_benchmark_split(tmp_path, capsys):
    # exported elsewhere with the dataset's own split name: the split given on the command line applies
    responses = write_jsonl(tmp_path / "r.jsonl", [{"id": "validation_1", "response": "B", "split": "validation"}])
    questions = subset(REAL, ["validation_1"], tmp_path / "real_mc.json")
    assert score("--benchmark", "vlm4d", "--questions", questions, "--responses", f"real={responses}", "--out",
                 tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["real"]["total"] == 1 and summary["missing"]["count"] == 0
    assert summary["unknown_ids"]["count"] == 0
    # a synthetic record in a file given as real would be scored against the real question of the same id
    both = write_jsonl(tmp_path / "both.jsonl", [{"id": "validation_1", "response": "B", "split": "real"},
                                                 {"id": "validation_1", "response": "A", "split": "synthetic"}])
    assert score("--benchmark", "vlm4d", "--questions", questions, "--responses", f"real={both}", "--out",
                 tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record 2: its 'split' is 'synthetic' but the file was given as split 'real'" \
        in err and "without a split" in err, err
    assert not (tmp_path / "out2").exists()


def test_repeated_choice_text_accepts_either_letter(tmp_path):
    questions = subset(REAL, ["validation_633"], tmp_path / "real_mc.json")  # C and D both "away from the camera"
    for response, accuracy in (("D", 100.0), ("C", 100.0), ("away from the camera", 100.0), ("B", 0.0)):
        responses = write_jsonl(tmp_path / "r.jsonl", [{"id": "validation_633", "response": response}])
        assert score("--benchmark", "vlm4d", "--questions", questions, "--responses", responses, "--out",
                     tmp_path / "out") == 0
        assert json.loads((tmp_path / "out" / "summary.json").read_text())["real_exo"] == accuracy, response


def test_explain_prints_the_rule_and_words_that_decided(tmp_path, vlm4d_subset, capsys):
    real, synthetic, real_responses, synthetic_responses = vlm4d_subset
    args = ["--benchmark", "vlm4d", "--questions", f"real={real}", "--questions", f"synthetic={synthetic}",
            "--responses", f"real={real_responses}", "--responses", f"synthetic={synthetic_responses}",
            "--out", tmp_path / "out"]
    assert score(*args, "--explain", "real/validation_2", "--explain", "real/validation_924",
                 "--explain", "synthetic/validation_2") == 0
    out = capsys.readouterr().out
    assert "real/validation_2: final statement: A, from 'final answer is: A'" in out
    assert "scored:   A against C: wrong" in out
    assert "real/validation_924: unparsed: no option, from 'names no option'" in out
    assert "synthetic/validation_2: no response (missing: scored wrong)" in out
    items = [json.loads(line) for line in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    assert {i["id"]: i["rule"] for i in items if i["split"] == "real"}["validation_922"] in ("whole", "option text",
                                                                                              "conclusion")
    assert score(*args, "--explain", "real/validation_77") == 2
    err = capsys.readouterr().err
    assert "--explain real/validation_77: no such question (write SPLIT/ID, e.g. real/validation_1)" in err
