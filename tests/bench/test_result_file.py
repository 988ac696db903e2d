"""bench/result_file.py, the one writer of bench/results/NAME.json: what it refuses (and then writes nothing), what it
fills in, target met / missed, and every committed result file that claims its layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.result_file import (MIN_SAMPLES, RESULTS, SCHEMA, check, claims_schema, problems, read_result, target_met,
                               write_result)
from datamodules.errors import ParamError

# bench/results files that are not performance results, and why (they do not claim the schema)
NOT_RESULTS = {"deepspeed_gpu.json": "bench/deepspeed/check.py's GPU correctness report (pass/fail per strategy)"}
ARGV = ["bench/cpl.py", "--size", "small", "--note", "two words"]


def good(**changes) -> dict:
    """write_result's arguments for a valid result, with `changes` (None: not given)."""
    kwargs = dict(figures={"ours_ms": 3.0, "reference_ms": 2.0}, ratios={"ours_over_reference": 1.5},
                  targets={"ours_over_reference": "<= 1.5"},
                  samples={"ours_ms": [3.5, 3.0, 2.0], "reference_ms": [2.0, 1.0, 2.5, 2.0],
                           "ours_each_step_s": [[0.1, 0.2], [0.3]]},
                  settings={"repeats": 3, "warmup": 2}, notes="a note", argv=ARGV)
    return {**kwargs, **changes}


def refused(tmp_path: Path, *expected: str, **changes) -> str:
    """write_result with `changes` raises ParamError whose text holds every `expected`, and writes nothing."""
    out = tmp_path / "results"
    with pytest.raises(ParamError) as info:
        write_result("bad", directory=out, **good(**changes))
    message = str(info.value)
    for text in expected:
        assert text in message
    assert not out.exists() or list(out.iterdir()) == []
    return message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_figure_and_ratio_refused(tmp_path, value):
    refused(tmp_path, "figures.ours_ms: must be a finite number", figures={"ours_ms": value, "reference_ms": 2.0},
            samples=None)
    refused(tmp_path, "ratios.ours_over_reference: must be a finite number",
            ratios={"ours_over_reference": value})


@pytest.mark.parametrize("value", ["3.0", None, True, [3.0], {"ms": 3.0}])
def test_non_numeric_figure_and_ratio_refused(tmp_path, value):
    refused(tmp_path, "figures.ours_ms: must be a finite number", figures={"ours_ms": value, "reference_ms": 2.0},
            samples=None)
    refused(tmp_path, "ratios.ours_over_reference: must be a finite number",
            ratios={"ours_over_reference": value})


def test_target_naming_no_ratio_refused(tmp_path):
    message = refused(tmp_path, "targets.ours_over_plain: names no ratio (ratios: ours_over_reference)",
                      targets={"ours_over_plain": "<= 1.5"})
    assert "target_met" not in message  # the cause is reported, not its consequence


@pytest.mark.parametrize("target", ["1.5", "<= ", "=< 1.5", "== 1.5", "<= 1.5x", "<= nan", "<= inf", "<= 1e999",
                                    1.5, None, ["<=", 1.5]])
def test_malformed_target_refused(tmp_path, target):
    refused(tmp_path, "targets.ours_over_reference: malformed target", "'<= 1.5'",
            targets={"ours_over_reference": target})


@pytest.mark.parametrize("field", ["figures", "ratios", "targets"])
def test_missing_field_refused(tmp_path, field):
    refused(tmp_path, f"{field}: missing", **{field: None})


@pytest.mark.parametrize("field", ["figures", "ratios", "targets", "samples", "settings"])
def test_field_of_the_wrong_kind_refused(tmp_path, field):
    refused(tmp_path, f"{field}: must be", **{field: [1.0, 2.0]})


def test_empty_figures_refused(tmp_path):
    refused(tmp_path, "figures: must hold at least one figure", figures={}, ratios={}, targets={}, samples=None)


