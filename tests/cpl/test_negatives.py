"""BERTScore negatives for CPL: equality with bert_score.score, top-k, the disk cache and input checks.

The scorer is a tiny random BERT written to a tmp dir (nothing is downloaded)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import bert_score
import bert_score.utils as bs_utils
import pytest
import torch

from lightning_modules.cpl import negatives
from lightning_modules.cpl.negatives import (ScorerSpec, bertscore_f1_matrix, bertscore_negatives, cache_file,
                                             top_k_negatives)
from lightning_modules.cpl.synthetic import write_word_scorer

WORDS = "a an photo of the red green blue big small cat dog car bird plane ship on sky road".split()
TEXTS = ["a red cat", "a green dog", "the big plane", "a photo of a ship", "small bird", "blue car",
         "a photo of the small red car on the road"]


def write_tiny_bert(directory: Path, seed: int = 0, model_max_length: int | None = 64) -> Path:
    return write_word_scorer(directory, WORDS, seed=seed, model_max_length=model_max_length)


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory) -> str:
    return str(write_tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def all_pairs_f1(texts: list[str], **kwargs) -> torch.Tensor:
    """bert_score.score itself on every (candidate i, reference j) pair, as an [n, n] matrix."""
    n = len(texts)
    cands = [texts[i] for i in range(n) for _ in range(n)]
    refs = [texts[j] for _ in range(n) for j in range(n)]
    _, _, f1 = bert_score.score(cands, refs, device="cpu", **kwargs)
    return f1.view(n, n)


@pytest.fixture
def load_counter(monkeypatch):
    """Counts scorer-model loads (bert-score's get_model); set .forbid to make a load fail the test."""
    class Counter:
        calls = 0
        forbid = False

    real = bs_utils.get_model

    def counting(*args, **kwargs):
        if Counter.forbid:
            raise AssertionError("the scorer model was loaded although the cache should have answered")
        Counter.calls += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(bs_utils, "get_model", counting)
    return Counter


# -- 1. the numbers are bert-score's ---------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers, idf", [(2, False), (1, True)])
def test_f1_matrix_equals_bert_score_for_every_pair(scorer_dir, num_layers, idf):
    scorer = ScorerSpec(scorer_dir, num_layers=num_layers, idf=idf)
    ours = bertscore_f1_matrix(TEXTS, scorer, batch_size=3)  # several embedding batches, different padding
    assert ours.dtype == torch.float32 and ours.shape == (len(TEXTS), len(TEXTS))
    # our idf counts each class text once: bert-score's idf over refs = the text list
    idf_arg = bs_utils.get_idf_dict(TEXTS, bs_utils.get_tokenizer(scorer_dir), nthreads=0) if idf else False
    reference = all_pairs_f1(TEXTS, model_type=scorer_dir, num_layers=num_layers, idf=idf_arg)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(bertscore_f1_matrix(TEXTS, scorer, batch_size=64), ours, atol=1e-6, rtol=0)

    expected = reference.clone().fill_diagonal_(-float("inf")).argsort(dim=1, descending=True, stable=True)
    k = len(TEXTS) - 1
    assert torch.equal(top_k_negatives(ours, k), expected[:, :k])
    negs = bertscore_negatives(TEXTS, 2, scorer, cache_dir=Path(scorer_dir).parent / f"cache-{num_layers}-{idf}")
    assert negs.dtype == torch.long and torch.equal(negs, expected[:, :2])


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # inside bert_score.score
def test_rescale_with_baseline_matches_bert_score(scorer_dir, tmp_path, monkeypatch):
    baseline = tmp_path / "baseline.tsv"
    baseline.write_text("LAYER,P,R,F\n0,0.1,0.2,0.3\n1,0.4,0.5,0.6\n2,0.7,0.75,0.55\n")
    scorer = ScorerSpec(scorer_dir, num_layers=2, rescale_with_baseline=True)
    with pytest.raises(ValueError, match="rescale_with_baseline.*no baseline"):  # a local model has none bundled
        bertscore_f1_matrix(TEXTS, scorer)
    monkeypatch.setattr(negatives, "_baseline_file", lambda spec: baseline)
    reference = all_pairs_f1(TEXTS, model_type=scorer_dir, num_layers=2, lang="en", rescale_with_baseline=True,
                             baseline_path=str(baseline))
    torch.testing.assert_close(bertscore_f1_matrix(TEXTS, scorer), reference, atol=1e-5, rtol=0)


def test_tokenizer_without_model_max_length(scorer_dir, tmp_path):
    """transformers 5 cannot truncate to the 'unset' model_max_length bert-score passes; we fall back."""
    unlimited = write_tiny_bert(tmp_path / "unlimited", model_max_length=None)
    assert bs_utils.get_tokenizer(str(unlimited)).model_max_length > 10**9  # transformers' "unset"
    torch.testing.assert_close(bertscore_f1_matrix(TEXTS, ScorerSpec(str(unlimited), num_layers=2)),
                               bertscore_f1_matrix(TEXTS, ScorerSpec(scorer_dir, num_layers=2)), atol=1e-6, rtol=0)


# -- 2. never one's own negative ---------------------------------------------------------------------------------
def test_a_class_is_never_its_own_negative_even_on_ties():
    tied = torch.ones(4, 4)  # every class as similar to every other as to itself
    assert torch.equal(top_k_negatives(tied, 3), torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]))
    scores = torch.tensor([[0.2, 0.9, 0.9, 0.1],
                           [0.5, 0.5, 0.5, 0.5],
                           [0.3, 0.8, 0.8, 0.8],
                           [0.0, 0.0, 0.7, 0.7]])
    got = top_k_negatives(scores, 2)
    assert torch.equal(got, torch.tensor([[1, 2], [0, 2], [1, 3], [2, 0]]))
    assert not (got == torch.arange(4)[:, None]).any()


