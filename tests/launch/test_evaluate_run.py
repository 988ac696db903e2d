"""`launch/evaluate.py run` and what it runs: responders (a tiny VLM, a responses file), the resumable runner, the
config checks. Videos are 8-frame 32x32 mp4s written here; VLM4D-format questions refer to them by URL."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from datamodules.benchmarks.questions import BenchmarkFileError, Question, load_vlm4d
from launch import evaluate
from launch.benchmark_run import RESPONSES, RunInterrupted, read_run_responses, run_benchmark
from lightning_modules.responders import ResponderError, ResponsesFile, TransformersVLM, question_prompt
from tests.tiny_vlm import build_tiny_vlm, has_torchvision

torch.set_num_threads(1)

URL = "https://huggingface.co/datasets/shijiezhou/VLM4D/resolve/main/videos_synthetic/{}.mp4"
DIRECTIONS = {"A": "left", "B": "right", "C": "up", "D": "down"}
# (id, video, answer text): with every response "B", validation_1, _3 and _4 are right; _5's video does not exist,
# _6's is not a video; _2 and _3 share a video.
QUESTIONS = [("validation_1", "v0", "right"), ("validation_2", "v1", "left"), ("validation_3", "v1", "right"),
             ("validation_4", "v2", "no car there"), ("validation_5", "absent", "right"),
             ("validation_6", "broken", "right"), ("validation_7", "v3", "down")]
PRESENT = ["validation_1", "validation_2", "validation_3", "validation_4", "validation_7"]
CORRECT_IF_B = {"validation_1", "validation_3", "validation_4"}


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bench")
    videos = root / "videos"
    rng = np.random.default_rng(0)
    for name in ("v0", "v1", "v2", "v3"):
        write_mp4(videos / "videos_synthetic" / f"{name}.mp4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    (videos / "videos_synthetic" / "broken.mp4").write_bytes(b"not a video at all" * 10)
    entries = []
    for qid, video, answer in QUESTIONS:
        choices = dict(DIRECTIONS) if answer != "no car there" else {**DIRECTIONS, "B": "no car there"}
        entries.append({"id": qid, "video": URL.format(video), "question_type": "multiple-choice",
                        "question": "What direction is the car moving?", "choices": choices, "answer": answer})
    questions = root / "synthetic_mc.json"
    questions.write_text(json.dumps(entries))
    return {"root": root, "videos": videos, "questions": questions}


@pytest.fixture(scope="module")
def vlm_b(tmp_path_factory) -> Path:
    """Tiny LLaVA whose greedy answer is always 'B'."""
    return build_tiny_vlm(tmp_path_factory.mktemp("llava_b"), family="llava", always="B")


@pytest.fixture(scope="module")
def vlm_random(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("llava_random"), family="llava")


def write_config(path: Path, bench: dict, model: dict, out: Path, **benchmark) -> Path:
    config = {"benchmark": {"name": "vlm4d", "questions": {"synthetic": str(bench["questions"])},
                            "video_root": str(bench["videos"]), "num_frames": 8, **benchmark},
              "model": model, "judge": None, "out": str(out)}
    path.write_text(yaml.safe_dump(config))
    return path


def vlm_model(directory: Path, **params) -> dict:
    return {"target": "lightning_modules.responders.TransformersVLM",
            "params": {"model": str(directory), "frames_as": "images", "batch_size": 2, "max_new_tokens": 4, **params}}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Counting:
    """A responder answering 'B' that counts the questions it was asked and can fail on its n-th call."""

    needs_frames = True

    def __init__(self, batch_size: int = 2, fail_on_call: int | None = None):
        self.batch_size, self.fail_on_call, self.calls, self.asked = batch_size, fail_on_call, 0, []

    def respond(self, questions, frames):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        assert all(f.dtype == np.uint8 and f.shape == (8, 32, 32, 3) for f in frames)
        self.asked += [q.id for q in questions]
        return ["B"] * len(questions)


# ------------------------------------------------------------------------------------------- end to end
def test_run_end_to_end_with_a_tiny_vlm(bench, vlm_b, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", bench, vlm_model(vlm_b), out)
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 0

    responses = lines(out / RESPONSES)
    assert sorted(r["id"] for r in responses) == PRESENT  # missing / undecodable videos are not sent
    assert {r["split"] for r in responses} == {"synthetic"} and {r["response"] for r in responses} == {"B"}
    items = lines(out / "items.jsonl")
    assert [i["id"] for i in items] == [q[0] for q in QUESTIONS]  # every question scored
    assert {i["id"] for i in items if i["correct"]} == CORRECT_IF_B
    assert {i["id"]: i["method"] for i in items}["validation_5"] == "missing"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["overall"] == {"correct": 3, "total": 7}
    assert summary["overall"] == round(100 * 3 / 7, 2)
    assert summary["synthetic_fp"] == 100.0 and summary["counts"]["synthetic_directional"]["total"] == 6
    assert summary["missing"]["count"] == 2
    videos = summary["videos"]
    assert videos["counts"]["missing"] == 1 and videos["counts"]["undecodable"] == 1
    assert videos["missing_videos"] == ["videos_synthetic/absent.mp4"]
    assert list(videos["undecodable_videos"]) == ["videos_synthetic/broken.mp4"]
    assert summary["run"]["generated_now"] == 5 and summary["run"]["reused"] == 0
    assert "| overall | 42.86 | 3 | 7 |" in (out / "summary.md").read_text()
    assert "1 missing, 1 undecodable" in capsys.readouterr().out

    # a second run answers nothing again and gives the same scores
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["run"]["generated_now"] == 0 and again["run"]["reused"] == 5
    assert again["counts"] == summary["counts"] and len(lines(out / RESPONSES)) == 5


def test_run_end_to_end_with_a_tiny_clip_scorer(bench, tmp_path):
    from datamodules.benchmarks.frames import sample_frames
    from lightning_modules.clip_pretrain.random_clip import write_random_clip
    from lightning_modules.clip_scorer import ClipScorer

    clip = write_random_clip(tmp_path / "clip", image_size=16)
    out = tmp_path / "out"
    model = {"target": "lightning_modules.clip_scorer.ClipScorer",
             "params": {"pretrained": str(clip), "device": "cpu"}}
    assert evaluate.main(["run", "--config", str(write_config(tmp_path / "run.yaml", bench, model, out)),
                          "--no-progress"]) == 0
    responses = {r["id"]: r["response"] for r in lines(out / RESPONSES)}
    assert sorted(responses) == PRESENT
    # the run's answers are the scorer's own on the same frames: the option nearest the mean frame feature
    scorer = ClipScorer(pretrained=str(clip), device="cpu")
    questions = {q.id: q for q in load_vlm4d(bench["questions"], "synthetic")}
    for qid, response in responses.items():
        frames = sample_frames(bench["videos"] / questions[qid].video, 8)
        scores = scorer.option_scores([questions[qid]], [frames])[0]
        assert response == max(scores, key=scores.get)
    items = {i["id"]: i for i in lines(out / "items.jsonl")}
    correct = sum(questions[q].answer_letter == r for q, r in responses.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["overall"] == {"correct": correct, "total": 7}
    assert all(items[q]["method"] == "rule" for q in PRESENT)


def test_changed_settings_refuse_an_old_run_directory(bench, vlm_b, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", bench, vlm_model(vlm_b), out, limit=1)
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 0
    # batch size and device do not change answers; the prompt does
    assert evaluate.main(["run", "--config", str(config), "--no-progress", "model.params.batch_size=1"]) == 0
    capsys.readouterr()
    assert evaluate.main(["run", "--config", str(config), "--no-progress", "model.params.prompt=cot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different run" in err[0] and "responder" in err[0]


def test_a_run_that_failed_before_answering_does_not_lock_its_directory(bench, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "validation_1"}\n')  # no response field: the responder cannot be built
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "validation_1", "response": "B"}) + "\n")
    out = tmp_path / "out"
    model = {"target": "lightning_modules.responders.ResponsesFile", "params": {"path": str(bad),
                                                                                     "split": "synthetic"}}
    config = write_config(tmp_path / "run.yaml", bench, model, out)
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 2
    assert "no 'response' field" in capsys.readouterr().err and not (out / RESPONSES).exists()
    # the fixed setting is a different run, but nothing was answered under the old one
    assert evaluate.main(["run", "--config", str(config), "--no-progress", f"model.params.path={good}"]) == 0
    assert json.loads((out / "run.json").read_text())["responder"]["params"]["path"] == str(good)
    assert lines(out / RESPONSES)[0]["response"] == "B"


# ------------------------------------------------------------------------------------------- resuming
def test_interrupted_run_resumes_without_regenerating(bench, tmp_path):
    questions = load_vlm4d(bench["questions"], "synthetic")
    out = tmp_path / "out"
    first = Counting(batch_size=2, fail_on_call=2)
    with pytest.raises(RunInterrupted) as interrupted:
        run_benchmark(questions, first, bench["videos"], out, progress=False)
    assert interrupted.value.answered == 2 and "run the same command again" in str(interrupted.value)
    saved = lines(out / RESPONSES)
    assert [r["id"] for r in saved] == first.asked == PRESENT[:2]
    assert not (out / "summary.json").exists()

    second = Counting(batch_size=2)
    summary = run_benchmark(questions, second, bench["videos"], out, progress=False)
    assert second.asked == PRESENT[2:]  # only the rest
    assert sorted(r["id"] for r in lines(out / RESPONSES)) == PRESENT
    assert summary["run"] == {**summary["run"], "generated_now": 3, "reused": 2, "answered": 5}
    assert summary["counts"]["overall"] == {"correct": 3, "total": 7}


def test_torn_last_line_is_dropped_and_asked_again(bench, tmp_path):
    questions = load_vlm4d(bench["questions"], "synthetic")
    out = tmp_path / "out"
    run_benchmark(questions, Counting(), bench["videos"], out, progress=False)
    path = out / RESPONSES
    whole = path.read_bytes()
    path.write_bytes(whole[:-9])  # killed while writing the last line
    assert len(read_run_responses(path, repair=False)) == 4

    again = Counting()
    summary = run_benchmark(questions, again, bench["videos"], out, progress=False)
    assert again.asked == [PRESENT[-1]]
    assert path.read_bytes() == whole  # the torn bytes were cut before appending
    assert summary["counts"]["overall"]["correct"] == 3


def test_a_question_changed_under_its_id_is_refused_not_reused(bench, tmp_path):
    questions = load_vlm4d(bench["questions"], "synthetic")
    out = tmp_path / "out"
    run_benchmark(questions, Counting(), bench["videos"], out, progress=False)
    before = (out / RESPONSES).read_bytes()
    digests = {q.id: q.asked_digest for q in questions}
    assert [r["asked"] for r in lines(out / RESPONSES)] == [digests[qid] for qid in PRESENT]
    again = Counting()
    run_benchmark(questions[:3], again, bench["videos"], out, progress=False)  # a subset of the same questions
    assert again.asked == []

    edited = [dataclasses.replace(q, question="Which way does the car turn?") if q.id == "validation_2" else q
              for q in questions]
    with pytest.raises(BenchmarkFileError, match=r"1 responses answer questions that have changed since "
                                                 r"\(e\.g\. synthetic/validation_2"):
        run_benchmark(edited, Counting(), bench["videos"], out, progress=False)
    assert (out / RESPONSES).read_bytes() == before


def test_a_damaged_line_before_the_end_is_an_error(bench, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / RESPONSES).write_text('{"split": "synthetic", "id": "validation_1", "response": "B"}\n{oops\n'
                                 '{"split": "synthetic", "id": "validation_2", "response": "B"}\n')
    with pytest.raises(Exception, match="line 2"):
        run_benchmark(load_vlm4d(bench["questions"], "synthetic"), Counting(), bench["videos"], out, progress=False)


def test_sigterm_stops_between_batches_and_the_run_resumes(bench, tmp_path, monkeypatch, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": qid, "response": "B"}) + "\n" for qid, _, _ in QUESTIONS))
    model = {"target": "lightning_modules.responders.ResponsesFile",
             "params": {"path": str(answers), "split": "synthetic"}}
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", bench, model, out)
    asked, kill_at = [], {"question": 3}
    respond = ResponsesFile.respond

    def terminated_on_third_call(self, questions, frames=()):
        asked.extend(q.id for q in questions)
        if len(asked) == kill_at["question"]:
            os.kill(os.getpid(), signal.SIGTERM)  # as scancel does; the handler turns it into an interrupt
        return respond(self, questions, frames)

    monkeypatch.setattr(ResponsesFile, "respond", terminated_on_third_call)
    handler = signal.getsignal(signal.SIGTERM)
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 130
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert "run the same command again to resume" in capsys.readouterr().err
    saved = [r["id"] for r in lines(out / RESPONSES)]
    assert saved == asked[:len(saved)] and 2 <= len(saved) <= 3

    asked.clear()
    kill_at["question"] = None
    assert evaluate.main(["run", "--config", str(config), "--no-progress"]) == 0
    assert asked == [q[0] for q in QUESTIONS][len(saved):]  # a file responder needs no videos: all are asked
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["overall"] == {"correct": 5, "total": 7}  # _5 and _6 answered from the file too


# ------------------------------------------------------------------------------------------- responders
def test_responses_file_responder(bench, tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(r) for r in [
        {"id": "validation_1", "response": "The answer is B."}, {"id": "validation_2", "response": None},
        {"id": "validation_3", "response": "(A)"}, {"id": "validation_99", "response": "C"},
        {"id": "validation_4", "response": "no car there", "split": "synthetic"}]) + "\n")
    questions = load_vlm4d(bench["questions"], "synthetic")
    responder = ResponsesFile(answers, split="synthetic")
    assert responder.needs_frames is False
    assert responder.respond(questions[:3], [None] * 3) == ["The answer is B.", "", "(A)"]

    summary = run_benchmark(questions, responder, None, tmp_path / "out", progress=False)
    items = {i["id"]: i for i in lines(tmp_path / "out" / "items.jsonl")}
    assert {k for k, i in items.items() if i["correct"]} == {"validation_1", "validation_4"}
    assert items["validation_2"]["method"] == "unparsed" and items["validation_7"]["method"] == "missing"
    assert summary["unknown_ids"]["ids"] == [["synthetic", "validation_99"]]
    assert summary["missing"]["count"] == 3 and "videos" not in summary  # no video root given: none checked
    with pytest.raises(BenchmarkFileError, match=r"record 1: no 'split' field .* \(set model.params.split\)"):
        ResponsesFile(answers, split=None)
    assert sorted(r["id"] for r in lines(tmp_path / "out" / RESPONSES)) == [f"validation_{i}" for i in (1, 2, 3, 4)]


def test_prompts():
    q = Question("vlm4d", "real", "validation_1", "v.mp4", " Where does the car go? ", {"A": "left", "B": "right"},
                 "A", "left", ("A",))
    assert question_prompt(q, "direct") == ("Where does the car go?\nA. left\nB. right\n"
                                            "Answer with the option's letter from the given choices directly.")
    cot = question_prompt(q, "cot")
    assert cot.startswith("Where does the car go?\nA. left\nB. right\n") and "step by step" in cot
    assert "The final answer is: X" in cot


def test_batched_generation_matches_one_by_one(vlm_random):
    rng = np.random.default_rng(1)
    questions = [Question("vlm4d", "real", f"validation_{i}", "v.mp4", "Where is the car going" + " left" * 3 * i,
                          DIRECTIONS, "A", "left", ("A",)) for i in range(3)]
    frames = [rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8) for _ in questions]
    responder = TransformersVLM(str(vlm_random), frames_as="images", batch_size=1, max_new_tokens=6, device="cpu")
    assert responder.max_new_tokens == 6 and responder.tokenizer.padding_side == "left"
    one_by_one = responder.respond(questions, frames)
    responder.batch_size = 3
    assert responder.respond(questions, frames) == one_by_one  # left padding: prompts of different lengths agree
    assert all(isinstance(r, str) and 0 < len(r.split()) <= 6 for r in one_by_one)  # the new tokens only
    assert TransformersVLM(str(vlm_random), prompt="cot", frames_as="images").max_new_tokens == 512


def test_a_processor_without_videos_is_refused(vlm_b):
    with pytest.raises(ResponderError, match="frames_as: images"):
        TransformersVLM(str(vlm_b), frames_as="video")
    with pytest.raises(ValueError, match="prompt"):
        TransformersVLM(str(vlm_b), prompt="essay")


def test_processor_kwargs_reach_every_processor_call(vlm_random):
    questions = [Question("vlm4d", "real", "validation_1", "v.mp4", "Where is the car going", DIRECTIONS, "A", "left",
                          ("A",))]
    frames = [np.random.default_rng(3).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)]
    pixels = {}
    for name, extra in (("default", None), ("unscaled", {"do_rescale": False})):
        responder = TransformersVLM(str(vlm_random), frames_as="images", max_new_tokens=2, device="cpu",
                                    processor_kwargs=extra)

        def generate(generate=responder.model.generate, name=name, **inputs):
            pixels[name] = inputs["pixel_values"]
            return generate(**inputs)

        responder.model.generate = generate
        responder.respond(questions, frames)
    # without rescaling to [0, 1] the normalised pixels are about 255 times larger
    assert pixels["unscaled"].abs().max() > 50 * pixels["default"].abs().max()
    with pytest.raises(ValueError, match="processor_kwargs: images, padding are set by the responder"):
        TransformersVLM(str(vlm_random), processor_kwargs={"padding": False, "images": [], "size": 1})


@pytest.mark.skipif(not has_torchvision(), reason="transformers' Qwen2-VL processor needs torchvision")
@pytest.mark.parametrize("frames_as", ["video", "images"])
def test_qwen2_vl_answers_from_a_video_or_images(tmp_path, frames_as):
    directory = build_tiny_vlm(tmp_path / "qwen2_vl", family="qwen2_vl", always="B")
    responder = TransformersVLM(str(directory), frames_as=frames_as, batch_size=2, max_new_tokens=4, device="cpu")
    rng = np.random.default_rng(2)
    questions = [Question("vlm4d", "real", f"validation_{i}", "v.mp4", "Where" + " left" * i, DIRECTIONS, "B", "right",
                          ("B",)) for i in range(3)]
    frames = [rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8) for _ in questions]
    assert responder.respond(questions, frames) == ["B", "B", "B"]


# ------------------------------------------------------------------------------------------- config errors
def test_config_errors_are_reported_together_one_line_each(bench, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({
        "benchmark": {"name": "vlm4d", "questions": {"real": str(tmp_path / "nope.json"),
                                                     "imaginary": str(bench["questions"])},
                      "video_root": str(tmp_path / "no_videos"), "num_frames": 8, "fps": 2.0, "limt": 3},
        "model": {"target": "lightning_modules.responders.TransformersVLM",
                  "params": {"model": str(bench["root"]), "prompt": "essay", "batchsize": 2}},
        "judge": {"model_path": str(tmp_path / "no_judge")},
        "extra": 1, "out": str(tmp_path / "out")}))
    assert evaluate.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = ["extra: unknown section", "model.params.prompt: expected", "model.params.batchsize: unknown key",
                "benchmark.limt: unknown key (did you mean limit?)", "judge.model_path: no such directory"]
    assert len(err) == len(expected) and all(any(e in line for line in err) for e in expected), err
    assert all(line.startswith(str(config)) for line in err)
    assert not (tmp_path / "out").exists()

    # with keys and types right, the values and files are checked, again all at once
    config.write_text(yaml.safe_dump({
        "benchmark": {"name": "vlm4d", "questions": {"real": str(tmp_path / "nope.json"),
                                                     "imaginary": str(bench["questions"])},
                      "video_root": str(tmp_path / "no_videos"), "num_frames": 8, "fps": 2.0},
        "model": {"target": "lightning_modules.responders.NoSuchResponder"},
        "judge": {"model_path": str(tmp_path / "no_judge")}}))
    assert evaluate.main(["run", "--config", str(config), "benchmark.limit=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = ["model.target: cannot import", "benchmark.questions.real: no such file",
                "benchmark.questions.imaginary: VLM4D splits are real and synthetic",
                "benchmark.fps: give num_frames or fps",
                "command line: benchmark.limit: must be >= 1", "judge.model_path: no such directory",
                "out: missing key"]
    assert len(err) == len(expected) and all(any(e in line for line in err) for e in expected), err


def test_bad_question_file_and_model_directory(bench, tmp_path, capsys):
    bad = tmp_path / "synthetic_mc.json"
    bad.write_text(json.dumps([{"id": "validation_1", "video": URL.format("v0"), "question": "Where?",
                                "choices": DIRECTIONS, "answer": "sideways"}]))
    model = vlm_model(tmp_path / "no_model_here")
    config = write_config(tmp_path / "run.yaml", {**bench, "questions": bad}, model, tmp_path / "out")
    assert evaluate.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.params.model: " in err[0] and "is not a local directory" in err[0]
    model["params"]["model"] = str(bench["root"])  # exists: the question file is checked next
    write_config(tmp_path / "run.yaml", {**bench, "questions": bad}, model, tmp_path / "out")
    assert evaluate.main(["run", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "benchmark.questions.synthetic" in err[0] and "'sideways' is not one of" in err[0]
