"""CPL's retrieval and VQA tasks: their data, their metrics, and fits through launch/fit.py on synthetic shards."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.errors import ParamError
from datamodules.shards import DatasetError
from datamodules.synthetic_shapes import CLASS_NAMES
from lightning_modules.clip_pretrain.random_clip import write_random_clip
from lightning_modules.cpl.data import ClipRetrievalData, ClipRetrievalSample, ClipVQAData, vqa_accuracy
from lightning_modules.cpl.module import CPLModule
from lightning_modules.cpl.synthetic import write_retrieval, write_vqa, write_word_scorer
from tests.conftest import REPO, run_fit

DEMO_CONFIG = REPO / "configs" / "demo" / "cpl.yaml"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cpl-tasks")
    retrieval = write_retrieval(root / "retrieval", train_images=24, test_images=12, size=16)
    vqa = write_vqa(root / "vqa", train_questions=48, test_questions=24, size=16)
    texts = [c for group in json.loads((Path(retrieval["train"]) / "index.json").read_text())["metadata"]["captions"]
             for c in group]
    texts += [q for q, _ in json.loads((Path(vqa["train"]) / "index.json").read_text())["metadata"]["questions"]]
    words = sorted({w for t in texts + ["question: answer:", *CLASS_NAMES, "yes no"] for w in t.split()})
    return {"root": root, "clip": write_random_clip(root / "clip", image_size=16),
            "scorer": write_word_scorer(root / "scorer", words),
            "retrieval_train": Path(retrieval["train"]), "retrieval_test": Path(retrieval["test"]),
            "vqa_train": Path(vqa["train"]), "vqa_test": Path(vqa["test"])}


def write_config(tasks: dict[str, Path], task: str, variant: str, name: str) -> Path:
    """The CPU demo config with this task's data module and synthetic shards."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["base"] = [str((DEMO_CONFIG.parent / b).resolve()) for b in config["base"]]
    config["run"].update(root=str(tasks["root"] / "runs"), name=name, every_n_train_steps=3)
    params = config["model"]["params"]
    params.update(variant=variant, clip={"pretrained": str(tasks["clip"])}, k=None,
                  scorer={"model": str(tasks["scorer"]), "num_layers": 1},
                  negatives_cache=str(tasks["root"] / "negatives"), lr=0.05)
    target = {"retrieval": "ClipRetrievalData", "vqa": "ClipVQAData"}[task]
    config["data"] = {"target": f"lightning_modules.cpl.data.{target}",
                      "params": {"train": str(tasks[f"{task}_train"]), "val": {"test": str(tasks[f"{task}_test"])},
                                 "image_size": 16, "augment": False, "batch_size": 6, "num_workers": 0, "seed": 0,
                                 "verify": "size"}}
    config["trainer"].update(max_epochs=2, check_val_every_n_epoch=2, log_every_n_steps=1)
    path = tasks["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(next((run_dir / "logs").rglob("metrics.csv")), newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("task,metric", [("retrieval", "r1"), ("vqa", "vqa_accuracy")])
def test_fit_writes_the_task_metric_beside_zero_shot(tasks, task, metric):
    result = run_fit("--config", str(write_config(tasks, task, "cpl", f"{task}-cpl")))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tasks["root"] / "runs" / f"{task}-cpl"
    record = json.loads((run_dir / "benchmark.json").read_text())
    assert record["task"] == task and record["metric"] == metric
    zero_shot, learned = record["rows"]
    assert zero_shot["method"] == "zero-shot CLIP" and learned["method"] == "learned prompts"
    assert all(0 <= row["test"] <= 100 for row in record["rows"])
    rows = metric_rows(run_dir)
    coverage = [float(r["train/counterfactual_coverage"]) for r in rows if r.get("train/counterfactual_coverage")]
    # k: null -- every sample whose batch holds another class gets a counterfactual
    assert coverage and min(coverage) > 0.5
    logged = [float(r[f"val/{metric}_test"]) for r in rows if r.get(f"val/{metric}_test")]
    assert logged and logged[-1] == pytest.approx(learned["test"], abs=0.01)


def test_retrieval_stopped_mid_epoch_resumes_to_the_same_prompts(tasks):
    whole = run_fit("--config", str(write_config(tasks, "retrieval", "cocoop", "whole")))
    assert whole.returncode == 0, whole.stderr[-3000:]
    config = write_config(tasks, "retrieval", "cocoop", "halves")
    first = run_fit("--config", str(config), "trainer.max_steps=5")  # 24 images / batch 6: inside epoch 2
    assert first.returncode == 0, first.stderr[-3000:]
    last = tasks["root"] / "runs" / "halves" / "checkpoints" / "last.ckpt"
    second = run_fit("--config", str(config), "--resume", str(last))
    assert second.returncode == 0, second.stderr[-3000:]

    def learned(name: str) -> dict[str, torch.Tensor]:
        path = tasks["root"] / "runs" / name / "checkpoints" / "last.ckpt"
        return torch.load(path, weights_only=False)["state_dict"]

    a, b = learned("whole"), learned("halves")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_vqa_accuracy_is_the_leave_one_annotator_out_mean():
    for annotators in (3, 10):
        for matches in range(annotators + 1):
            given = [1] * matches + [0] * (annotators - matches)
            subsets = [min(sum(s) / 3, 1) for s in itertools.combinations(given, annotators - 1)]
            assert vqa_accuracy(matches, annotators) == pytest.approx(sum(subsets) / len(subsets))
    assert vqa_accuracy(1, 10) == pytest.approx(0.3) and vqa_accuracy(4, 10) == 1.0


def test_r1_counts_any_of_the_images_own_captions(tasks):
    m = CPLModule(clip={"pretrained": str(tasks["clip"])}, variant="coop")
    # "a dog" belongs to both images: it is one class, right for either
    m.configure_retrieval(["a cat"], {"test": [["a cat", "a dog"], ["a dog", "a bird"], ["a car"]]})
    assert m.val_classes[0] == ["a cat", "a dog", "a bird", "a car"] and m.metric_name == "r1"
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    batch = {"image_index": torch.tensor([0, 1, 2])}
    m.update_metric(m.val_metric[0], logits, batch, 0)
    assert float(m.val_metric[0].compute()) == pytest.approx(2 / 3)  # image 2's top caption is image 0's


def test_training_caption_is_drawn_per_epoch_and_reproducible():
    sample = {"__key__": "00000007", "png": torch.zeros(3, 16, 16, dtype=torch.uint8), "cls": 7,
              "json": {"captions": [f"caption {i}" for i in range(5)]}}
    draw = ClipRetrievalSample(16, augment=False, seed=3, train=True)
    picks = [draw.transform(dict(sample), epoch)["caption"] for epoch in range(12)]
    assert picks == [draw.transform(dict(sample), epoch)["caption"] for epoch in range(12)]  # a resume sees the same
    assert len(set(picks)) > 1  # and epochs see different captions of the image
    assert "caption" not in ClipRetrievalSample(16, False, 3, train=False).transform(dict(sample), 0)
    with pytest.raises(KeyError, match="json.captions"):
        draw.transform({**sample, "json": {"captions": []}}, 0)


def test_vqa_sample_scores_each_answer(tasks):
    data = ClipVQAData(train=str(tasks["vqa_train"]), val={"test": str(tasks["vqa_test"])}, image_size=16,
                       verify="size")
    data.setup("fit")
    make = data.make_sample("train")
    raw = {"__key__": "k", "png": torch.zeros(3, 16, 16, dtype=torch.uint8), "cls": 2,
           "json": {"question": "what shape is this?", "answer_counts": {"2": 9, "1": 1}, "num_annotators": 10}}
    out = make.transform(raw, 0)
    expected = torch.zeros(len(data.answers()))
    expected[2], expected[1] = 1.0, 0.3
    assert torch.allclose(out["answer_scores"], expected) and out["question"] == "what shape is this?"
    with pytest.raises(KeyError, match="outside"):
        make.transform({**raw, "json": {**raw["json"], "answer_counts": {"99": 3}}}, 0)
    texts = data.training_texts()
    assert texts and all(t.startswith("question: ") and " answer: " in t for t in texts)


def test_bad_task_data_gives_clear_errors(tasks, tmp_path):
    wrong_kind = ClipRetrievalData(train=str(tasks["vqa_train"]), image_size=16, verify="size")
    wrong_kind.setup("fit")
    with pytest.raises(DatasetError, match="no metadata.captions for retrieval .*make_shards.py retrieval"):
        wrong_kind.captions("train")
    # a test set written with its own vocabulary cannot be scored with the training answers
    other = tmp_path / "other"
    write_vqa(other, train_questions=12, test_questions=6, size=16, seed=5)
    index = json.loads((other / "train" / "index.json").read_text())
    assert index["metadata"]["answers"] != json.loads((tasks["vqa_train"] / "index.json").read_text())["metadata"][
        "answers"], "the two synthetic vocabularies should differ in order for this test"
    mixed = ClipVQAData(train=str(tasks["vqa_train"]), val={"test": str(other / "train")}, image_size=16,
                        verify="size")
    mixed.setup("fit")
    with pytest.raises(DatasetError, match="answers differ.*--answers-from"):
        mixed.answers()
    with pytest.raises(ParamError, match="qa_template: must contain"):
        ClipVQAData(train=str(tasks["vqa_train"]), qa_template="{question}?")
    m = CPLModule(clip={"pretrained": str(tasks["clip"])}, variant="coop", class_specific_contexts=True)
    with pytest.raises(ValueError, match="class_specific_contexts.*false"):
        m.configure_retrieval(["a cat"], {"test": [["a cat"]]})


@pytest.mark.parametrize("variant", ["coop", "cocoop"])
def test_vqa_step_prompts_each_question_with_every_answer(tasks, variant):
    m = CPLModule(clip={"pretrained": str(tasks["clip"])}, variant=variant, cache_image_features=False)
    answers = ["red", "blue", "yes"]
    m.configure_vqa(answers, "question: {question} answer: {answer}", ["question: what color? answer: red"],
                    ["test"])
    m.log = m.log_dict = lambda *a, **k: None
    batch = {"pixel_values": torch.randn(2, 3, 16, 16), "question": ["what color?", "is it red?"],
             "cls": torch.tensor([0, 2]), "__key__": ["a", "b"]}
    v = m.image_features(batch, use_cache=False)
    text, labels, own = m.training_targets(batch, v)
    assert text.shape[:2] == (2, 3) and own == ["question: what color? answer: red", "question: is it red? answer: yes"]
    assert m.prompts.class_names[3:] == [f"question: is it red? answer: {a}" for a in answers]  # question 2's block
    loss = m.training_step(batch, 0)
    loss.backward()
    assert m.prompts.ctx.grad is not None and m.prompts.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.clip.parameters())
    with pytest.raises(ValueError, match="outside the answer vocabulary"):
        m.training_step({**batch, "cls": torch.tensor([0, -1])}, 0)
