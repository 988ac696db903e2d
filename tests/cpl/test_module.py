"""CPL's CLIP wrapper, prompt learner and LightningModule on a tiny CLIP built here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ParamError
from lightning_modules.clip_pretrain.random_clip import write_random_clip
from lightning_modules.cpl import counterfactual as cf
from lightning_modules.cpl.module import CPLModule
from lightning_modules.cpl.negatives import top_k_negatives
from lightning_modules.cpl.prompt_learner import PromptLearner
from lightning_modules.frozen_clip import FrozenCLIP

CLASSES = ["red circle", "blue square", "green triangle", "yellow star"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
    return FrozenCLIP(pretrained=str(clip_dir))


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_context_and_class_tokens_sit_where_configured(clip, position):
    learner = PromptLearner(clip, CLASSES, n_ctx=4, ctx_init=None, class_token_position=position)
    name = clip.token_ids("blue square")
    row, cols = learner.input_ids[1].tolist(), learner.ctx_columns[1].tolist()
    assert row[0] == clip.bos_id and row[learner.eos_positions[1]] == clip.eos_id
    start = {"end": 5, "middle": 3, "front": 1}[position]
    assert row[start:start + len(name)] == name
    expected = {"end": [1, 2, 3, 4], "middle": [1, 2, 3 + len(name), 4 + len(name)],
                "front": [1 + len(name) + i for i in range(4)]}[position]
    assert cols == expected and learner.ctx_mask[1].nonzero().flatten().tolist() == expected


def test_prompt_with_phrase_init_equals_encoding_the_phrase(clip):
    """The hook path (learned vectors in place of placeholder tokens) matches CLIP reading the text itself."""
    learner = PromptLearner(clip, CLASSES, ctx_init="a photo of a")
    assert learner.n_ctx == 4
    with torch.no_grad():
        learned = learner()
        direct = clip.encode_texts([f"a photo of a {c}." for c in CLASSES])
    assert torch.allclose(learned, direct, atol=1e-5)


def test_prompt_learner_refuses_bad_class_lists_and_settings(clip):
    with pytest.raises(ValueError, match="class list is empty"):
        PromptLearner(clip, [])
    with pytest.raises(ValueError, match="'red circle' appears more than once"):
        PromptLearner(clip, ["red circle", "red circle"])
    with pytest.raises(ValueError, match="n_ctx=8 but ctx_init 'a photo of a' has 4 tokens"):
        PromptLearner(clip, CLASSES, n_ctx=8, ctx_init="a photo of a")
    specific = PromptLearner(clip, CLASSES, class_specific=True)
    with pytest.raises(ValueError, match="class-specific contexts belong to the training classes"):
        specific.set_classes(["cat", "dog"])


def module(clip_dir, variant: str, **params) -> CPLModule:
    m = CPLModule(clip={"pretrained": str(clip_dir)}, variant=variant,
                  scorer={"model": "unused"} if variant == "cpl" else None, **params)
    if variant == "cpl":  # what the BERTScore bank would hold for CLASSES
        m.negative_scores = torch.tensor([[1.0, 0.8, 0.6, 0.1], [0.9, 1.0, 0.2, 0.7],
                                          [0.5, 0.1, 1.0, 0.9], [0.3, 0.6, 0.8, 1.0]])
        m.negative_top_k = top_k_negatives(m.negative_scores, 2)
        m.hparams.k = 2
    m.configure_classes(CLASSES, {"base": CLASSES})
    return m


def batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 3, 16, 16, generator=g), "cls": torch.arange(n) % 4,
            "__key__": [f"k{seed}-{i}" for i in range(n)]}


@pytest.mark.parametrize("variant", ["coop", "cocoop", "cpl"])
def test_gradients_reach_only_the_prompt_learner(clip_dir, variant):
    m = module(clip_dir, variant)
    loss = m.training_step(batch(), 0)
    loss.backward()
    assert m.prompts.ctx.grad is not None and m.prompts.ctx.grad.abs().sum() > 0
    if variant != "coop":
        assert all(p.grad is not None for p in m.prompts.meta_net.parameters())
    else:
        assert m.prompts.meta_net is None
    assert all(p.grad is None and not p.requires_grad for p in m.clip.parameters())
    assert set(m.state_dict()) == {f"prompts.{k}" for k in m.prompts.state_dict()}  # CLIP is not checkpointed


def test_cpl_loss_is_the_joint_formula(clip_dir, monkeypatch):
    m = module(clip_dir, "cpl", lam=0.7, beta=0.3, tau=0.5)
    data = batch()
    fixed_u = torch.rand(8, 16, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr("lightning_modules.cpl.module.search_mask", lambda *a, **k: fixed_u)
    loss = m.training_step(data, 0)
    with torch.no_grad():
        v = m.clip.encode_image(data["pixel_values"])
        text = m.prompts(v)  # [B, C, D]
        labels = data["cls"]
        logits = m.clip.logit_scale * torch.einsum("bd,bcd->bc", F.normalize(v, dim=-1), F.normalize(text, dim=-1))
        partner, valid = cf.pick_negatives(labels, labels, m.negative_scores, m.negative_top_k)
        v_cf = (1 - fixed_u) * v + fixed_u * v[partner]
        t_y = F.normalize(text[torch.arange(8), labels], dim=-1)
        real = (t_y * F.normalize(v, dim=-1)).sum(-1) / 0.5
        fake = (t_y * F.normalize(v_cf, dim=-1)).sum(-1) / 0.5
        con = -torch.log(real.exp() / (real.exp() + fake.exp()))
        expected = F.cross_entropy(logits, labels) + 0.7 * con[valid].mean() + 0.3 * fixed_u[valid].mean()
    assert valid.all() and loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_image_features_are_cached_by_key_when_pixels_are_fixed(clip_dir):
    m = module(clip_dir, "coop")
    data = batch()
    first = m.image_features(data, use_cache=True)
    data["pixel_values"] = torch.zeros_like(data["pixel_values"])  # a cache hit never looks at the pixels
    assert torch.equal(m.image_features(data, use_cache=True), first)
    assert not torch.equal(m.image_features(data, use_cache=False), first)


def test_bad_settings_are_reported_together(clip_dir):
    with pytest.raises(ParamError) as refused:
        CPLModule(clip={"pretrained": str(clip_dir)}, variant="cpl", k=0, tau=0)
    assert [name for name, _ in refused.value.problems] == ["scorer", "k", "tau"]
    assert "variant cpl needs scorer" in str(refused.value) and "k: must be >= 1" in str(refused.value)
    m = module(clip_dir, "coop")
    with pytest.raises(ValueError, match="appears more than once"):
        m.configure_classes(["a", "a"], {})
