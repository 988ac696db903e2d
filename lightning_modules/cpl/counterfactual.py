"""CPL's counterfactual image features and its loss terms (DESIGN.md "CPL"; paper Eq. 2 and the joint loss).

v' = (1 - u) * v + u * v_neg, with u in [0, 1]^D per sample (element-wise over the feature dimension). u is searched
per batch, all samples at once, as the sparsest mask that moves the prediction to the negative class:
minimise  -log p(y_neg | v') + beta * mean(u). The released CPL code interpolates with one scalar per sample (a
broadcasting bug); `elementwise=False` reproduces it for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def counterfactual(v: torch.Tensor, v_neg: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (1 - u) * v + u * v_neg


def class_logits(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Scaled cosine similarity: image [B, D] against text [C, D] (shared) or [B, C, D] (per image) -> [B, C]."""
    image = F.normalize(image, dim=-1)
    text = F.normalize(text, dim=-1)
    if text.dim() == 2:
        return logit_scale * image @ text.t()
    return logit_scale * torch.einsum("bd,bcd->bc", image, text)


def search_mask(v: torch.Tensor, v_neg: torch.Tensor, text: torch.Tensor, negative_labels: torch.Tensor,
                logit_scale: torch.Tensor | float, beta: float, steps: int, lr: float, elementwise: bool = True,
                init: float = 0.0) -> torch.Tensor:
    """The mask u [B, D] (or [B, 1] when not element-wise) after `steps` Adam steps on its logits, everything
    else held fixed. Samples are independent (their losses are summed), so one batched search serves them all."""
    v, v_neg, text = v.detach().float(), v_neg.detach().float(), text.detach().float()
    logits_u = torch.full((v.shape[0], v.shape[1] if elementwise else 1), init, device=v.device, requires_grad=True)
    optimizer = torch.optim.Adam([logits_u], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            u = torch.sigmoid(logits_u)
            logits = class_logits(counterfactual(v, v_neg, u), text, logit_scale)
            loss = F.cross_entropy(logits, negative_labels, reduction="sum") + beta * u.mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return torch.sigmoid(logits_u).detach()


def contrastive_loss(text: torch.Tensor, v: torch.Tensor, v_cf: torch.Tensor, labels: torch.Tensor, tau: float,
                     over_all_classes: bool = False) -> torch.Tensor:
    """Per-sample  -log( e^{cos(t_y, v)/tau} / (e^{cos(t_y, v)/tau} + e^{cos(t_y, v')/tau}) ): the prompt of the true
    class must stay closer to the real image than to its counterfactual. `over_all_classes` averages the same term
    over every class's prompt instead of the true class's (the released code's form). text: [C, D] or [B, C, D]."""
    t = F.normalize(text, dim=-1)
    v, v_cf = F.normalize(v, dim=-1), F.normalize(v_cf, dim=-1)
    if t.dim() == 2:
        t = t.unsqueeze(0).expand(v.shape[0], -1, -1)
    real = torch.einsum("bd,bcd->bc", v, t) / tau
    fake = torch.einsum("bd,bcd->bc", v_cf, t) / tau
    per_class = F.softplus(fake - real)  # = -log(e^real / (e^real + e^fake))
    if over_all_classes:
        return per_class.mean(dim=1)
    return per_class.gather(1, labels.unsqueeze(1)).squeeze(1)


def pick_negatives(labels: torch.Tensor, items: torch.Tensor, scores: torch.Tensor,
                   top_k: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the other sample of the batch whose text is the most BERTScore-similar to its own among those
    of another class (ties: the earliest sample). Returns (index into the batch, valid): a sample with no eligible
    partner has no counterfactual, and a sample is never paired with its own class.

    labels [B]: the class each sample is trained on (a partner's must differ); items [B]: each sample's text as an
    index into scores [n, n] (classification: its class name; retrieval: its caption; VQA: its question+answer);
    top_k [n, k]: when given, a partner's text must be among the k most similar to the sample's (the paper's top-k
    negatives); without it any text of another class in the batch qualifies, the nearest first."""
    items_cpu = items.cpu()
    similarity = scores[items_cpu][:, items_cpu].to(labels.device, torch.float32)  # [B, B]
    allowed = labels.unsqueeze(1) != labels.unsqueeze(0)
    if top_k is not None:
        near = (top_k[items_cpu].unsqueeze(2) == items_cpu.view(1, 1, -1)).any(dim=1)  # [B, B]
        allowed &= near.to(labels.device)
    similarity = similarity.masked_fill(~allowed, float("-inf"))
    return similarity.argmax(dim=1), allowed.any(dim=1)
