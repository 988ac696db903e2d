"""BERTScore-similar classes: the negatives CPL builds its counterfactuals from.

For each class text (a class name, a caption, a question+answer prompt) we want the k most similar *other* class
texts by BERTScore F1. Calling ``bert_score.score`` on all n^2 pairs would embed every text 2n times, so instead each
text is embedded once, with bert-score's own loading, layer selection, tokenisation and idf helpers, and the greedy
matching is done for all pairs at once in blocks. The F1 matrix is cached on disk, keyed by the texts, the scorer and
the library versions, so a fit that restarts never loads the scorer model again.

Differences from ``bert_score.score`` (all documented where they arise):
- ``idf=True`` weighs tokens by their idf over the class texts, each text counted once (what ``bert_score.score``
  computes for ``refs`` = the text list; scoring the n^2 pair list directly would count each text n times).
- Greedy matching ignores padding exactly. ``bert_score.score`` zeroes padded similarities instead, so when a token's
  best real match is negative its result depends on which other pairs share the batch; for real scorers cosine
  similarities of contextual embeddings are positive and the two agree.
- Half-precision scorers are compared in float32.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import numbers
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import raise_param_problems
from datamodules.files import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache file layout or the meaning of its numbers changes
_BLOCK_ELEMENTS = 1 << 24  # token-similarity entries per block of pairs (64 MiB in float32)
_PAD_SIMILARITY = -2.0  # below any cosine similarity, so a padded token never wins a max
_UNSET_MAX_LENGTH = 10**9  # transformers' placeholder for "no model_max_length" is ~1e30
_WHOLE_FILE_HASH_LIMIT = 64 << 20  # bigger model files are fingerprinted by size + sampled chunks
_SAMPLE_BYTES = 4 << 20


@dataclass(frozen=True)
class ScorerSpec:
    """The BERTScore scorer: bert-score's ``model_type``, ``num_layers``, ``idf`` and baseline rescaling.

    ``num_layers=None`` takes bert-score's tuned layer for the models it lists; a local path needs it given.
    ``lang`` only locates the baseline bundled with bert-score (``rescale_baseline/<lang>/<model>.tsv``) and is
    ignored unless ``rescale_with_baseline``. Rescaling is monotone, so it changes the F1 values, never the negatives.
    """

    model: str
    num_layers: int | None = None
    idf: bool = False
    rescale_with_baseline: bool = False
    lang: str = "en"

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.model, str) or not self.model.strip():
            problems.append(("model", f"must be a non-empty HF id or local path, got {self.model!r}"))
        if self.num_layers is not None and (isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int)
                                            or self.num_layers < 0):
            problems.append(("num_layers", f"must be None or an int >= 0, got {self.num_layers!r}"))
        for name in ("idf", "rescale_with_baseline"):
            if not isinstance(getattr(self, name), bool):
                problems.append((name, f"must be true or false, got {getattr(self, name)!r}"))
        if not isinstance(self.lang, str) or not self.lang:
            problems.append(("lang", f"must be a language code such as 'en', got {self.lang!r}"))
        raise_param_problems(problems)


# -- input checks ------------------------------------------------------------------------------------------------
def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of class texts, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: need at least one class text")
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
        stripped = text.strip()  # bert-score strips every text, so texts differing only in outer spaces are one text
        if not stripped:
            raise ValueError(f"texts[{i}] is empty or whitespace only")
        if stripped in seen:
            j = seen[stripped]
            same = "" if texts[j] == text else f" (same as {texts[j]!r} once outer whitespace is stripped)"
            raise ValueError(f"duplicate text {text!r} at indices {j} and {i}{same}: class texts must be distinct")
        seen[stripped] = i
    return texts


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an int, got {k!r}")
    k = int(k)
    if not 1 <= k < n:
        raise ValueError(f"k={k} must satisfy 1 <= k < number of texts ({n}): each class needs k other classes")
    return k


# -- scorer ------------------------------------------------------------------------------------------------------
def _resolve_num_layers(scorer: ScorerSpec) -> int:
    """The layer bert_score.score would use; bert-score itself fails with a bare KeyError for unlisted models."""
    if scorer.num_layers is not None:
        return scorer.num_layers
    from bert_score import utils as bs

    if scorer.model not in bs.model2layers:
        raise ValueError(f"ScorerSpec.num_layers is required for model {scorer.model!r}: bert-score has no default "
                         f"layer for it (it lists only known hub ids, never local paths)")
    return bs.model2layers[scorer.model]


def _baseline_file(scorer: ScorerSpec) -> Path:
    """The rescale baseline bert-score ships for this model and language (nothing is downloaded)."""
    import bert_score

    return Path(bert_score.__file__).parent / "rescale_baseline" / scorer.lang / f"{scorer.model}.tsv"


def _baseline_f(scorer: ScorerSpec, num_layers: int) -> float:
    path = _baseline_file(scorer)
    # bert-score only warns and returns unrescaled scores when the file is missing; silently unrescaled numbers
    # under a spec that says "rescaled" would poison the cache, so refuse instead.
    if not path.is_file():
        raise ValueError(f"ScorerSpec.rescale_with_baseline: bert-score ships no baseline for model {scorer.model!r} "
                         f"and lang {scorer.lang!r} (looked for {path})")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not 0 <= num_layers < len(rows) or "F" not in rows[0]:
        raise ValueError(f"ScorerSpec.rescale_with_baseline: {path} has no F baseline for layer {num_layers}")
    return float(rows[num_layers]["F"])  # bert-score takes the row by position (iloc[num_layers]), as here


def _load_scorer(scorer: ScorerSpec, num_layers: int, device: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and layer-truncated model exactly as bert_score.score loads them."""
    from bert_score import utils as bs

    tokenizer = bs.get_tokenizer(scorer.model, False)  # bert_score.score's default use_fast_tokenizer=False
    try:
        model = bs.get_model(scorer.model, num_layers)
    except AssertionError as err:  # bert-score checks the layer range with assert
        raise ValueError(f"ScorerSpec.num_layers={num_layers}: {err}") from None
    if tokenizer.model_max_length > _UNSET_MAX_LENGTH:
        # bert-score truncates every text to model_max_length; with transformers 5 an unset one (~1e30) makes the
        # Rust tokenizer raise OverflowError. Fall back to the position-embedding limit (texts that fit it score as
        # they would with any larger limit).
        tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", None) or 512
    return tokenizer, model.to(device)


