"""CoOp, CoCoOp and CPL in one LightningModule: prompts learned for a frozen CLIP (DESIGN.md "CPL").

- coop:   shared (or class-specific) context vectors, cross-entropy on scaled cosine logits;
- cocoop: the context shifted per image by a meta-net;
- cpl:    cocoop + counterfactual images v' = (1-u)*v + u*v_neg (v_neg: a batch image of a BERTScore-similar class),
          loss CE + lambda * L_con + beta * mean|u|.

The class lists come from the datamodule (`class_names(split)`): training classes for the fit, and each validation
set's own classes (base-to-new: the new classes are prompted with the context learned on the base ones). Validation
also measures the frozen zero-shot CLIP ("a photo of a {class}.") once per validation set, so the gain is visible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.cpl.clip_backbone import FrozenCLIP
from lightning_modules.cpl.counterfactual import (
    class_logits, contrastive_loss, counterfactual, pick_negatives, search_mask)
from lightning_modules.cpl.prompt_learner import PromptLearner, check_class_names

ZERO_SHOT_TEMPLATE = "a photo of a {}."


class CPLModule(L.LightningModule):
    def __init__(self, clip: dict[str, Any], variant: Literal["coop", "cocoop", "cpl"] = "cpl", n_ctx: int = 4,
                 ctx_init: str | None = "a photo of a", class_token_position: Literal["end", "middle", "front"] = "end",
                 class_specific_contexts: bool = False, lam: float = 1.0, beta: float = 0.1, tau: float = 0.07,
                 k: int = 3, search_steps: int = 5, search_lr: float = 0.5,
                 counterfactual_mode: Literal["elementwise", "scalar"] = "elementwise",
                 contrastive_over: Literal["target", "all_classes"] = "target",
                 scorer: dict[str, Any] | None = None, negatives_cache: str = "~/.cache/worldbridge/negatives",
                 lr: float = 0.002, momentum: float = 0.9, weight_decay: float = 5e-4, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5, cache_image_features: bool = True, seed: int = 0):
        super().__init__()
        problems = []
        if variant not in ("coop", "cocoop", "cpl"):
            problems.append(f"variant must be coop, cocoop or cpl, got {variant!r}")
        if variant == "cpl" and scorer is None:
            problems.append("variant cpl needs scorer: {model: HF id or path of a BERT-like model, num_layers: N} "
                            "for the BERTScore negatives")
        if k < 1:
            problems.append(f"k must be >= 1, got {k}")
        if tau <= 0:
            problems.append(f"tau must be > 0, got {tau}")
        if search_steps < 1:
            problems.append(f"search_steps must be >= 1, got {search_steps}")
        if problems:
            raise ValueError("; ".join(problems))
        self.save_hyperparameters()
        self.clip = FrozenCLIP(**clip)
        self.prompts: PromptLearner | None = None
        self.negatives: torch.Tensor | None = None
        self.train_classes: list[str] = []
        self.val_classes: list[list[str]] = []
        self.val_names: list[str] = []
        self._feature_cache: dict[str, torch.Tensor] = {}
        self._zero_shot_text: dict[int, torch.Tensor] = {}
        self.zero_shot: dict[str, float] = {}  # frozen CLIP's accuracy per validation set, measured once

    # -- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.hparams.cache_image_features and getattr(dm, "augment", False):
            raise ValueError("cache_image_features needs the same pixels every epoch: set data.params.augment=false "
                             "or model.params.cache_image_features=false")
        self.configure_classes(list(dm.class_names("train")),
                               {name: list(dm.class_names(name)) for name in dm.val_set_names()})

    def configure_classes(self, train_classes: list[str], val_classes: dict[str, list[str]]) -> None:
        """The training classes (prompts, negatives) and each validation set's classes."""
        check_class_names(train_classes)
        for classes in val_classes.values():
            check_class_names(classes)
        hp = self.hparams
        self.train_classes = list(train_classes)
        self.val_names, self.val_classes = list(val_classes), [list(c) for c in val_classes.values()]
        if self.prompts is None:
            self.prompts = PromptLearner(self.clip, self.train_classes, n_ctx=hp.n_ctx, ctx_init=hp.ctx_init,
                                         class_token_position=hp.class_token_position,
                                         class_specific=hp.class_specific_contexts,
                                         meta_net=hp.variant in ("cocoop", "cpl"), seed=hp.seed)
        self.val_accuracy = torch.nn.ModuleList(
            [MulticlassAccuracy(num_classes=len(c), average="micro") for c in self.val_classes])
        self.zero_shot_accuracy = torch.nn.ModuleList(
            [MulticlassAccuracy(num_classes=len(c), average="micro") for c in self.val_classes])
        if hp.variant == "cpl" and self.negatives is None:
            from lightning_modules.cpl.negatives import ScorerSpec, bertscore_negatives

            if hp.k >= len(self.train_classes):
                raise ValueError(f"k={hp.k} negatives need more than {len(self.train_classes)} training classes")
            self.negatives = bertscore_negatives(self.train_classes, hp.k, ScorerSpec(**hp.scorer),
                                                 cache_dir=Path(hp.negatives_cache).expanduser())

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

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        labels = batch["cls"]
        v = self.image_features(batch, use_cache=hp.cache_image_features)
        text = self.text_features(v)
        scale = self.clip.logit_scale
        logits = class_logits(v, text, scale)
        ce = F.cross_entropy(logits, labels)
        loss = ce
        size = labels.shape[0]
        if hp.variant == "cpl":
            partner, valid = pick_negatives(labels, self.negatives.to(labels.device))
            if valid.any():  # samples whose negative classes are absent from the batch get no counterfactual
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
        self._val_set = -1

    def _use_classes(self, index: int) -> None:
        if self._val_set != index:
            self.prompts.set_classes(self.val_classes[index])
            self._val_set = index

    def zero_shot_text(self, index: int) -> torch.Tensor:
        if index not in self._zero_shot_text:
            with torch.no_grad():
                prompts = [ZERO_SHOT_TEMPLATE.format(c.replace("_", " ")) for c in self.val_classes[index]]
                self._zero_shot_text[index] = self.clip.encode_texts(prompts).float()
        return self._zero_shot_text[index]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._use_classes(dataloader_idx)
        labels = batch["cls"]
        v = self.image_features(batch, use_cache=False)
        self.val_accuracy[dataloader_idx].update(class_logits(v, self.text_features(v), self.clip.logit_scale), labels)
        measure_zero_shot = self.val_names[dataloader_idx] not in self.zero_shot and not self.trainer.sanity_checking
        if measure_zero_shot:  # the frozen model's numbers never change: measured on the first full validation
            zs = class_logits(v, self.zero_shot_text(dataloader_idx), self.clip.logit_scale)
            self.zero_shot_accuracy[dataloader_idx].update(zs, labels)

    def on_validation_epoch_end(self) -> None:
        """Accuracy per validation set, the base/new harmonic mean when both exist, and the zero-shot numbers."""
        values = {}
        for index, name in enumerate(self.val_names):
            values[name] = float(self.val_accuracy[index].compute())
            self.val_accuracy[index].reset()
            if name not in self.zero_shot and not self.trainer.sanity_checking:
                self.zero_shot[name] = float(self.zero_shot_accuracy[index].compute())
                self.zero_shot_accuracy[index].reset()
        metrics = {f"val/accuracy_{name}": 100 * v for name, v in values.items()}
        metrics.update({f"val/zero_shot_accuracy_{name}": 100 * v for name, v in self.zero_shot.items()})
        if "base" in values and "new" in values:
            metrics["val/harmonic_mean"] = 100 * harmonic_mean(values["base"], values["new"])
            if "base" in self.zero_shot and "new" in self.zero_shot:
                metrics["val/zero_shot_harmonic_mean"] = 100 * harmonic_mean(self.zero_shot["base"],
                                                                             self.zero_shot["new"])
        self.log_dict(metrics)
        self.prompts.set_classes(self.train_classes)

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
        return {k: v for k, v in full.items() if not k.startswith("clip.") and "accuracy" not in k}

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
