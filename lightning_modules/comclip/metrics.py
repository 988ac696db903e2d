"""ComCLIP's benchmark scores, from similarity scores a model gave (plain CLIP or ComCLIP alike):

- `winoground_scores`: Winoground's text, image and group scores (Thrush et al. 2022), overall and per tag;
- `pair_accuracy`: SVO-Probes / ComVG accuracy (the positive image scores above the negative), overall and per
  negative type (subject, verb, object);
- `rerank_recall`: image-text retrieval R@K in both directions, for plain CLIP's ranking and after re-ranking its
  top k candidates with another score (ComCLIP's protocol: re-rank CLIP's top 10); `rerank_candidates` says which
  (text, image) pairs that needs a score for.

Every comparison is strict (a tie is a miss), as in the benchmarks' own definitions. Scores come as torch tensors or
nested lists. torchmetrics' retrieval metrics rank by one score per (query, item) and break ties their own way; the
re-ranked order (re-rank score inside the top k, plain score to break ties, plain order after the top k) is not a
single score, so the recalls are computed here from the ranks directly.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import torch

Scores = torch.Tensor | Sequence[Any]
Rerank = torch.Tensor | Sequence[Sequence[float]] | Callable[[torch.Tensor, torch.Tensor], Any]
NEGATIVE_TYPES = ("subject", "verb", "object")


def _stack(matrices: Scores, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """The per-item score matrices as one float64 tensor [n, *shape]; a pair item ([1, 2]) may also come as 2 values.
    ValueError naming `what` otherwise."""
    def as_tensor(m: Any) -> torch.Tensor:
        return torch.as_tensor(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=torch.float64)

    if isinstance(matrices, torch.Tensor):
        scores = as_tensor(matrices)
    else:
        items = [as_tensor(m) for m in matrices]
        if not items:
            raise ValueError(f"{what}: no items")
        for n, m in enumerate(items):
            if tuple(m.shape) != shape and not (shape == (1, 2) and tuple(m.shape) == (2,)):
                raise ValueError(f"{what}: item {n} is {list(m.shape)}, expected a {' x '.join(map(str, shape))} "
                                 f"score matrix")
        scores = torch.stack([m.reshape(shape) for m in items])
    if shape == (1, 2) and scores.ndim == 2:
        scores = scores.unsqueeze(1)
    if tuple(scores.shape[1:]) != shape or scores.ndim != 1 + len(shape):
        raise ValueError(f"{what}: expected [n, {', '.join(map(str, shape))}] scores, got {list(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{what}: no items")
    if torch.isnan(scores).any():
        raise ValueError(f"{what}: scores contain NaN")
    return scores


def _groups(labels: Sequence[str] | None, n: int, what: str) -> dict[str, torch.Tensor]:
    """{label: mask of its items}, labels in first-seen order; {} without labels."""
    if labels is None:
        return {}
    labels = list(labels)
    if len(labels) != n:
        raise ValueError(f"{what}: {len(labels)} labels for {n} items")
    positions: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        positions[str(label)].append(i)
    masks = {}
    for label, where in positions.items():
        mask = torch.zeros(n, dtype=torch.bool)
        mask[where] = True
        masks[label] = mask
    return masks


def winoground_scores(matrices: Scores, tags: Sequence[str] | None = None) -> dict[str, Any]:
    """Winoground's scores of items whose matrix is s[caption c, image i] (2 x 2; caption c matches image c):
    text: s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1) (each image picks its caption);
    image: s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0) (each caption picks its image); group: both.
    Returns {"text", "image", "group"} as fractions of the items, "count", and with `tags` (one per item)
    "by_tag": {tag: the same for its items}."""
    s = _stack(matrices, (2, 2), "winoground_scores")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    group = text & image

    def scores(mask: torch.Tensor) -> dict[str, Any]:
        return {"text": text[mask].double().mean().item(), "image": image[mask].double().mean().item(),
                "group": group[mask].double().mean().item(), "count": int(mask.sum())}

    result = scores(torch.ones(len(s), dtype=torch.bool))
    if tags is not None:
        result["by_tag"] = {tag: scores(mask) for tag, mask in _groups(tags, len(s), "winoground_scores").items()}
    return result


def pair_accuracy(matrices: Scores, negative_types: Sequence[str] | None = None) -> dict[str, Any]:
    """SVO-Probes / ComVG accuracy of items whose matrix is [s(sentence, positive image), s(sentence, negative image)]
    (1 x 2, or 2 values): an item is right when the positive scores above the negative. Returns {"accuracy", "count"}
    and with `negative_types` (one per item: subject, verb or object) "by_negative_type": {type: the same}."""
    s = _stack(matrices, (1, 2), "pair_accuracy")
    right = s[:, 0, 0] > s[:, 0, 1]
    if negative_types is not None:
        unknown = sorted({str(t) for t in negative_types} - set(NEGATIVE_TYPES))
        if unknown:
            raise ValueError(f"pair_accuracy: unknown negative types {unknown} (expected {', '.join(NEGATIVE_TYPES)})")
    result: dict[str, Any] = {"accuracy": right.double().mean().item(), "count": len(s)}
    if negative_types is not None:
        result["by_negative_type"] = {kind: {"accuracy": right[mask].double().mean().item(), "count": int(mask.sum())}
                                      for kind, mask in _groups(negative_types, len(s), "pair_accuracy").items()}
    return result


# ------------------------------------------------------------------------------------------- retrieval re-ranking
def _similarity(similarity: Scores) -> torch.Tensor:
    sim = torch.as_tensor(similarity.detach().cpu() if isinstance(similarity, torch.Tensor) else similarity,
                          dtype=torch.float64)
    if sim.ndim != 2 or 0 in sim.shape:
        raise ValueError(f"similarity: expected a non-empty [n_texts, n_images] matrix, got {list(sim.shape)}")
    if torch.isnan(sim).any():
        raise ValueError("similarity: contains NaN")
    return sim


def _plain_order(sim: torch.Tensor) -> torch.Tensor:
    """Per row, the columns by descending score; equal scores keep index order."""
    return torch.sort(sim, dim=1, descending=True, stable=True).indices


def rerank_candidates(similarity: Scores, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """The (text, image) pairs a re-ranking of plain CLIP's top `k` reads a score for: each text's top-k images and
    each image's top-k texts by `similarity` [n_texts, n_images], without repeats. Returns (text indices, image
    indices), sorted by text then image."""
    sim = _similarity(similarity)
    k_images, k_texts = min(k, sim.shape[1]), min(k, sim.shape[0])
    t2i = _plain_order(sim)[:, :k_images]
    i2t = _plain_order(sim.T)[:, :k_texts]
    texts = torch.cat([torch.arange(sim.shape[0]).repeat_interleave(k_images), i2t.reshape(-1)])
    images = torch.cat([t2i.reshape(-1), torch.arange(sim.shape[1]).repeat_interleave(k_texts)])
    pairs = torch.unique(texts * sim.shape[1] + images)
    return pairs // sim.shape[1], pairs % sim.shape[1]


def _rerank_matrix(rerank: Rerank, sim: torch.Tensor, k: int) -> torch.Tensor:
    """The re-rank scores as [n_texts, n_images], NaN where no score was asked for."""
    texts, images = rerank_candidates(sim, k)
    full = torch.full_like(sim, float("nan"))
    if callable(rerank):
        got = torch.as_tensor(rerank(texts, images), dtype=torch.float64).reshape(-1)
        if got.numel() != texts.numel():
            raise ValueError(f"rerank: returned {got.numel()} scores for {texts.numel()} (text, image) pairs")
        full[texts, images] = got
    else:
        given = torch.as_tensor(rerank.detach().cpu() if isinstance(rerank, torch.Tensor) else rerank,
                                dtype=torch.float64)
        if given.shape != sim.shape:
            raise ValueError(f"rerank: expected a {list(sim.shape)} matrix (as similarity), got {list(given.shape)}")
        full[texts, images] = given[texts, images]
    if torch.isnan(full[texts, images]).any():
        raise ValueError("rerank: a re-rank score inside the top k is NaN")
    return full


def _reranked_order(sim: torch.Tensor, rerank: torch.Tensor, k: int) -> torch.Tensor:
    """Per row: the plain top k by re-rank score (ties by plain order, which is by plain score), then the rest in
    plain order."""
    order = _plain_order(sim)
    top = order[:, :k]
    by_rerank = torch.sort(torch.gather(rerank, 1, top), dim=1, descending=True, stable=True).indices
    return torch.cat([torch.gather(top, 1, by_rerank), order[:, k:]], dim=1)


def _recalls(order: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """R@K: the fraction of rows whose first relevant column is among the first K of `order`."""
    hits = torch.gather(relevant, 1, order)
    first = torch.where(hits.any(dim=1), hits.double().argmax(dim=1), torch.tensor(order.shape[1]))
    return {f"R@{kk}": (first < kk).double().mean().item() for kk in ks}


def rerank_recall(similarity: Scores, image_of_text: Sequence[int] | torch.Tensor, rerank: Rerank, k: int = 10,
                  ks: Sequence[int] = (1, 5)) -> dict[str, dict[str, dict[str, float]]]:
    """Retrieval recall before and after re-ranking plain CLIP's top `k`.

    `similarity` [n_texts, n_images]: plain CLIP's scores; `image_of_text[t]`: the image caption t describes (an
    image may have several captions); `rerank`: the re-rank score of (text, image) pairs -- a [n_texts, n_images]
    matrix (only the pairs `rerank_candidates` names are read) or a function (text indices, image indices) -> scores,
    called once with those pairs. text->image ranks the images of each text, image->text the texts of each image
    (a hit when any of its captions is within the first K). Inside the top k the re-rank score orders, equal re-rank
    scores keep plain order; past the top k the plain order stays. Returns {"plain" | "reranked": {"text_to_image" |
    "image_to_text": {"R@1": ..., "R@5": ...}}}."""
    sim = _similarity(similarity)
    n_texts, n_images = sim.shape
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    gt = torch.as_tensor(image_of_text, dtype=torch.long).reshape(-1)
    if gt.numel() != n_texts:
        raise ValueError(f"image_of_text: {gt.numel()} entries for {n_texts} texts")
    if ((gt < 0) | (gt >= n_images)).any():
        raise ValueError(f"image_of_text: indices must be in [0, {n_images})")
    relevant = torch.zeros(n_texts, n_images, dtype=torch.bool)
    relevant[torch.arange(n_texts), gt] = True
    scores = _rerank_matrix(rerank, sim, k)
    directions = {"text_to_image": (sim, scores, relevant), "image_to_text": (sim.T, scores.T, relevant.T)}
    result: dict[str, dict[str, dict[str, float]]] = {"plain": {}, "reranked": {}}
    for name, (plain, reranked, rel) in directions.items():
        result["plain"][name] = _recalls(_plain_order(plain), rel, ks)
        result["reranked"][name] = _recalls(_reranked_order(plain, reranked, min(k, plain.shape[1])), rel, ks)
    return result

