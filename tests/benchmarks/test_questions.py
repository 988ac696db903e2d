"""Benchmark question files (the real VLM4D and MMWorld files), video lookup and frame sampling."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

from datamodules.benchmarks import frames
from datamodules.benchmarks.frames import VideoDecodeError, sample_frames, uniform_indices
from datamodules.benchmarks.questions import (BenchmarkFileError, check_videos, index_questions, load_mmworld,
                                              load_questions, load_vlm4d, resolve_video)
from datamodules.benchmarks.scoring import score_responses, summarize, summary_markdown
from tests.conftest import REPO

BENCHMARKS = REPO.parent / "shared" / "benchmarks"
REAL = BENCHMARKS / "vlm4d" / "real_mc.json"
SYNTHETIC = BENCHMARKS / "vlm4d" / "synthetic_mc.json"
MMWORLD_EXAMPLE = BENCHMARKS / "mmworld" / "example.json"


def write_video(path: Path, num_frames: int = 16, size: int = 32, rate: int = 8) -> Path:
    """A grey video whose frame i has brightness 16 * i, so a decoded frame tells its index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(num_frames):
            image = np.full((size, size, 3), 16 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbers(video: np.ndarray) -> list[int]:
    return [int(round(float(f.mean()) / 16)) for f in video]


def is_fp(answer) -> bool:  # the official definition (acc_final_statistics.py), written out independently
    text = str(answer).strip().lower()
    return text == "no" or text.startswith("no ")


# ------------------------------------------------------------------------------------------- real files
def test_vlm4d_real_and_synthetic_counts_and_categories_match_the_official_definitions():
    real_raw, synthetic_raw = json.loads(REAL.read_text()), json.loads(SYNTHETIC.read_text())
    real, synthetic = load_vlm4d(REAL), load_vlm4d(SYNTHETIC)
    assert (len(real), len(synthetic)) == (1371, 445)
    assert {q.split for q in real} == {"real"} and {q.split for q in synthetic} == {"synthetic"}

    exo = sum(int(x["id"].split("_")[-1]) <= 922 for x in real_raw)
    fp = sum(is_fp(x["answer"]) for x in synthetic_raw)
    groups = lambda qs, g: sum(q.categories["group"] == g for q in qs)  # noqa: E731
    assert (groups(real, "exo"), groups(real, "ego")) == (exo, len(real_raw) - exo) == (922, 449)
    assert (groups(synthetic, "fp"), groups(synthetic, "directional")) == (fp, len(synthetic_raw) - fp) == (45, 400)
    for raw, qs in ((real_raw, real), (synthetic_raw, synthetic)):
        for x, q in zip(raw, qs):
            assert q.id == x["id"] and str(x["answer"]) in [str(v) for v in x["choices"].values()]
            assert q.options[q.answer_letter] == str(x["answer"]) and list(q.options) == list(x["choices"])
            assert q.video == x["video"].split("resolve/main/")[1]


def test_vlm4d_ids_overlap_across_splits_and_stay_apart():
    real, synthetic = load_vlm4d(REAL), load_vlm4d(SYNTHETIC)
    assert {q.id for q in real} & {q.id for q in synthetic}  # validation_1 ... in both files
    index = index_questions(real + synthetic)
    assert len(index) == 1816
    assert index[("real", "validation_1")].video != index[("synthetic", "validation_1")].video
    with pytest.raises(BenchmarkFileError, match="given twice"):
        index_questions(real + real[:1])


def test_vlm4d_repeated_choice_text_makes_both_letters_correct():
    q = index_questions(load_vlm4d(REAL))[("real", "validation_633")]  # C and D are both the answer text
    assert q.correct_letters == ("C", "D") and q.answer_letter == "C"


def test_mmworld_example_loads():
    [q] = load_mmworld(MMWORLD_EXAMPLE)
    assert (q.id, q.video, q.answer_letter, q.split) == ("eng_vid1_0", "eng_vid1", "a", "test")
    assert list(q.options) == ["a", "b", "c", "d"]
    assert q.categories == {"discipline": "Tech & Engineering", "subdiscipline": "Robotics", "type": "Explanation"}
    assert q.flags == {"requires_domain_knowledge": False, "requires_audio": False, "requires_visual": True,
                       "question_only": False}


# ------------------------------------------------------------------------------------------- bad files
def vlm4d_entry(qid="validation_1", answer="left", **extra):
    return {"id": qid, "video": "https://huggingface.co/datasets/x/VLM4D/resolve/main/videos_real/a.mp4",
            "question_type": "multiple-choice", "question": "Where?",
            "choices": {"A": "left", "B": "right", "C": "up", "D": "down"}, "answer": answer, **extra}


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    ("{not json", "not valid JSON"),
    ({"questions": []}, "expected a non-empty JSON list"),
    ([{k: v for k, v in vlm4d_entry().items() if k != "choices"}], "entry 0 (id validation_1): no 'choices' field"),
    ([vlm4d_entry(answer="backwards")], "entry 0 (id validation_1): answer 'backwards' is not one of the choices"),
    ([vlm4d_entry(qid="q")], "id has no trailing number"),
    ([vlm4d_entry(), vlm4d_entry()], "id validation_1 appears twice"),
])
def test_bad_vlm4d_file_is_one_line_naming_file_and_fix(tmp_path, content, expected):
    path = tmp_path / "real_mc.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(BenchmarkFileError) as err:
        load_vlm4d(path)
    message = str(err.value)
    assert expected in message and message.startswith(str(path)) and "\n" not in message and "(" in message


