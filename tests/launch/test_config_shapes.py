"""What the checker knows of a parameter beyond its Python type (datamodules/param_types.py): the keys inside
mapping-valued parameters, and whether a model a config names can be loaded; and how it names the types it expected.
All of it before anything runs, one line per problem, exit code 2."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import yaml
from huggingface_hub import constants
from huggingface_hub.utils import validate_repo_id

from launch import config
from datamodules.param_types import model_source_problem
from launch.config import describe_type
from tests.conftest import REPO, run_fit

TINY_CPL = REPO / "configs" / "cpl" / "tiny.yaml"


@pytest.fixture
def cpl_args(tmp_path) -> list[str]:
    """configs/cpl/tiny.yaml pointed at directories that exist (a dry run builds nothing, so they may be empty)."""
    for name in ("clip", "scorer", "train", "base", "new"):
        (tmp_path / name).mkdir()
    return ["--config", str(TINY_CPL), "--dry-run", f"run.root={tmp_path / 'runs'}",
            f"model.params.clip.pretrained={tmp_path / 'clip'}", f"model.params.scorer.model={tmp_path / 'scorer'}",
            f"data.params.train={tmp_path / 'train'}", f"data.params.val.base={tmp_path / 'base'}",
            f"data.params.val.new={tmp_path / 'new'}"]


def usage_lines(result) -> list[str]:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_shipped_dry_run_passes(cpl_args):
    result = run_fit(*cpl_args)
    assert result.returncode == 0, result.stderr


def test_keys_inside_mapping_parameters_are_checked_with_the_rest(cpl_args, tmp_path):
    result = run_fit(*cpl_args, f"model.params.clip.pretraned={tmp_path}", "model.params.scorer.modle=x",
                     "model.params.scorer.num_layers=two", "model.params.variant=coop")
    lines = usage_lines(result)
    assert lines == ["command line: model.params.clip.pretraned: unknown key (did you mean pretrained?)",
                     "command line: model.params.scorer.num_layers: expected int or null, got str 'two'",
                     "command line: model.params.scorer.modle: unknown key (did you mean model?)"], lines


def tiny_copy(tmp_path: Path, section: str, key: str, value) -> Path:
    """configs/cpl/tiny.yaml with one parameter replaced whole (a command-line mapping would be merged into it)."""
    data = yaml.safe_load(TINY_CPL.read_text())
    data["base"] = [str((TINY_CPL.parent / b).resolve()) for b in data["base"]]
    data[section]["params"][key] = value
    path = tmp_path / f"{section}-{key}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_config(args: list[str], config: Path, drop: str = "") -> list[str]:
    return ["--config", str(config), *(a for a in args[2:] if not drop or not a.startswith(drop))]


def test_a_validation_set_named_like_base_or_new_but_not_is_reported(cpl_args, tmp_path):
    config = tiny_copy(tmp_path, "data", "val", {"bsae": str(tmp_path / "base"), "new": str(tmp_path / "new"),
                                                 "extra": str(tmp_path / "base")})
    lines = usage_lines(run_fit(*with_config(cpl_args, config, drop="data.params.val.")))
    assert lines == [f"{config}: data.params.val.bsae: 'bsae' looks like base, which is missing (base-to-new reads the "
                     f"sets named base and new): rename it, or give it a name unlike both"], lines


def test_a_missing_required_key_inside_a_mapping(cpl_args, tmp_path):
    config = tiny_copy(tmp_path, "model", "scorer", {"num_layers": 1})
    lines = usage_lines(run_fit(*with_config(cpl_args, config, drop="model.params.scorer.")))
    assert lines == [f"{config}: model.params.scorer.model: missing required key"], lines


def test_literal_and_optional_mismatches_name_what_is_allowed(cpl_args):
    lines = usage_lines(run_fit(*cpl_args, "model.params.variant=coopp", "model.params.k=x"))
    assert lines == ["command line: model.params.variant: expected one of coop, cocoop, cpl, got 'coopp'",
                     "command line: model.params.k: expected int or null, got str 'x'"]


@pytest.mark.parametrize("annotation, words", [
    ("int | None", "int or null"), ("typing.Literal['a', 'b']", "one of a, b"), ("list[str]", "list of str"),
    ("dict[str, float]", "mapping of str to float"), ("typing.Optional[typing.Literal[1, 2]]", "one of 1, 2 or null")])
def test_describe_type(annotation, words):
    import typing  # noqa: F401 (the annotations above name it)

    assert describe_type(eval(annotation)) == words


# -- model sources -----------------------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch):
    """The hub as the checker sees it: calls are recorded; `answer` decides what model_info does."""
    calls: list[str] = []
    state = {"answer": None, "cached": None}

    def model_info(repo_id, timeout=None):
        calls.append(repo_id)
        if state["answer"] is not None:
            raise state["answer"]
        assert timeout is not None and timeout <= 10, "the lookup must be short"

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    def try_to_load_from_cache(repo_id, filename):
        validate_repo_id(repo_id)  # as the real one does: HFValidationError for what cannot be an id
        return state["cached"]

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", try_to_load_from_cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    model_source_problem.cache_clear()
    yield {"calls": calls, "state": state}
    model_source_problem.cache_clear()


def test_a_local_directory_is_looked_up_nowhere(hub, tmp_path):
    assert model_source_problem(str(tmp_path)) is None and hub["calls"] == []


@pytest.mark.parametrize("value", ["/no/such/dir", "./nothere", "../nothere", "~/nothere-worldbridge"])
def test_a_value_that_can_only_be_a_path_fails_without_a_lookup(hub, value):
    assert model_source_problem(value) == f"'{value}' is not a local directory" and hub["calls"] == []


def test_a_file_is_not_a_model_directory(hub, tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    assert model_source_problem(str(tmp_path / "model.bin")).endswith("is not a local directory (it is a file)")


def test_a_hub_id_in_the_local_cache_needs_no_lookup(hub):
    hub["state"]["cached"] = "/cache/models--openai--clip/snapshots/abc/config.json"
    assert model_source_problem("openai/clip-vit-base-patch16") is None and hub["calls"] == []


def test_a_hub_id_is_asked_once_and_what_the_hub_says_is_the_line(hub):
    assert model_source_problem("openai/clip-vit-base-patch16") is None
    assert model_source_problem("openai/clip-vit-base-patch16") is None and hub["calls"] == ["openai/clip-vit-base-patch16"]
    hub["state"]["answer"] = ConnectionError("Name or service not known")
    assert model_source_problem("runs/nothere") == ("'runs/nothere' is not a local directory, not in the Hugging "
                                                    "Face cache, and the hub is unreachable")
    from huggingface_hub.errors import RepositoryNotFoundError

    not_found = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response
    Exception.__init__(not_found, "404 Repository Not Found")
    hub["state"]["answer"] = not_found
    assert model_source_problem("someone/no-such-model") == ("'someone/no-such-model' is not a local directory and "
                                                             "the Hugging Face hub has no model of that name")


def test_offline_means_no_lookup(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert "hub lookups are off" in model_source_problem("openai/clip-vit-base-patch16") and hub["calls"] == []


def test_an_impossible_hub_id(hub):
    assert model_source_problem("a/b/c/d") == "'a/b/c/d' is neither a local directory nor a Hugging Face hub id"


def test_a_missing_model_path_in_a_fit_is_one_quick_line(cpl_args, tmp_path):
    """The reproduced case: a relative path that does not exist (it could be a hub id: it has a slash)."""
    import time

    started = time.monotonic()
    lines = usage_lines(run_fit(*cpl_args, "model.params.clip.pretrained=runs/nothere"))
    assert time.monotonic() - started < 60
    assert len(lines) == 1 and lines[0].startswith("command line: model.params.clip.pretrained: 'runs/nothere' is "
                                                   "not a local directory"), lines
    assert not (tmp_path / "runs").exists()


def test_models_are_not_looked_up_when_files_are_not_checked(hub):
    loaded = config.load_config(TINY_CPL)
    loaded.check_files = False
    issues: list = []
    config.check_target_node(loaded.cfg.model, "model", loaded, issues)
    assert issues == [] and hub["calls"] == []


def test_the_scorer_model_is_checked_only_where_the_variant_uses_it(cpl_args, tmp_path):
    lines = usage_lines(run_fit(*cpl_args, f"model.params.scorer.model={tmp_path / 'no-scorer'}"))
    assert lines == [f"command line: model.params.scorer.model: '{tmp_path / 'no-scorer'}' is not a local directory"]
    result = run_fit(*cpl_args, f"model.params.scorer.model={tmp_path / 'no-scorer'}", "model.params.variant=coop")
    assert result.returncode == 0, result.stderr  # coop never loads the scorer
