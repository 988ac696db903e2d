"""A fixed, stratified subset of a benchmark's questions (validation during training asks only a few).

Strata are the breakdowns the papers report first: VLM4D split and group (real_exo, real_ego, synthetic_directional,
synthetic_fp), MMWorld discipline. Each stratum gets a share of the subset proportional to its size (largest
remainders), at least one question while the subset has room for every stratum; which questions is drawn with a
generator seeded by (seed, stratum), so the subset depends only on the questions and the seed.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from datamodules.benchmarks.questions import Question


def stratum_of(question: Question) -> str:
    if question.benchmark == "vlm4d":
        return f"{question.split}_{question.categories['group']}"
    return question.categories.get("discipline", "")


def stratum_quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many questions each stratum gives to an n-question subset (sum min(n, total))."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    names = sorted(sizes)
    if n < len(names):  # no room for every stratum: the largest ones get one each
        chosen = sorted(names, key=lambda s: (-sizes[s], s))[:n]
        return {s: int(s in chosen) for s in names}
    exact = {s: n * sizes[s] / total for s in names}
    quotas = {s: min(sizes[s], max(1, math.floor(exact[s]))) for s in names}
    while sum(quotas.values()) > n:  # the minimum of one overshot: take back from the most over-served
        s = max((s for s in names if quotas[s] > 1), key=lambda s: (quotas[s] - exact[s], s))
        quotas[s] -= 1
    while sum(quotas.values()) < n:  # largest remainders first
        s = max((s for s in names if quotas[s] < sizes[s]), key=lambda s: (exact[s] - quotas[s], s))
        quotas[s] += 1
    return quotas


def stratified_subset(questions: Sequence[Question], n: int, seed: int = 0) -> list[Question]:
    """n questions (all if there are fewer), proportional per stratum, in the order they were given."""
    if n < 1:
        raise ValueError(f"a subset needs at least one question, got n={n}")
    strata: dict[str, list[int]] = {}
    for position, q in enumerate(questions):
        strata.setdefault(stratum_of(q), []).append(position)
    quotas = stratum_quotas({s: len(members) for s, members in strata.items()}, n)
    chosen: set[int] = set()
    for stratum, members in strata.items():
        ordered = sorted(members, key=lambda p: questions[p].key)  # the file order does not matter, only which
        chosen.update(random.Random(f"{seed}/{stratum}").sample(ordered, quotas[stratum]))
    return [q for position, q in enumerate(questions) if position in chosen]