# -- 3. the cache -------------------------------------------------------------------------------------------------
def test_cache_is_reused_and_invalidated(scorer_dir, tmp_path, load_counter, monkeypatch):
    cache = tmp_path / "cache"
    scorer = ScorerSpec(scorer_dir, num_layers=2)
    first = bertscore_negatives(TEXTS, 2, scorer, cache_dir=cache)
    assert load_counter.calls == 1
    path = cache_file(TEXTS, scorer, cache)
    assert [p.name for p in cache.iterdir()] == [path.name]

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["texts"]) == TEXTS
        torch.testing.assert_close(fh.get_tensor("f1"), bertscore_f1_matrix(TEXTS, scorer), atol=1e-6, rtol=0)
    load_counter.calls = 0

    load_counter.forbid = True  # the same texts and scorer, with any k, never load the model
    with monkeypatch.context() as patch:
        patch.setattr(bs_utils, "get_tokenizer", lambda *a, **kw: pytest.fail("tokenizer loaded on a cache hit"))
        assert torch.equal(bertscore_negatives(TEXTS, 2, scorer, cache_dir=cache), first)
        assert torch.equal(bertscore_negatives(TEXTS, 4, scorer, cache_dir=cache)[:, :2], first)
    load_counter.forbid = False

    other_classes = TEXTS[:-1] + ["a blue bird"]
    other_layer = ScorerSpec(scorer_dir, num_layers=1)
    paths = {path, cache_file(other_classes, scorer, cache), cache_file(TEXTS, other_layer, cache),
             cache_file(list(reversed(TEXTS)), scorer, cache)}
    assert len(paths) == 4  # a different class list (or order) or layer is another key
    bertscore_negatives(other_classes, 2, scorer, cache_dir=cache)
    bertscore_negatives(TEXTS, 2, other_layer, cache_dir=cache)
    assert load_counter.calls == 2  # each new key computed once
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (path, cache_file(other_classes, scorer, cache), cache_file(TEXTS, other_layer, cache)))
    with safe_open(str(cache_file(TEXTS, other_layer, cache)), framework="pt") as fh:
        assert not torch.allclose(fh.get_tensor("f1"), bertscore_f1_matrix(TEXTS, scorer))