def test_figure_that_is_not_the_median_of_its_samples_refused(tmp_path):
    refused(tmp_path, "figures.ours_ms: must be the median of samples.ours_ms (3.0), got 3.1",
            figures={"ours_ms": 3.1, "reference_ms": 2.0})


def test_median_of_too_few_samples_refused(tmp_path):
    refused(tmp_path, f"{MIN_SAMPLES - 1} samples, need at least {MIN_SAMPLES}",
            samples={"ours_ms": [3.0] * (MIN_SAMPLES - 1)})


@pytest.mark.parametrize("values", [[], [1.0, float("nan"), 2.0], [1.0, "2.0", 3.0], [[1.0], []], 3.0])
def test_bad_samples_refused(tmp_path, values):
    refused(tmp_path, "samples.ours_each_step_s: must be a non-empty list of finite numbers",
            samples={"ours_each_step_s": values})


def test_non_json_settings_and_bad_notes_refused(tmp_path):
    refused(tmp_path, "settings: must be plain JSON", settings={"lr": float("nan")})
    refused(tmp_path, "settings: must be plain JSON", settings={"path": Path("x")})
    refused(tmp_path, "notes: must be a non-empty string", notes=" ")


@pytest.mark.parametrize("name", ["", "a/b", "../x", "x.json", ".hidden", 3])
def test_bad_name_refused(tmp_path, name):
    out = tmp_path / "results"
    with pytest.raises(ParamError, match="name: must be a file name"):
        write_result(name, directory=out, **good())
    assert not out.exists()


def test_unknown_library_refused(tmp_path):
    refused(tmp_path, "libraries.no-such-distribution-here: no installed distribution",
            libraries=("no-such-distribution-here",))


def test_every_problem_reported_at_once(tmp_path):
    message = refused(tmp_path, "figures.ours_ms", "ratios.ours_over_reference", "targets.x",
                      figures={"ours_ms": float("nan"), "reference_ms": 2.0}, samples=None,
                      ratios={"ours_over_reference": "1"}, targets={"x": "<= 1"})
    assert len(message.split("; ")) == 3


