"""A word-level CLIP tokenizer built locally from the synthetic-shapes vocabulary.

CLIP's tokenizer is byte-level BPE: text is lowercased, split into words, each word's bytes are mapped to 256
printable symbols (the "byte alphabet"), the last symbol of a word carries the suffix `</w>`, and merges join
adjacent symbols. Here every vocabulary word gets a chain of merges that joins it, left to right, into one token
`word</w>`; every byte symbol (with and without `</w>`) is in the vocabulary too, so an unknown word still
tokenizes, one token per byte. The files are CLIP's own (vocab.json + merges.txt, plus what transformers'
`save_pretrained` adds), so `CLIPTokenizer.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase

from datamodules.synthetic_shapes import BACKGROUND_NAMES, COLORS, SHAPES

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
# Words of the captions (see data.py) and of the prompts a prompt learner starts from ("a photo of a", CoOp's "X"
# placeholders), plus a few common caption words.
TEMPLATE_WORDS = ("a", "an", "the", "photo", "picture", "image", "of", "on", "in", "with", "background", "shape",
                  "colored", "small", "large", "x", "this", "is", "and")
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys((*TEMPLATE_WORDS, *COLORS, *SHAPES, *BACKGROUND_NAMES)))


def byte_alphabet() -> list[str]:
    """The 256 symbols byte-level BPE maps bytes to, in code point order."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one word: repeatedly join the adjacent pair with the lowest merge rank."""
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        known = [(rank, i) for rank, i in pairs if rank is not None]
        if not known:
            break
        _, i = min(known)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]
    return symbols


def vocab_and_merges(words: Iterable[str] = VOCABULARY) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's layout: byte symbols, the same with `</w>`, merged tokens in merge order, then the two specials.

    Each word is segmented with the merges made so far and its remaining pieces are joined left to right by new,
    lower-priority merges: a later merge never changes how an earlier word is segmented (BPE takes the
    highest-priority merge available, and the earlier word always had one until it was whole)."""
    alphabet = byte_alphabet()
    vocab = {s: i for i, s in enumerate(alphabet + [s + SUFFIX for s in alphabet])}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _byte_symbols(word.lower())
        if not symbols:
            continue
        symbols[-1] += SUFFIX
        pieces = _segment(symbols, ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    return vocab, merges


def _byte_symbols(word: str) -> list[str]:
    """A word's bytes as byte-alphabet symbols (what the ByteLevel pre-tokenizer produces)."""
    [(mapped, _)] = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(word)
    return list(mapped)


def build_tokenizer(words: Sequence[str] = VOCABULARY, model_max_length: int = 32) -> CLIPTokenizer:
    """An in-memory CLIPTokenizer whose vocabulary words are single tokens."""
    vocab, merges = vocab_and_merges(words)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    unjoined = [w for w in words if len(tokenizer(w, add_special_tokens=False)["input_ids"]) != 1]
    if unjoined:
        raise ValueError(f"vocabulary words that do not tokenize to one token: {', '.join(unjoined)} "
                         f"(a word must be lowercase letters only)")
    return tokenizer


def save_tokenizer(tokenizer: CLIPTokenizer, directory: str | Path) -> Path:
    """Write a tokenizer to `directory`: transformers' files (tokenizer.json, tokenizer_config.json) and CLIP's
    vocab.json + merges.txt, which transformers 5 no longer writes itself."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    tokenizer.backend_tokenizer.model.save(str(directory))
    return directory


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved at `path`, or the project's word-level one (`build_tokenizer()`) when None."""
    return build_tokenizer() if path is None else AutoTokenizer.from_pretrained(str(path))
