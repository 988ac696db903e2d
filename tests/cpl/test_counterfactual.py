"""CPL's counterfactual search and loss terms, on random tensors (lightning_modules/cpl/counterfactual.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.cpl.counterfactual import (class_logits, contrastive_loss, counterfactual, pick_negatives,
                                                  search_mask)
from lightning_modules.cpl.negatives import top_k_negatives


def features(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_counterfactual_is_elementwise_per_sample():
    v, v_neg = features(0, 3, 8), features(1, 3, 8)
    u = torch.rand(3, 8, generator=torch.Generator().manual_seed(2))
    out = counterfactual(v, v_neg, u)
    for b in range(3):
        for d in range(8):
            assert out[b, d] == pytest.approx(float((1 - u[b, d]) * v[b, d] + u[b, d] * v_neg[b, d]), abs=1e-6)
    # the released code's broadcasting bug collapses u to one number per sample: with batch > 1 that differs
    scalar = counterfactual(v, v_neg, u.mean(dim=1, keepdim=True))
    assert not torch.allclose(out, scalar)


def test_search_finds_a_mask_in_the_unit_box_that_flips_the_prediction():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(features(3, 5, 16), dim=-1)
    labels = torch.tensor([0, 1, 2, 3])
    v = text[labels] + 0.05 * features(4, 4, 16)  # each image close to its own class's text
    negatives = torch.tensor([1, 2, 3, 4])
    v_neg = text[negatives] + 0.05 * features(5, 4, 16)
    before = class_logits(v, text, 10.0).argmax(-1)
    assert torch.equal(before, labels)
    u = search_mask(v, v_neg, text, negatives, 10.0, beta=0.0, steps=60, lr=0.3)
    assert u.shape == (4, 16) and (u >= 0).all() and (u <= 1).all()
    after = class_logits(counterfactual(v, v_neg, u), text, 10.0)
    assert torch.equal(after.argmax(-1), negatives)  # moved to the negative class
    scalar = search_mask(v, v_neg, text, negatives, 10.0, beta=0.0, steps=5, lr=0.3, elementwise=False)
    assert scalar.shape == (4, 1)


def test_sparsity_term_lowers_the_mask():
    text = torch.nn.functional.normalize(features(6, 5, 16), dim=-1)
    v, v_neg, negatives = text[:4] + 0.1 * features(7, 4, 16), text[1:] + 0.1 * features(8, 4, 16), torch.arange(1, 5)
    dense = search_mask(v, v_neg, text, negatives, 10.0, beta=0.0, steps=30, lr=0.3)
    sparse = search_mask(v, v_neg, text, negatives, 10.0, beta=20.0, steps=30, lr=0.3)
    assert sparse.abs().sum() < dense.abs().sum()


def test_contrastive_loss_equals_the_formula():
    text, v, v_cf = features(9, 6, 12), features(10, 4, 12), features(11, 4, 12)
    labels = torch.tensor([5, 0, 2, 2])
    tau = 0.07
    got = contrastive_loss(text, v, v_cf, labels, tau)
    cos = lambda a, b: float(torch.dot(a, b) / (a.norm() * b.norm()))  # noqa: E731
    for i in range(4):
        t = text[labels[i]]
        real, fake = math.exp(cos(t, v[i]) / tau), math.exp(cos(t, v_cf[i]) / tau)
        assert got[i].item() == pytest.approx(-math.log(real / (real + fake)), rel=1e-4)
    per_image = text.unsqueeze(0).repeat(4, 1, 1)  # CoCoOp-style text features per image give the same numbers
    assert torch.allclose(contrastive_loss(per_image, v, v_cf, labels, tau), got, atol=1e-5)
    everything = contrastive_loss(text, v, v_cf, labels, tau, over_all_classes=True)
    expected = []
    for i in range(4):
        terms = []
        for c in range(6):
            real, fake = cos(text[c], v[i]) / tau, cos(text[c], v_cf[i]) / tau
            terms.append(-math.log(math.exp(real) / (math.exp(real) + math.exp(fake))))
        expected.append(sum(terms) / 6)
    assert everything.tolist() == pytest.approx(expected, rel=1e-4)


def class_scores() -> torch.Tensor:
    """4 classes; row i's similarities: class 0 is nearest 1 then 2, 1 -> 0 then 2, 2 -> 1 then 0, 3 -> 0 then 1."""
    return torch.tensor([[1.0, 0.9, 0.5, 0.1],
                         [0.9, 1.0, 0.6, 0.2],
                         [0.4, 0.8, 1.0, 0.3],
                         [0.7, 0.6, 0.2, 1.0]])


def test_pick_negatives_prefers_the_most_similar_class_present():
    scores = class_scores()
    top2 = top_k_negatives(scores, 2)
    labels = torch.tensor([0, 2, 2, 3, 1])
    for top_k in (top2, None):
        partner, valid = pick_negatives(labels, labels, scores, top_k)
        assert partner.tolist()[0] == 4  # class 0: nearest is 1 (sample 4)
        assert partner.tolist()[1] == 4 and partner.tolist()[2] == 4  # class 2: nearest is 1
        assert partner.tolist()[3] == 0  # class 3: nearest is 0 (sample 0)
        assert partner.tolist()[4] == 0  # class 1: nearest is 0
        assert valid.all()
    alone, valid = pick_negatives(torch.tensor([3, 3]), torch.tensor([3, 3]), scores, top2)
    assert not valid.any()  # no negative class in the batch: no counterfactual, never the sample's own class


def test_pick_negatives_top_k_limits_partners_and_ties_go_to_the_earliest():
    scores = class_scores()
    labels = torch.tensor([3, 2, 2])  # class 3's top-1 is class 0, absent: with k=1 it has no partner
    partner, valid = pick_negatives(labels, labels, scores, top_k_negatives(scores, 1))
    assert valid.tolist() == [False, False, False]  # 2's top-1 is class 1, absent too
    partner, valid = pick_negatives(labels, labels, scores, None)
    assert valid.all() and partner.tolist() == [1, 0, 0]  # nearest present; the two class-2 samples tie: earliest


def test_pick_negatives_uses_texts_and_labels_separately():
    # retrieval/VQA: texts index the score matrix, labels (in-batch captions, answers) decide who is eligible
    scores = class_scores()
    items = torch.tensor([0, 1, 2])
    labels = torch.tensor([5, 5, 7])  # samples 0 and 1 share a class: only sample 2 is eligible for both
    partner, valid = pick_negatives(labels, items, scores, None)
    assert valid.all() and partner.tolist() == [2, 2, 1]  # sample 2 (text 2): text 1 (0.8) beats text 0 (0.4)
