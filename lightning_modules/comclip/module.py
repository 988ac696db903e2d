"""ComCLIP as a LightningModule run by Lightning's test loop (`python launch/evaluate.py test --config ...`).

Training-free: nothing trains and nothing is checkpointed. Each test item is scored by plain CLIP and by ComCLIP in
the same pass (fusion.py ComCLIPScorer), so every number is reported beside plain CLIP's on the same run:

- winoground (Winoground, the synthetic compositional task): a 2 captions x 2 images score matrix per item ->
  text / image / group scores, per tag too;
- pairs (SVO-Probes, ComVG): the sentence against its positive and negative image -> accuracy by negative type;
- rerank (retrieval shards): every rank first embeds the whole gallery with plain CLIP (each caption's top k images
  and each image's top k captions); an item is one image, scored by ComCLIP against its own top k captions and
  against the captions that have it in their top k; at the end both directions are re-ranked -> R@1 / R@5 before and
  after.

Items are kept per rank as they finish (lightning_modules/test_items.py), so a stopped evaluation resumes where it
stopped, on any number of ranks; an item whose image is missing or whose captions cannot be parsed is counted, never
dropped: a parse failure scores with plain CLIP, an item without its images is listed with its error. When every rank
is done the results are written to RUN/test/: results.json, items.jsonl (every item, sorted), summary.md.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch

from datamodules.files import atomic_write_text
from datamodules.shard_datamodule import TEST_SPLIT
from lightning_modules.comclip.data import TestItem
from lightning_modules.comclip.fusion import ComCLIPScorer
from lightning_modules.comclip.grounding import DataBoxes, DetectorGrounder
from lightning_modules.comclip.metrics import pair_accuracy, rerank_candidates, rerank_recall, winoground_scores
from lightning_modules.comclip.parsing import build_parser, parser_config_problems
from datamodules.errors import raise_param_problems
from datamodules.param_types import KwargsOf, model_source_problem
from lightning_modules.frozen_clip import FrozenCLIP
from lightning_modules.test_items import TEST_DIR, ItemJournal

DEFAULT_PARSERS = ({"kind": "triplets"}, {"kind": "rules"})
GROUNDING_KINDS = ("data", "detector", "none")


def grounding_problems(grounding: Any, check_files: bool) -> list[tuple[str, str]]:
    if not isinstance(grounding, dict):
        return [("grounding", "must be a mapping: {kind: data} | {kind: detector, model_path: DIR, threshold: 0.1} "
                              "| {kind: none}")]
    kind = grounding.get("kind")
    if kind not in GROUNDING_KINDS:
        return [("grounding.kind", f"must be one of {', '.join(GROUNDING_KINDS)}, got {kind!r}")]
    extra = set(grounding) - ({"kind", "model_path", "threshold", "max_boxes", "device"} if kind == "detector"
                              else {"kind"})
    problems = [(f"grounding.{k}", f"unknown key for grounding kind {kind}") for k in sorted(extra)]
    if kind == "detector":
        path = grounding.get("model_path")
        if not isinstance(path, str) or not path:
            problems.append(("grounding.model_path", "give the zero-shot detector: a local directory or HF id "
                                                     "(OWL-ViT, OWLv2, Grounding DINO)"))
        elif check_files and (problem := model_source_problem(path)):
            problems.append(("grounding.model_path", problem))
        threshold = grounding.get("threshold", 0.1)
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            problems.append(("grounding.threshold", f"must be a number in [0, 1], got {threshold!r}"))
    return problems


class ComCLIP(L.LightningModule):
    """clip: FrozenCLIP's params (pretrained: HF id or local dir). parsers: tried in order, first success wins
    (kinds triplets | cached | rules | instruct; parsing.py). grounding: {kind: data} boxes from the items' json,
    {kind: detector, model_path, threshold, max_boxes} a transformers zero-shot detector, {kind: none} whole image.
    weighting: ratio (w_i = s_i / sum s_j) or softmax (temperature). top_k: CLIP's candidates re-ranked (rerank)."""

    def __init__(self, clip: Annotated[dict[str, Any], KwargsOf(FrozenCLIP)],
                 parsers: list[dict[str, Any]] | None = None, grounding: dict[str, Any] | None = None,
                 weighting: Literal["ratio", "softmax"] = "ratio", temperature: float = 0.01, top_k: int = 10,
                 clip_batch_size: int = 64):
        super().__init__()
        parsers = [dict(p) for p in (parsers if parsers is not None else DEFAULT_PARSERS)]
        grounding = dict(grounding) if grounding is not None else {"kind": "data"}
        raise_param_problems(self.config_problems({"parsers": parsers, "grounding": grounding,
                                                   "temperature": temperature, "top_k": top_k,
                                                   "clip_batch_size": clip_batch_size}))
        self.save_hyperparameters()
        self.clip = FrozenCLIP(**clip)
        self.parser = build_parser(parsers)
        if grounding["kind"] == "detector":
            self.grounder: Any = DetectorGrounder(**{k: v for k, v in grounding.items() if k != "kind"})
        else:
            self.grounder = DataBoxes() if grounding["kind"] == "data" else None
        self.scorer = ComCLIPScorer(self.clip, self.parser, self.grounder, weighting=weighting,
                                    temperature=temperature, batch_size=clip_batch_size)
        self.top_k = top_k
        self.task = ""
        self.benchmark = ""
        self.journal: ItemJournal | None = None
        self.done: set[str] = set()
        self.gallery: dict[str, Any] = {}

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        problems = []
        parsers = params.get("parsers")
        if parsers is not None:
            problems += parser_config_problems(list(parsers), check_files=check_files)
        if params.get("grounding") is not None:
            problems += grounding_problems(dict(params["grounding"]) if hasattr(params["grounding"], "keys")
                                           else params["grounding"], check_files)
        if params.get("temperature", 0.01) <= 0:
            problems.append(("temperature", f"must be > 0, got {params['temperature']}"))
        if params.get("top_k", 10) < 1:
            problems.append(("top_k", f"must be >= 1, got {params['top_k']}"))
        if params.get("clip_batch_size", 64) < 1:
            problems.append(("clip_batch_size", f"must be >= 1, got {params['clip_batch_size']}"))
        return problems

    # -- nothing trains ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("ComCLIP is training-free: run it with `python launch/evaluate.py test --config ...`")

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}  # every weight is a frozen pretrained one, loaded from its source

    # -- the test loop ----------------------------------------------------------------------------------------
    @property
    def results_dir(self) -> Path:
        return Path(self.trainer.default_root_dir) / TEST_DIR

    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        dm = self.trainer.datamodule
        self.task, self.benchmark = dm.task(), dm.benchmark()
        self.journal = ItemJournal(self.results_dir, self.trainer.global_rank)
        self.done = self.journal.done_keys()

    def on_test_start(self) -> None:
        if isinstance(self.grounder, DetectorGrounder):  # not a submodule: Lightning moves only the CLIP
            self.grounder.to(self.device)
        if self.task == "rerank":
            self.gallery = self.embed_gallery(self.trainer.datamodule)

    @torch.no_grad()
    def embed_gallery(self, dm: Any) -> dict[str, Any]:
        """Plain CLIP over the whole gallery, and the (caption, image) pairs the re-ranking needs a ComCLIP score
        for: each caption's top k images and each image's top k captions. An image that is missing leaves the
        gallery with its captions (its item is counted with its error)."""
        images: dict[int, torch.Tensor] = {}
        readable = (item for item in dm.all_items() if item.error is None)
        # read a pass of the scorer's batch size at a time: never the whole gallery's pixels in memory at once
        while group := list(itertools.islice(readable, self.scorer.batch_size)):
            embedded = self.scorer.image_embeddings([item.images[0] for item in group])
            images.update({int(item.fields["image_index"]): e for item, e in zip(group, embedded)})
        order = sorted(images)
        column = {index: c for c, index in enumerate(order)}
        kept = [(c, owner) for c, owner in enumerate(dm.caption_owners()) if owner in column]
        all_captions = dm.captions()
        captions = [all_captions[c] for c, _ in kept]
        embedded = self.scorer.text_embeddings(captions)
        similarity = (torch.stack([embedded[c] for c in captions]) @ torch.stack([images[i] for i in order]).T).cpu()
        texts, columns = rerank_candidates(similarity, self.top_k)
        candidates: dict[int, list[int]] = {index: [] for index in order}
        for text, c in zip(texts.tolist(), columns.tolist()):
            candidates[order[c]].append(text)
        return {"captions": captions, "image_of_caption": [column[owner] for _, owner in kept], "order": order,
                "column": column, "similarity": similarity, "candidates": candidates,
                "left_out_captions": len(all_captions) - len(kept)}

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        records = [self.score_item(item) for item in batch["item"] if item.key not in self.done]
        self.journal.append(records)
        self.done.update(r["key"] for r in records)

    def score_item(self, item: TestItem) -> dict[str, Any]:
        record: dict[str, Any] = {"key": item.key, "task": self.task}
        if item.error is not None:
            return {**record, "error": item.error, "fields": _public_fields(item.fields)}
        if self.task == "rerank":
            index = int(item.fields["image_index"])
            caption_ids = self.gallery["candidates"].get(index, [])
            scores = self.scorer.score(item.images, [self.gallery["captions"][c] for c in caption_ids], item.fields)
            return {**record, "image_index": index, "caption_ids": caption_ids,
                    "clip": scores.clip[:, 0].tolist(), "comclip": scores.comclip[:, 0].tolist(),
                    "parses": scores.parses}
        scores = self.scorer.score(item.images, list(item.fields["captions"]), item.fields)
        return {**record, "id": str(item.fields.get("id", item.key)), "captions": item.fields["captions"],
                "clip": scores.clip.tolist(), "comclip": scores.comclip.tolist(), "parses": scores.parses,
                "details": scores.details, "fields": _public_fields(item.fields)}

    def on_test_epoch_end(self) -> None:
        self.trainer.strategy.barrier("comclip_items_written")
        records = self.journal.records()
        results = self.results(records)
        for name, value in _flat_metrics(results["metrics"]).items():
            if "/by_" not in name and not name.endswith("/count"):  # the breakdowns are in results.json
                self.log(name, value, rank_zero_only=True)
        if self.trainer.is_global_zero:
            write_results(self.results_dir, results, records)
        self.trainer.strategy.barrier("comclip_results_written")

    # -- results ----------------------------------------------------------------------------------------------
    def results(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        scored = [r for r in records if "error" not in r]
        errors = [r for r in records if "error" in r]
        failures = [p["failure"] for r in scored for p in r["parses"] if p.get("failure")]
        captions = sum(len(r["parses"]) for r in scored)
        health = self.trainer.datamodule.health.get(TEST_SPLIT)
        summary: dict[str, Any] = {
            "benchmark": self.benchmark, "task": self.task, "items": len(records), "scored": len(scored),
            "errors": {"count": len(errors), "examples": [{"key": r["key"], "error": r["error"]} for r in errors[:20]]},
            "parse_failures": {"count": len(failures), "captions": captions, "examples": failures[:20]},
            "unreadable_samples": health.total_bad if health is not None else 0,
            "settings": {k: v for k, v in self.hparams.items() if k != "clip"} | {"clip": dict(self.hparams.clip)},
        }
        if self.task == "winoground":
            tags = [r["fields"].get("tag") for r in scored]
            summary["metrics"] = {method: winoground_scores([torch.tensor(r[method]) for r in scored],
                                                            tags if all(isinstance(t, str) for t in tags) else None)
                                  for method in ("clip", "comclip")}
        elif self.task == "pairs":
            types = [r["fields"].get("negative_type") for r in scored]
            summary["metrics"] = {method: pair_accuracy([torch.tensor(r[method]) for r in scored], types)
                                  for method in ("clip", "comclip")}
        else:
            summary["metrics"] = self.rerank_metrics(scored)
        return summary

    def rerank_metrics(self, scored: list[dict[str, Any]]) -> dict[str, Any]:
        """Both directions, plain CLIP's ranking and its top k re-ranked by the items' ComCLIP scores."""
        gallery = self.gallery
        pair_scores = torch.full(gallery["similarity"].shape, float("nan"), dtype=torch.float64)
        for record in scored:
            column = gallery["column"][record["image_index"]]
            for caption, score in zip(record["caption_ids"], record["comclip"]):
                pair_scores[caption, column] = score
        recall = rerank_recall(gallery["similarity"], gallery["image_of_caption"], pair_scores, k=self.top_k)
        return {"clip": recall["plain"], "comclip": recall["reranked"],
                "left_out_captions": gallery["left_out_captions"]}


def _public_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The item's json as recorded per item: without the boxes (large, and in the shards already)."""
    return {k: v for k, v in fields.items() if k != "boxes"}


def _flat_metrics(metrics: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(_flat_metrics(value, name))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


def write_results(directory: Path, results: dict[str, Any], records: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "items.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    atomic_write_text(directory / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(directory / "summary.md", summary_table(results))


def summary_table(results: dict[str, Any]) -> str:
    """Markdown: each metric for plain CLIP and ComCLIP, side by side (rerank: ComCLIP re-ranks CLIP's top k)."""
    metrics = results["metrics"]
    lines = [f"# ComCLIP on {results['benchmark']} ({results['scored']} of {results['items']} items scored; "
             f"{results['errors']['count']} with errors; {results['parse_failures']['count']} of "
             f"{results['parse_failures']['captions']} captions unparsed, scored by plain CLIP)", ""]
    clip, comclip = _flat_metrics(metrics["clip"], ""), _flat_metrics(metrics["comclip"], "")
    lines += ["| metric | CLIP | ComCLIP |", "|---|---|---|"]
    for name in clip:
        if name in comclip and not name.endswith("/count"):
            lines.append(f"| {name.strip('/')} | {100 * clip[name]:.1f} | {100 * comclip[name]:.1f} |")
    return "\n".join(lines) + "\n"