def test_cache_follows_a_local_scorer_retrained_in_place(tmp_path):
    model = write_tiny_bert(tmp_path / "scorer", seed=0)
    scorer = ScorerSpec(str(model), num_layers=2)
    before = cache_file(TEXTS, scorer, tmp_path)
    assert cache_file(TEXTS, scorer, tmp_path) == before
    write_tiny_bert(model, seed=1)  # same path, new weights
    assert cache_file(TEXTS, scorer, tmp_path) != before


# -- 4. bad inputs ------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(scorer_dir, tmp_path, load_counter):
    scorer = ScorerSpec(scorer_dir, num_layers=2)
    cases = [
        (lambda: bertscore_negatives([], 1, scorer, tmp_path), "texts is empty"),
        (lambda: bertscore_negatives(["cat", "dog", "cat"], 1, scorer, tmp_path), "duplicate text 'cat' at indices 0 and 2"),
        (lambda: bertscore_negatives(["cat", "dog", " dog "], 1, scorer, tmp_path), "duplicate text ' dog '"),
        (lambda: bertscore_negatives(["cat", "  "], 1, scorer, tmp_path), r"texts\[1\] is empty"),
        (lambda: bertscore_negatives(["cat", "dog", "bird"], 0, scorer, tmp_path), "k=0 must satisfy 1 <= k < "),
        (lambda: bertscore_negatives(["cat", "dog", "bird"], 3, scorer, tmp_path), r"k=3 .*number of texts \(3\)"),
        (lambda: bertscore_f1_matrix(["cat", "cat"], scorer), "duplicate text 'cat'"),
        (lambda: bertscore_f1_matrix([], scorer), "texts is empty"),
        (lambda: top_k_negatives(torch.zeros(3, 3), 3), "k=3"),
        (lambda: top_k_negatives(torch.zeros(3, 2), 1), "square"),
        (lambda: bertscore_f1_matrix(TEXTS, ScorerSpec(scorer_dir)), "num_layers is required"),
        (lambda: ScorerSpec(scorer_dir, num_layers=-1), "num_layers: must be"),
        (lambda: ScorerSpec(""), "model: must be"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    assert load_counter.calls == 0  # all rejected before the scorer is loaded
    with pytest.raises(ValueError, match="num_layers=5"):  # the tiny BERT has 2 layers
        bertscore_f1_matrix(TEXTS, ScorerSpec(scorer_dir, num_layers=5))
    assert not any(tmp_path.iterdir())


# -- 5. a corrupt cache is recomputed -----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_cache_file_is_recomputed(scorer_dir, tmp_path, load_counter, damage, caplog):
    cache = tmp_path / "cache"
    scorer = ScorerSpec(scorer_dir, num_layers=2)
    expected = bertscore_negatives(TEXTS, 3, scorer, cache_dir=cache)
    path = cache_file(TEXTS, scorer, cache)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a safetensors file" * 50,
                      "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger=negatives.__name__):
        assert torch.equal(bertscore_negatives(TEXTS, 3, scorer, cache_dir=cache), expected)
    assert load_counter.calls == 2 and "ignoring BERTScore cache" in caplog.text
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:  # rewritten whole (header key order may differ from before)
        assert json.loads(fh.metadata()["texts"]) == TEXTS
        assert top_k_negatives(fh.get_tensor("f1"), 3).equal(expected)
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temp files left behind
    load_counter.forbid = True
    assert torch.equal(bertscore_negatives(TEXTS, 3, scorer, cache_dir=cache), expected)


def test_cache_written_for_other_texts_is_not_trusted(scorer_dir, tmp_path, load_counter):
    """A valid file under the wrong name (copied by hand, hash collision) is recomputed, not returned."""
    cache = tmp_path / "cache"
    scorer = ScorerSpec(scorer_dir, num_layers=2)
    reordered = [TEXTS[1], TEXTS[0], *TEXTS[2:]]
    bertscore_negatives(reordered, 2, scorer, cache_dir=cache)
    shutil.copyfile(cache_file(reordered, scorer, cache), cache_file(TEXTS, scorer, cache))
    expected = top_k_negatives(bertscore_f1_matrix(TEXTS, scorer), 2)
    calls = load_counter.calls
    assert torch.equal(bertscore_negatives(TEXTS, 2, scorer, cache_dir=cache), expected)
    assert load_counter.calls == calls + 1