def test_refused_write_leaves_the_existing_file_as_it_was(tmp_path):
    write_result("r", directory=tmp_path, **good())
    before = (tmp_path / "r.json").read_bytes()
    with pytest.raises(ParamError):
        write_result("r", directory=tmp_path, **good(ratios={"ours_over_reference": float("nan")}))
    assert (tmp_path / "r.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left either


def test_good_result_round_trips(tmp_path, capsys):
    record = write_result("cpl_small", directory=tmp_path, libraries=("lightning", "numpy"), **good())
    path = tmp_path / "cpl_small.json"
    assert json.loads(path.read_text()) == record == read_result(path)
    assert record["schema"] == SCHEMA
    assert record["command"] == "python bench/cpl.py --size small --note 'two words'"
    assert set(record["versions"]) == {"python", "torch", "lightning", "numpy"}
    assert all(isinstance(v, str) and v for v in record["versions"].values())
    assert record["machine"]["device"] == "cpu"
    assert isinstance(record["machine"]["cpus"], int) and record["machine"]["torch_threads"] >= 1
    assert record["figures"] == good()["figures"] and record["samples"] == good()["samples"]
    assert record["settings"] == {"repeats": 3, "warmup": 2} and record["notes"] == "a note"
    assert record["target_met"] == {"ours_over_reference": True}
    assert "checks" not in record  # an optional field not given is left out, not written as null
    assert list(record)[:5] == ["schema", "command", "machine", "versions", "settings"]
    assert "ours_over_reference = 1.5 (target <= 1.5: met)" in capsys.readouterr().out


def test_command_names_a_script_outside_the_repository_as_given(tmp_path):
    record = write_result("r", directory=tmp_path, **good(argv=["/elsewhere/b.py", "-x"]))
    assert record["command"] == "python /elsewhere/b.py -x"


@pytest.mark.parametrize("ratio, target, met", [
    (1.5, "<= 1.5", True), (1.5000001, "<= 1.5", False), (1.4999999, "<= 1.5", True),
    (1.5, "< 1.5", False), (1.4999999, "< 1.5", True),
    (1.5, ">= 1.5", True), (1.4999999, ">= 1.5", False),
    (1.5, "> 1.5", False), (1.5000001, "> 1.5", True),
    (1.25, "<=1.25", True), (0.9, "  <=  1  ", True), (2.0, "<= 1e0", False), (40.0, ">= 10", True),
])
def test_target_met_or_missed(ratio, target, met):
    assert target_met(ratio, target) is met


def test_missed_target_is_written_as_missed(tmp_path, capsys):
    record = write_result("r", directory=tmp_path, **good(ratios={"ours_over_reference": 1.5000001, "other": 2.0}))
    assert record["target_met"] == {"ours_over_reference": False}
    assert json.loads((tmp_path / "r.json").read_text())["target_met"] == {"ours_over_reference": False}
    out = capsys.readouterr().out
    assert "ours_over_reference = 1.5 (target <= 1.5: MISSED)\n  other = 2\n" in out


def test_no_targets_is_a_result_too(tmp_path):
    record = write_result("r", directory=tmp_path, **good(targets={}))
    assert record["targets"] == {} and record["target_met"] == {}


def test_read_file_refused_when_target_met_disagrees_with_its_ratio(tmp_path):
    record = write_result("r", directory=tmp_path, **good())
    for met in ({"ours_over_reference": False}, {}, {"ours_over_reference": "yes"}):
        (tmp_path / "r.json").write_text(json.dumps({**record, "target_met": met}))
        with pytest.raises(ParamError, match=r"r\.json: target_met"):
            read_result(tmp_path / "r.json")


def test_record_check_refuses_missing_unknown_and_wrong_fields(tmp_path):
    record = write_result("r", directory=tmp_path, **good())
    check(record)
    for field in ("schema", "command", "machine", "versions", "figures", "ratios", "targets", "target_met"):
        assert (field, "missing") in problems({k: v for k, v in record.items() if k != field})
    assert problems({**record, "setup": {}})[0][0] == "setup"  # one name per thing: settings, not setup
    assert problems({**record, "schema": "other/2"}) == [("schema", f"must be {SCHEMA!r}, got 'other/2'")]
    machine = {k: v for k, v in record["machine"].items() if k != "platform"}
    assert problems({**record, "machine": machine}) == [("machine.platform", "missing")]
    assert problems({**record, "machine": "x86_64, 2 CPUs"}) == [("machine", "must be an object, got str")]
    assert problems({**record, "machine": {**machine, "platform": ""}})[0][0] == "machine.platform"
    assert problems({**record, "versions": {"python": "3.11"}}) == [("versions.torch", "missing")]
    assert problems({**record, "command": ""}) == [("command", "must be a non-empty string, got ''")]


def committed() -> list[Path]:
    return sorted(RESULTS.glob("*.json"))


def test_committed_results_are_there():
    names = {p.name for p in committed()}
    assert {"cpl_coverage.json", "data.json", "overhead.json", "cpl_small_cpu_batch4_classes50.json"} <= names


@pytest.mark.parametrize("path", committed(), ids=lambda p: p.name)
def test_committed_result_validates(path):
    record = json.loads(path.read_text())
    if not claims_schema(record):
        assert path.name in NOT_RESULTS, f"{path.name} neither claims {SCHEMA!r} nor is listed in NOT_RESULTS"
        return
    record = read_result(path)
    for name, met in record["target_met"].items():  # a missed target stays in the file, as missed
        assert met is target_met(record["ratios"][name], record["targets"][name])
        assert math.isfinite(record["ratios"][name])
