"""CoOp, CoCoOp and CPL in one LightningModule: prompts learned for a frozen CLIP (DESIGN.md "CPL").

- coop:   shared (or class-specific) context vectors, cross-entropy on scaled cosine logits;
- cocoop: the context shifted per image by a meta-net;
- cpl:    cocoop + counterfactual images v' = (1-u)*v + u*v_neg (v_neg: a batch image of a BERTScore-similar class),
          loss CE + lambda * L_con + beta * mean|u|.

The task comes from the datamodule (lightning_modules/cpl/data.py), and with it what a "class" is:
- classification: a class name. Training prompts the training classes; each validation set is prompted with its own
  classes (base-to-new: the new classes get the context learned on the base ones). Metric: accuracy, and the
  harmonic mean of base and new.
- retrieval: a caption. A training step's classes are the batch's captions (one per image); an evaluation image is
  ranked against every caption of its set. Metric: image->text R@1 (the top caption is one of the image's own).
- vqa: a question-answer prompt. Each question's classes are the answer vocabulary put into the data's template.
  Metric: VQA accuracy of the top answer.
Negatives are BERTScore-similar training texts (class names, captions, question-answer prompts). Validation also
measures the frozen zero-shot CLIP once per validation set ("a photo of a {class}.", the raw caption, the
question-answer prompt without learned context), so the gain is visible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from datamodules.errors import ParamError, raise_param_problems
from datamodules.param_types import KwargsOf, model_source_problem
from lightning_modules.clip_scorer import ClipScorer
from lightning_modules.cpl.counterfactual import (class_logits, contrastive_loss, counterfactual, pick_negatives,
                                                  search_mask)
from lightning_modules.cpl.negatives import ScorerSpec, bertscore_scores, top_k_negatives
from lightning_modules.cpl.prompt_learner import PromptLearner, check_class_names
from lightning_modules.frozen_clip import FrozenCLIP

ZERO_SHOT_TEMPLATE = "a photo of a {}."
METRIC = {"classification": "accuracy", "retrieval": "r1", "vqa": "vqa_accuracy"}


class CPLModule(L.LightningModule):
    def __init__(self, clip: Annotated[dict[str, Any], KwargsOf(FrozenCLIP)], variant: Literal["coop", "cocoop", "cpl"] = "cpl", n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", class_token_position: Literal["end", "middle", "front"] = "end",
                 class_specific_contexts: bool = False, lam: float = 1.0, beta: float = 0.1, tau: float = 0.07,
                 k: int | None = 3, search_steps: int = 5, search_lr: float = 0.5,
                 counterfactual_mode: Literal["elementwise", "scalar"] = "elementwise",
                 contrastive_over: Literal["target", "all_classes"] = "target",
                 scorer: Annotated[dict[str, Any], KwargsOf(ScorerSpec)] | None = None, negatives_cache: str = "~/.cache/worldbridge/negatives",
                 max_negative_texts: int = 20000,
                 lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, cache_image_features: bool = True, seed: int = 0):
        super().__init__()
        problems = []
        if variant not in ("coop", "cocoop", "cpl"):
            problems.append(("variant", f"must be coop, cocoop or cpl, got {variant!r}"))
        if variant == "cpl" and scorer is None:
            problems.append(("scorer", "variant cpl needs scorer: {model: HF id or path of a BERT-like model, "
                                       "num_layers: N} for the BERTScore negatives"))
        if k is not None and k < 1:
            problems.append(("k", f"must be >= 1 (or null: any other class in the batch), got {k}"))
        if tau <= 0:
            problems.append(("tau", f"must be > 0, got {tau}"))
        if search_steps < 1:
            problems.append(("search_steps", f"must be >= 1, got {search_steps}"))
        try:
            self.scorer_spec = None if scorer is None else ScorerSpec(**scorer)
        except ParamError as e:
            problems += e.under("scorer").problems
        raise_param_problems(problems)
        self.save_hyperparameters()
        try:
            self.clip = FrozenCLIP(**clip)
        except ParamError as e:
            raise e.under("clip") from e
        self.task = "classification"
        self.prompts: PromptLearner | None = None
        self.negative_scores: torch.Tensor | None = None  # [n, n] BERTScore F1 between the training texts
        self.negative_top_k: torch.Tensor | None = None  # [n, k] when k is set
        self.text_index: dict[str, int] = {}  # training text -> its row in negative_scores
        self.train_classes: list[str] = []
        self.val_classes: list[list[str]] = []  # per validation set: its classes (retrieval: its unique captions)
        self.val_owners: list[torch.Tensor] = []  # retrieval: per set, [images, max captions] caption ids (-1 pad)
        self.val_names: list[str] = []
        self.answers: list[str] = []
        self.qa_template = ""
        self._feature_cache: dict[str, torch.Tensor] = {}
        self._zero_shot_text: dict[int, torch.Tensor] = {}
        self._val_text: dict[int, torch.Tensor] = {}  # prompts without a meta-net: encoded once per validation
        self.zero_shot: dict[str, float] = {}  # frozen CLIP's metric per validation set, measured once

    @classmethod
    def config_problems(cls, params: dict[str, Any], check_files: bool = True) -> list[tuple[str, str]]:
        """Checked with the config, before anything runs: the BERTScore scorer's model, where the variant uses it
        (a coop or cocoop run never loads it, so a config shared with cpl runs may name one that is not here)."""
        scorer = params.get("scorer")
        if not check_files or params.get("variant", "cpl") != "cpl" or not isinstance(scorer, dict) \
                or not isinstance(scorer.get("model"), str):
            return []
        problem = model_source_problem(scorer["model"])
        return [("scorer.model", problem)] if problem else []

    @property
    def metric_name(self) -> str:
        return METRIC[self.task]

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.hparams.cache_image_features and getattr(dm, "augment", False):
            raise ValueError("cache_image_features needs the same pixels every epoch: set data.params.augment=false "
                             "or model.params.cache_image_features=false")
        task = getattr(dm, "task", "classification")
        names = dm.val_set_names()
        if task == "retrieval":
            self.configure_retrieval(dm.training_texts(), {name: dm.captions(name) for name in names})
        elif task == "vqa":
            self.configure_vqa(dm.answers(), dm.qa_template, dm.training_texts(), names)
        else:
            self.configure_classes(list(dm.class_names("train")), {name: list(dm.class_names(name)) for name in names})

    def configure_classes(self, train_classes: list[str], val_classes: dict[str, list[str]]) -> None:
        """Classification: the training classes (prompts, negatives) and each validation set's classes."""
        check_class_names(train_classes)
        for classes in val_classes.values():
            check_class_names(classes)
        self.task = "classification"
        self.train_classes = list(train_classes)
        self._configure(self.train_classes, self.train_classes, list(val_classes), [list(c) for c in val_classes.values()])

    def configure_retrieval(self, train_captions: list[str], val_captions: dict[str, list[list[str]]]) -> None:
        """Retrieval: the training captions (negatives) and per validation set each image's captions."""
        self.task = "retrieval"
        classes, owners = [], []
        for name, per_image in val_captions.items():
            unique: dict[str, int] = {}
            ids = [[unique.setdefault(c.strip(), len(unique)) for c in group] for group in per_image]
            if not ids or not all(ids):
                raise ValueError(f"validation set {name}: every image needs at least one caption")
            width = max(map(len, ids))
            owners.append(torch.tensor([row + [-1] * (width - len(row)) for row in ids]))
            classes.append(list(unique))
        self.val_owners = owners
        self._configure(train_captions[:1], train_captions, list(val_captions), classes)

    def configure_vqa(self, answers: list[str], qa_template: str, train_texts: list[str], val_names: list[str]) -> None:
        """VQA: the answer vocabulary, the prompt template and the training question-answer prompts (negatives)."""
        check_class_names(answers)
        self.task, self.answers, self.qa_template = "vqa", list(answers), qa_template
        self._configure(train_texts[:1], train_texts, list(val_names), [list(answers) for _ in val_names])

    def build_prompts(self, first_prompts: list[str]) -> PromptLearner:
        """The prompt learner the hyper-parameters describe, first prompting `first_prompts` (tasks re-prompt it)."""
        hp = self.hparams
        return PromptLearner(self.clip, first_prompts, n_ctx=hp.n_ctx, ctx_init=hp.ctx_init,
                             class_token_position=hp.class_token_position, class_specific=hp.class_specific_contexts,
                             meta_net=hp.variant in ("cocoop", "cpl"), seed=hp.seed)

    def _configure(self, first_prompts: list[str], negative_texts: list[str], val_names: list[str],
                   val_classes: list[list[str]]) -> None:
        hp = self.hparams
        if self.task != "classification" and hp.class_specific_contexts:
            raise ValueError(f"class_specific_contexts needs a fixed class list; {self.task} prompts other texts "
                             f"every step: set model.params.class_specific_contexts=false")
        if not negative_texts:
            raise ValueError(f"the {self.task} training set has no texts")
        self.val_names, self.val_classes = val_names, val_classes
        if self.prompts is None:
            self.prompts = self.build_prompts(first_prompts)
        metric = (lambda n: MulticlassAccuracy(num_classes=n, average="micro")) if self.task == "classification" \
            else (lambda n: MeanMetric())
        self.val_metric = torch.nn.ModuleList([metric(len(c)) for c in val_classes])
        self.zero_shot_metric = torch.nn.ModuleList([metric(len(c)) for c in val_classes])
        if hp.variant == "cpl" and self.negative_scores is None:
            if len(negative_texts) > hp.max_negative_texts:
                raise ValueError(f"{len(negative_texts)} training texts for BERTScore negatives (an n x n matrix) "
                                 f"exceed model.params.max_negative_texts={hp.max_negative_texts}: train on a "
                                 f"few-shot subset (make_shards.py --fraction/--max-images/--max-questions) or raise it")
            if hp.k is not None and hp.k >= len(negative_texts):
                raise ValueError(f"k={hp.k} negatives need more than {len(negative_texts)} training texts")
            self.negative_scores = bertscore_scores(negative_texts, self.scorer_spec,
                                                    cache_dir=Path(hp.negatives_cache).expanduser())
            self.negative_top_k = None if hp.k is None else top_k_negatives(self.negative_scores, hp.k)
        self.text_index = {text: i for i, text in enumerate(negative_texts)}

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.prompts.parameters() if p.requires_grad]

    # -- features -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features(self, batch: dict[str, Any], use_cache: bool) -> torch.Tensor:
        """The frozen encoder's features; cached by sample key when the pixels never change (no augmentation)."""
        pixels = batch["pixel_values"]
        if not use_cache:
            return self.clip.encode_image(pixels).float()
        keys = list(batch["__key__"])
        missing = [i for i, key in enumerate(keys) if key not in self._feature_cache]
        for i in missing:
            # one image at a time: a feature must not depend on which batch first met the image (batched kernels
            # differ in the last bits), or a resumed run, whose cache starts empty, would drift from the original
            self._feature_cache[keys[i]] = self.clip.encode_image(pixels[i:i + 1]).float()[0].detach()
        return torch.stack([self._feature_cache[key] for key in keys]).to(pixels.device)

    def text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.prompts(image_features if self.prompts.meta_net is not None else None)

    def vqa_prompts(self, questions: list[str]) -> list[str]:
        """Every answer for every question, question by question: [B * answers] texts."""
        return [self.qa_template.format(question=q.strip(), answer=a) for q in questions for a in self.answers]

    def training_targets(self, batch: dict[str, Any], v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(text features [C, D] or [B, C, D], label per sample, each sample's own text for its negatives)."""
        if self.task == "retrieval":
            captions = [c.strip() for c in batch["caption"]]
            unique = list(dict.fromkeys(captions))  # two images may share a caption: both are right
            labels = torch.tensor([unique.index(c) for c in captions], device=v.device)
            self.prompts.set_classes(unique)
            return self.text_features(v), labels, captions
        labels = batch["cls"]
        if self.task == "vqa":
            if (labels < 0).any():
                raise ValueError("a VQA training question's answer is outside the answer vocabulary: write the "
                                 "training shards with make_shards.py vqa --top-answers")
            self.prompts.set_classes(self.vqa_prompts(batch["question"]), unique=False)
            text = self.prompts(v, rows_per_image=len(self.answers))
            own = [self.qa_template.format(question=q.strip(), answer=self.answers[int(y)])
                   for q, y in zip(batch["question"], labels)]
            return text, labels, own
        return self.text_features(v), labels, [self.train_classes[int(y)] for y in labels]

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        v = self.image_features(batch, use_cache=hp.cache_image_features)
        text, labels, own_texts = self.training_targets(batch, v)
        scale = self.clip.logit_scale
        logits = class_logits(v, text, scale)
        ce = F.cross_entropy(logits, labels)
        loss = ce
        size = labels.shape[0]
        if hp.variant == "cpl":
            items = torch.tensor([self.text_index[t] for t in own_texts])
            partner, valid = pick_negatives(labels, items, self.negative_scores, self.negative_top_k)
            if valid.any():  # samples with no eligible partner in the batch get no counterfactual
                rows = valid.nonzero().squeeze(1)
                v_real, v_neg = v[rows], v[partner[rows]]
                text_rows = text[rows] if text.dim() == 3 else text
                u = search_mask(v_real, v_neg, text_rows, labels[partner[rows]], scale, hp.beta, hp.search_steps,
                                hp.search_lr, elementwise=hp.counterfactual_mode == "elementwise")
                v_cf = counterfactual(v_real, v_neg, u)
                con = contrastive_loss(text_rows, v_real, v_cf, labels[rows], hp.tau,
                                       hp.contrastive_over == "all_classes")
                sparsity = u.mean()
                loss = ce + hp.lam * con.mean() + hp.beta * sparsity
                self.log_dict({"train/contrastive": con.mean(), "train/u_mean": sparsity}, batch_size=size)
            self.log("train/counterfactual_coverage", valid.float().mean(), batch_size=size)
        self.log_dict({"train/loss": loss, "train/ce": ce,
                       "train/accuracy": (logits.argmax(-1) == labels).float().mean()}, prog_bar=True,
                      batch_size=size)
        return loss

    # -- validation -----------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_text = {}
        self._prompted_set: int | None = None  # the validation set whose classes the prompt learner holds

    def zero_shot_text(self, index: int) -> torch.Tensor:
        if index not in self._zero_shot_text:
            with torch.no_grad():
                classes = self.val_classes[index]
                texts = classes if self.task == "retrieval" else \
                    [ZERO_SHOT_TEMPLATE.format(c.replace("_", " ")) for c in classes]
                self._zero_shot_text[index] = self.clip.encode_texts(texts).float()
        return self._zero_shot_text[index]

    def validation_logits(self, batch: dict[str, Any], v: torch.Tensor, index: int,
                          zero_shot: bool) -> torch.Tensor:
        """[B, classes of this set]: learned prompts (or the frozen zero-shot texts) against the batch's images."""
        scale = self.clip.logit_scale
        if self.task == "vqa":
            texts = self.vqa_prompts(batch["question"])
            if zero_shot:
                text = self.clip.encode_texts(texts).float().view(v.shape[0], len(self.answers), -1)
            else:
                self.prompts.set_classes(texts, unique=False)
                text = self.prompts(v, rows_per_image=len(self.answers))
            return class_logits(v, text, scale)
        if zero_shot:
            return class_logits(v, self.zero_shot_text(index), scale)
        if self.prompts.meta_net is not None:
            if self._prompted_set != index:  # tokenised once per set, not per batch (thousands of captions)
                self.prompts.set_classes(self.val_classes[index], unique=self.task == "classification")
                self._prompted_set = index
            return class_logits(v, self.prompts(v), scale)
        if index not in self._val_text:  # the same prompts for every batch of this validation
            self.prompts.set_classes(self.val_classes[index], unique=self.task == "classification")
            self._val_text[index] = self.prompts()
        return class_logits(v, self._val_text[index], scale)

    def update_metric(self, metric: torch.nn.Module, logits: torch.Tensor, batch: dict[str, Any], index: int) -> None:
        if self.task == "classification":
            metric.update(logits, batch["cls"])
            return
        top = logits.argmax(dim=1)
        if self.task == "retrieval":  # R@1: the top caption is one of the image's own
            owners = self.val_owners[index].to(top.device)[batch["image_index"]]
            metric.update((owners == top.unsqueeze(1)).any(dim=1).float())
        else:
            metric.update(batch["answer_scores"].gather(1, top.unsqueeze(1)).squeeze(1))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        v = self.image_features(batch, use_cache=False)
        self.update_metric(self.val_metric[dataloader_idx],
                           self.validation_logits(batch, v, dataloader_idx, zero_shot=False), batch, dataloader_idx)
        measure_zero_shot = self.val_names[dataloader_idx] not in self.zero_shot and not self.trainer.sanity_checking
        if measure_zero_shot:  # the frozen model's numbers never change: measured on the first full validation
            self.update_metric(self.zero_shot_metric[dataloader_idx],
                               self.validation_logits(batch, v, dataloader_idx, zero_shot=True), batch,
                               dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        """The metric per validation set, the base/new harmonic mean when both exist, and the zero-shot numbers."""
        name_of = self.metric_name
        values = {}
        for index, name in enumerate(self.val_names):
            values[name] = float(self.val_metric[index].compute())
            self.val_metric[index].reset()
            if name not in self.zero_shot and not self.trainer.sanity_checking:
                self.zero_shot[name] = float(self.zero_shot_metric[index].compute())
                self.zero_shot_metric[index].reset()
        metrics = {f"val/{name_of}_{name}": 100 * v for name, v in values.items()}
        metrics.update({f"val/zero_shot_{name_of}_{name}": 100 * v for name, v in self.zero_shot.items()})
        if "base" in values and "new" in values:
            metrics["val/harmonic_mean"] = 100 * harmonic_mean(values["base"], values["new"])
            if "base" in self.zero_shot and "new" in self.zero_shot:
                metrics["val/zero_shot_harmonic_mean"] = 100 * harmonic_mean(self.zero_shot["base"],
                                                                             self.zero_shot["new"])
        self.log_dict(metrics)
        if self.task == "classification":
            self.prompts.set_classes(self.train_classes)
        self._val_text = {}

    # -- benchmarks -----------------------------------------------------------------------------------------------
    def benchmark_responder(self) -> Any:
        """Video multiple choice with this module's CLIP and learned prompts (callbacks.benchmark_validation's
        default responder): each option's text through the prompt learner, nearest to the frames wins."""
        return ClipScorer.from_module(self.clip, self.prompts)

    # -- optimisation ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.SGD(self.trainable_parameters(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else None
        if epochs is None:
            raise ValueError("CPL's schedule is per epoch (cosine after a constant warm-up): set trainer.max_epochs")

        def factor(epoch: int) -> float:  # CoOp's constant warm-up, then cosine over the remaining epochs
            if epoch < hp.warmup_epochs:
                return hp.warmup_lr / hp.lr
            span = max(epochs - hp.warmup_epochs, 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - hp.warmup_epochs) / span))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # -- checkpoints: only what is learned ------------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if not k.startswith("clip.") and "_metric." not in k}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """The frozen CLIP is not in the checkpoint (it is loaded from `clip`); everything learned must be."""
        missing = [k for k in self.state_dict() if k not in state_dict]
        if strict and missing:
            raise KeyError(f"checkpoint lacks learned weights: {', '.join(missing)}")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cpl_zero_shot"] = dict(self.zero_shot)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.zero_shot = dict(checkpoint.get("cpl_zero_shot", {}))


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0