def _idf_weights(texts: list[str], tokenizer: Any, idf: bool) -> dict[int, float]:
    from bert_score import utils as bs

    if idf:  # each class text is one document
        return bs.get_idf_dict(texts, tokenizer, nthreads=0)
    # bert_score.score without idf: every token weighs 1 except [CLS]/[SEP], which still take part in the matching
    weights: dict[int, float] = defaultdict(lambda: 1.0)
    weights[tokenizer.sep_token_id] = 0
    weights[tokenizer.cls_token_id] = 0
    return weights


@torch.no_grad()
def _embed(texts: list[str], tokenizer: Any, model: torch.nn.Module, idf_dict: dict[int, float], device: str,
           batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each text once: L2-normalised token embeddings [n, L, d] (zeros on padding), lengths [n], token weights
    [n, L] summing to 1 per text (bert-score's normalised idf)."""
    from bert_score import utils as bs

    # bert-score batches texts longest first (by word count), which keeps padding inside a batch small
    order = sorted(range(len(texts)), key=lambda i: len(texts[i].split(" ")), reverse=True)
    embeddings: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    weights: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for start in range(0, len(texts), batch_size):
        batch = order[start:start + batch_size]
        emb, mask, idf = bs.get_bert_embedding([texts[i] for i in batch], model, tokenizer, idf_dict, device=device)
        for row, i in enumerate(batch):
            length = int(mask[row].sum())
            e = emb[row, :length].float()
            embeddings[i] = e / e.norm(dim=-1, keepdim=True)
            w = idf[row, :length].float().to(e.device)
            weights[i] = w / w.sum()  # 0/0 = nan when every token has idf 0; F1 becomes 0 below, as in bert-score
    lengths = torch.tensor([e.shape[0] for e in embeddings])
    pad = torch.nn.utils.rnn.pad_sequence
    return pad(embeddings, batch_first=True), lengths, pad(weights, batch_first=True)


@torch.no_grad()
def _pairwise_f1(emb: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Greedy-matching F1 of every candidate i against every reference j, in blocks of pairs.

    A block holds the token similarities of bi candidates x bj references ([bi, La, bj, Lb], one matmul). Texts are
    sorted by length first so each block is trimmed to its own longest text. F1 is symmetric (P of (i, j) is R of
    (j, i) because a text carries the same weights as candidate and as reference), so only blocks with j >= i are
    computed.
    """
    n, max_len, dim = emb.shape
    order = torch.argsort(lengths, descending=True, stable=True)
    emb, lengths, weights = emb[order], lengths[order].tolist(), weights[order]
    mask = torch.arange(max_len, device=emb.device) < torch.tensor(lengths, device=emb.device)[:, None]
    block = max(1, math.isqrt(_BLOCK_ELEMENTS // (max_len * max_len)))
    f1 = torch.empty(n, n, device=emb.device)
    for a0 in range(0, n, block):
        a1 = min(n, a0 + block)
        la = lengths[a0]  # longest text of the block (sorted descending)
        cand, cand_mask, cand_w = emb[a0:a1, :la], mask[a0:a1, :la], weights[a0:a1, :la]
        for b0 in range(a0, n, block):
            b1 = min(n, b0 + block)
            lb = lengths[b0]
            ref, ref_mask, ref_w = emb[b0:b1, :lb], mask[b0:b1, :lb], weights[b0:b1, :lb]
            bi, bj = a1 - a0, b1 - b0
            sim = (cand.reshape(bi * la, dim) @ ref.reshape(bj * lb, dim).T).view(bi, la, bj, lb)
            sim.masked_fill_(~cand_mask.view(bi, la, 1, 1), _PAD_SIMILARITY)
            sim.masked_fill_(~ref_mask.view(1, 1, bj, lb), _PAD_SIMILARITY)
            # padded tokens have weight 0, so their (masked) maxima drop out of the weighted sums
            precision = (sim.amax(dim=3) * cand_w.unsqueeze(2)).sum(dim=1)  # [bi, bj]
            recall = (sim.amax(dim=1) * ref_w.unsqueeze(0)).sum(dim=2)  # [bi, bj]
            f = 2 * precision * recall / (precision + recall)
            f = f.masked_fill(torch.isnan(f), 0.0)  # as bert-score
            f1[a0:a1, b0:b1] = f
            f1[b0:b1, a0:a1] = f.T
    inverse = torch.argsort(order)
    return f1[inverse][:, inverse]


def bertscore_f1_matrix(texts: list[str], scorer: ScorerSpec, device: str = "cpu",
                        batch_size: int = 64) -> torch.Tensor:
    """[n, n] float32 on the CPU: F1[i, j] = BERTScore F1 of candidate texts[i] against reference texts[j], equal to
    ``bert_score.score([texts[i]], [texts[j]], model_type=scorer.model, num_layers=...)`` (see the module notes).
    batch_size: texts per forward pass of the scorer."""
    texts = _check_texts(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_layers = _resolve_num_layers(scorer)
    baseline = _baseline_f(scorer, num_layers) if scorer.rescale_with_baseline else None  # fail before loading
    tokenizer, model = _load_scorer(scorer, num_layers, device)
    idf_dict = _idf_weights(texts, tokenizer, scorer.idf)
    emb, lengths, weights = _embed(texts, tokenizer, model, idf_dict, device, batch_size)
    del model  # free the scorer before the pairwise pass
    f1 = _pairwise_f1(emb, lengths, weights).cpu()
    if baseline is not None:
        base = torch.tensor(baseline, dtype=torch.float32)
        f1 = (f1 - base) / (1 - base)
    return f1.contiguous()


def top_k_negatives(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[n, k] long: for each row i the k columns j != i with the highest scores[i, j], most similar first.
    Ties go to the lower index; i itself is excluded by position, so it is never picked even if it ties."""
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [n, n] matrix, got shape {tuple(scores.shape)}")
    _check_k(k, scores.shape[0])
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain nan or inf")
    masked = scores.detach().to(torch.float64).clone()
    masked.fill_diagonal_(-math.inf)  # finite scores elsewhere, so i sorts after every other class
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    return order[:, :k].long().cpu()


# -- cache -------------------------------------------------------------------------------------------------------
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        if size <= _WHOLE_FILE_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        else:  # multi-GB weights: size plus start, middle and end keeps a cache hit cheap
            for offset in (0, (size - _SAMPLE_BYTES) // 2, size - _SAMPLE_BYTES):
                fh.seek(offset)
                digest.update(fh.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def _model_fingerprint(model: str) -> dict[str, str] | None:
    """Content digests of a local scorer directory, so retraining a model in place invalidates the cache; None for a
    hub id (named by its id)."""
    root = Path(model).expanduser()
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return {p.relative_to(root).as_posix(): _file_digest(p) for p in files}


def _cache_key(texts: list[str], scorer: ScorerSpec) -> tuple[str, str]:
    """(canonical JSON of everything the numbers depend on, its sha256)."""
    spec = asdict(scorer)
    if not scorer.rescale_with_baseline:
        del spec["lang"]  # only locates the baseline
    key = {"format": CACHE_FORMAT, "texts": texts, "scorer": spec, "model_files": _model_fingerprint(scorer.model),
           "bert_score": _version("bert-score"), "transformers": _version("transformers")}
    canonical = json.dumps(key, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return canonical, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def cache_file(texts: list[str], scorer: ScorerSpec, cache_dir: str | Path) -> Path:
    """Where bertscore_negatives keeps the F1 matrix of these texts under this scorer."""
    return Path(cache_dir).expanduser() / f"bertscore-f1-{_cache_key(_check_texts(texts), scorer)[1]}.safetensors"


def _read_cache(path: Path, key: str, n: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                raise ValueError("written for other texts or another scorer")
            f1 = fh.get_tensor("f1")
        if f1.dtype != torch.float32 or tuple(f1.shape) != (n, n) or not torch.isfinite(f1).all():
            raise ValueError(f"holds a {f1.dtype} tensor of shape {tuple(f1.shape)}, expected finite float32 "
                             f"({n}, {n})")
        return f1
    except Exception as err:  # any unreadable file (truncated, corrupt, foreign) is recomputed, never fatal
        log.warning("ignoring BERTScore cache %s (%s: %s); recomputing", path, type(err).__name__, err)
        return None


def _write_cache(path: Path, f1: torch.Tensor, key: str, texts: list[str]) -> None:
    """Written atomically: readers see the old file or the complete new one, never half."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"f1": f1.contiguous()},
                                  metadata={"key": key, "texts": json.dumps(texts, ensure_ascii=False)}))


def bertscore_scores(texts: list[str], scorer: ScorerSpec, cache_dir: str | Path, device: str = "cpu") -> torch.Tensor:
    """[n, n] float32: BERTScore F1 between every pair of texts (candidate i, reference j).

    Read from ``cache_file(texts, scorer, cache_dir)`` when present and valid; otherwise computed on ``device`` and
    written there atomically.
    """
    texts = _check_texts(texts)
    key, digest = _cache_key(texts, scorer)
    path = Path(cache_dir).expanduser() / f"bertscore-f1-{digest}.safetensors"
    f1 = _read_cache(path, key, len(texts))
    if f1 is None:
        f1 = bertscore_f1_matrix(texts, scorer, device=device)
        try:
            _write_cache(path, f1, key, texts)
            log.info("BERTScore F1 of %d texts cached at %s", len(texts), path)
        except OSError as err:  # an unwritable cache costs a recompute next time, not this run
            log.warning("could not write BERTScore cache %s: %s", path, err)
    return f1


def bertscore_negatives(texts: list[str], k: int, scorer: ScorerSpec, cache_dir: str | Path,
                        device: str = "cpu") -> torch.Tensor:
    """[n, k] long: each text's k most BERTScore-similar other texts, most similar first (F1 from
    ``bertscore_scores``, whose cache does not depend on k)."""
    _check_k(k, len(_check_texts(texts)))
    return top_k_negatives(bertscore_scores(texts, scorer, cache_dir, device), k)