def test_bad_mmworld_label_names_the_question(tmp_path):
    data = json.loads(MMWORLD_EXAMPLE.read_text())
    data[0]["questions"][0]["correct_answer_label"] = "e"
    path = tmp_path / "mmworld.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkFileError, match=r"video_id eng_vid1\) question 0: correct_answer_label 'e'"):
        load_mmworld(path)
    del data[0]["questions"][0]["requires_audio"]
    data[0]["questions"][0]["correct_answer_label"] = "a"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkFileError, match="no 'requires_audio' field"):
        load_questions("mmworld", path)


def test_vlm4d_split_must_be_named_when_the_file_name_does_not_tell(tmp_path):
    path = tmp_path / "subset.json"
    path.write_text(json.dumps([vlm4d_entry()]))
    with pytest.raises(BenchmarkFileError, match="real=FILE or synthetic=FILE"):
        load_vlm4d(path)
    assert load_vlm4d(path, "synthetic")[0].key == ("synthetic", "validation_1")
    with pytest.raises(BenchmarkFileError, match="given as the real split but named like the synthetic file"):
        load_vlm4d(SYNTHETIC, "real")


# ------------------------------------------------------------------------------------------- videos
def test_resolve_video_rules(tmp_path):
    [vlm] = load_vlm4d(SYNTHETIC)[:1]
    assert resolve_video(vlm, tmp_path) is None
    target = tmp_path / vlm.video
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_video(vlm, tmp_path) == target

    [mm] = load_mmworld(MMWORLD_EXAMPLE)
    assert resolve_video(mm, tmp_path) is None
    for name in ("eng_vid1.webm", "eng_vid1.mp4", "eng_vid1.txt", "eng_vid10.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert resolve_video(mm, tmp_path) == tmp_path / "eng_vid1.mp4"  # .mp4 before .webm; other stems ignored
    (tmp_path / "eng_vid1.mp4").unlink()
    assert resolve_video(mm, tmp_path) == tmp_path / "eng_vid1.webm"
    folder_root = tmp_path / "layout"
    (folder_root / "eng_vid1").mkdir(parents=True)  # the official evaluation's all_data/VIDEO_ID/*.mp4
    (folder_root / "eng_vid1" / "b.mp4").write_bytes(b"x")
    (folder_root / "eng_vid1" / "a.mp4").write_bytes(b"x")
    assert resolve_video(mm, folder_root) == folder_root / "eng_vid1" / "a.mp4"


def test_check_videos_counts_present_missing_undecodable(tmp_path):
    entries = [vlm4d_entry(f"validation_{i}") for i in range(1, 6)]
    for entry, name in zip(entries, ["good", "good", "missing", "broken", "truncated"]):
        entry["video"] = f"https://huggingface.co/datasets/x/VLM4D/resolve/main/videos_real/{name}.mp4"
    path = tmp_path / "real_mc.json"
    path.write_text(json.dumps(entries))
    root = tmp_path / "videos"
    write_video(root / "videos_real" / "good.mp4")
    (root / "videos_real" / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    data = (root / "videos_real" / "good.mp4").read_bytes()
    (root / "videos_real" / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index (moov) lost

    report = check_videos(load_vlm4d(path), root)
    assert report.counts() == {"questions": 5, "present": 2, "missing": 1, "undecodable": 2, "missing_videos": 1,
                               "undecodable_videos": 2}
    assert report.missing == [("real", "validation_3")]
    assert report.undecodable == [("real", "validation_4"), ("real", "validation_5")]
    assert report.missing_videos == ["videos_real/missing.mp4"]
    assert "2/5 questions have a video" in report.line()
    assert json.loads(json.dumps(report.to_dict()))["counts"]["missing"] == 1
    assert check_videos(load_vlm4d(path), root, decode=False).counts()["present"] == 4

    summary = summarize("vlm4d", score_responses(load_vlm4d(path), {}), videos=report)
    assert summary["videos"]["counts"]["undecodable"] == 2 and summary["missing"]["count"] == 5
    assert "- videos: 2 of 5 questions have one; 1 missing, 2 undecodable" in summary_markdown(summary)


# ------------------------------------------------------------------------------------------- frames
def test_uniform_sampling_picks_the_right_frames(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    out = sample_frames(video, num_frames=5)
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    assert frame_numbers(out) == uniform_indices(16, 5) == [0, 4, 8, 11, 15]
    assert frame_numbers(sample_frames(video, num_frames=1)) == [0]
    assert frame_numbers(sample_frames(video, num_frames=16)) == list(range(16))
    assert len(sample_frames(video, num_frames=20)) == 20  # more than the video has: frames repeat


def test_uniform_sampling_without_a_frame_count_in_the_header(tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mkv")  # Matroska stores no frame count: packets are counted
    with av.open(str(video)) as container:
        assert container.streams.video[0].frames == 0
    assert frame_numbers(sample_frames(video, num_frames=4)) == [0, 5, 10, 15]
    monkeypatch.setattr(frames, "frame_count", lambda container: 40)  # a header that over-counts
    assert frame_numbers(sample_frames(video, num_frames=4)) == [0, 5, 10, 15]


def test_fps_sampling_takes_the_nearest_frame_to_each_time(tmp_path):
    video = write_video(tmp_path / "v.mp4", num_frames=16, rate=8)  # 2 s
    assert frame_numbers(sample_frames(video, fps=2)) == [0, 4, 8, 12]
    assert frame_numbers(sample_frames(video, fps=3)) == [0, 3, 5, 8, 11, 13]  # t = k/3 -> nearest of i/8
    assert frame_numbers(sample_frames(video, fps=2, max_frames=2)) == [0, 12]
    with pytest.raises(ValueError, match="exactly one"):
        sample_frames(video, num_frames=4, fps=2)


def test_cache_hit_does_not_decode_and_a_changed_file_does(tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mp4")
    cache = tmp_path / "cache"
    first = sample_frames(video, num_frames=4, cache_dir=cache)
    [entry] = list(cache.iterdir())
    assert entry.suffix == ".npy" and not entry.name.startswith(".")  # no temporary file left

    def no_decode(path, sampling):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(frames, "decode_frames", no_decode)
        assert np.array_equal(sample_frames(video, num_frames=4, cache_dir=cache), first)
        with pytest.raises(AssertionError, match="decoded although cached"):
            sample_frames(video, num_frames=5, cache_dir=cache)  # other sampling: other entry
    write_video(video, num_frames=8)  # replaced: size and mtime change the key
    assert frame_numbers(sample_frames(video, num_frames=4, cache_dir=cache)) == [0, 2, 5, 7]
    assert len(list(cache.iterdir())) == 2


def test_undecodable_and_missing_videos_raise_their_own_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        sample_frames(bad, num_frames=4)
    with pytest.raises(VideoDecodeError):
        sample_frames(bad, fps=1, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
    with pytest.raises(FileNotFoundError):
        sample_frames(tmp_path / "none.mp4", num_frames=4, cache_dir=tmp_path / "cache")
