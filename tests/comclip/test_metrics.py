"""ComCLIP's benchmark scores (lightning_modules/comclip/metrics.py) on small fixtures whose expected numbers are worked
out by hand from the definitions."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.comclip.metrics import pair_accuracy, rerank_candidates, rerank_recall, winoground_scores

# s[caption, image]; caption c matches image c
WINOGROUND = [
    [[0.9, 0.1], [0.2, 0.8]],  # text and image right: group right
    [[0.5, 0.6], [0.1, 0.7]],  # text right (0.5 > 0.1, 0.7 > 0.6); image wrong (caption 0 prefers image 1)
    [[0.3, 0.3], [0.3, 0.3]],  # all tied: every strict comparison fails
]


def test_winoground_scores_by_hand():
    got = winoground_scores(WINOGROUND)
    assert got["text"] == pytest.approx(2 / 3) and got["image"] == pytest.approx(1 / 3)
    assert got["group"] == pytest.approx(1 / 3) and got["count"] == 3 and "by_tag" not in got
    tagged = winoground_scores(torch.tensor(WINOGROUND), tags=["Object", "Relation", "Relation"])
    assert tagged["by_tag"] == {"Object": {"text": 1.0, "image": 1.0, "group": 1.0, "count": 1},
                                "Relation": {"text": 0.5, "image": 0.0, "group": 0.0, "count": 2}}
    # image right, text wrong: caption 1 scores higher than caption 0 on image 0
    image_only = winoground_scores([torch.tensor([[0.5, 0.1], [0.6, 0.9]])])
    assert (image_only["text"], image_only["image"], image_only["group"]) == (0.0, 1.0, 0.0)


def test_winoground_scores_refuses_bad_input():
    with pytest.raises(ValueError, match="no items"):
        winoground_scores([])
    with pytest.raises(ValueError, match="item 1 is \\[3\\]"):
        winoground_scores([[[1, 0], [0, 1]], [1, 2, 3]])
    with pytest.raises(ValueError, match="expected \\[n, 2, 2\\]"):
        winoground_scores(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="2 labels for 3 items"):
        winoground_scores(WINOGROUND, tags=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        winoground_scores([[[math.nan, 0], [0, 1]]])


def test_pair_accuracy_by_hand():
    matrices = [[[0.9, 0.1]], [[0.2, 0.3]], [0.5, 0.5], [[0.7, 0.6]]]  # right, wrong, tie (wrong), right
    got = pair_accuracy(matrices, ["subject", "subject", "verb", "object"])
    assert got["accuracy"] == 0.5 and got["count"] == 4
    assert got["by_negative_type"] == {"subject": {"accuracy": 0.5, "count": 2}, "verb": {"accuracy": 0.0, "count": 1},
                                       "object": {"accuracy": 1.0, "count": 1}}
    assert pair_accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.3]])) == {"accuracy": 0.5, "count": 2}
    with pytest.raises(ValueError, match="unknown negative types \\['adjective'\\]"):
        pair_accuracy(matrices, ["subject", "verb", "object", "adjective"])


# 4 texts x 3 images; texts 0 and 1 describe image 0, text 2 image 1, text 3 image 2
SIM = [[0.1, 0.9, 0.5],   # plain: i1 i2 i0 (its image third)
       [0.8, 0.3, 0.2],   # plain: i0 i1 i2 (first)
       [0.4, 0.6, 0.1],   # plain: i1 i0 i2 (first)
       [0.5, 0.2, 0.3]]   # plain: i0 i2 i1 (second)
IMAGE_OF_TEXT = [0, 0, 1, 2]
NAN = math.nan
# re-rank scores of the pairs inside the top 2 of either direction; (t0, i0) lies outside both: its 99 is never read
RERANK = [[99.0, 0.1, 0.2],
          [0.5, 0.5, NAN],   # a tie inside the top 2: plain order (i0 first) decides
          [0.7, 0.3, NAN],
          [0.1, NAN, 0.6]]
CANDIDATES = {(0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 2)}
# By hand, k = 2. text->image after re-ranking: t0 i2 i1 | i0 (third: outside the top 2, stays after it);
# t1 i0 i1 (tie) first; t2 i0 i1: second; t3 i2 i0: first.
# image->text, plain: i0 t1 t3 t2 t0 (t1 first), i1 t0 t2 t1 t3 (second), i2 t0 t3 t1 t2 (second);
# re-ranked: i0 t1 t3 (first), i1 t2 t0 (first), i2 t3 t0 (first).
EXPECTED = {"plain": {"text_to_image": {"R@1": 0.5, "R@2": 0.75}, "image_to_text": {"R@1": 1 / 3, "R@2": 1.0}},
            "reranked": {"text_to_image": {"R@1": 0.5, "R@2": 0.75}, "image_to_text": {"R@1": 1.0, "R@2": 1.0}}}


def test_rerank_recall_by_hand():
    assert set(zip(*(t.tolist() for t in rerank_candidates(SIM, k=2)))) == CANDIDATES
    got = rerank_recall(SIM, IMAGE_OF_TEXT, RERANK, k=2, ks=(1, 2))
    assert got == EXPECTED  # fractions of 3 and 4 items: exact in float64
    # which texts hit at 1 changed (t2 lost it, t3 gained it) though the fraction did not: flip t1's tie to show
    # the re-ranked order is used
    flipped = [row[:] for row in RERANK]
    flipped[1][1] = 0.6
    assert rerank_recall(SIM, IMAGE_OF_TEXT, flipped, k=2, ks=(1, 2))["reranked"]["text_to_image"] == {
        "R@1": 0.25, "R@2": 0.75}
    calls = []

    def score(texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        calls.append(list(zip(texts.tolist(), images.tolist())))
        return torch.tensor([RERANK[t][i] for t, i in calls[-1]])

    assert rerank_recall(torch.tensor(SIM), torch.tensor(IMAGE_OF_TEXT), score, k=2, ks=(1, 2)) == EXPECTED
    assert len(calls) == 1 and set(calls[0]) == CANDIDATES and len(calls[0]) == len(CANDIDATES)


def test_rerank_recall_edges():
    # k = 1: nothing to re-order, the re-ranked recalls are the plain ones
    got = rerank_recall(SIM, IMAGE_OF_TEXT, RERANK, k=1, ks=(1, 2))
    assert got["reranked"] == got["plain"] == EXPECTED["plain"]
    # default k = 10 covers every pair here, so every score is read; the default ks are R@1 and R@5
    full = [[0.0, 1.0, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    got = rerank_recall(SIM, IMAGE_OF_TEXT, full)
    assert got["reranked"]["text_to_image"] == {"R@1": 0.75, "R@5": 1.0}
    assert got["plain"]["text_to_image"] == {"R@1": 0.5, "R@5": 1.0}
    with pytest.raises(ValueError, match="NaN"):
        rerank_recall(SIM, IMAGE_OF_TEXT, RERANK, k=3)  # (t1, i2) is inside the top 3 and has no score
    with pytest.raises(ValueError, match="image_of_text: 3 entries for 4 texts"):
        rerank_recall(SIM, [0, 1, 2], RERANK)
    with pytest.raises(ValueError, match="indices must be in \\[0, 3\\)"):
        rerank_recall(SIM, [0, 0, 1, 3], RERANK)
    with pytest.raises(ValueError, match="returned 2 scores for 8"):
        rerank_recall(SIM, IMAGE_OF_TEXT, lambda t, i: [0.0, 1.0], k=2)
