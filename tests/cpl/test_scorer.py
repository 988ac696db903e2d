"""CPLScorer: MMWorld/VLM4D multiple choice through the learned prompts of a CPL / CoOp / CoCoOp checkpoint, and a
CPLModule's own benchmark responder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ParamError
from lightning_modules.clip_scorer import ClipScorer
from lightning_modules.cpl.inference import CPLScorer
from lightning_modules.cpl.module import CPLModule


def cpl_checkpoint(clip_bench: dict, path: Path, variant: str) -> tuple[CPLModule, dict]:
    """A CPLModule whose prompts moved away from their initialisation, saved as Lightning saves it."""
    module = CPLModule(clip={"pretrained": str(clip_bench["clip"])}, variant=variant, n_ctx=4, ctx_init=None, seed=3)
    module.configure_classes(["red circle", "blue square"], {"base": ["red circle", "blue square"]})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.prompts.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": "2.6.0", "global_step": 1}
    torch.save(checkpoint, path)
    return module, checkpoint


@pytest.mark.parametrize("variant", ["coop", "cocoop"])
def test_cpl_checkpoint_scores_with_its_learned_prompts(clip_bench, tmp_path, variant):
    module, checkpoint = cpl_checkpoint(clip_bench, tmp_path / "cpl.ckpt", variant)
    questions, frames = clip_bench["questions"], clip_bench["frames"]
    scorer = CPLScorer(cpl_checkpoint=str(tmp_path / "cpl.ckpt"), device="cpu")
    loaded = scorer.prompts.state_dict()
    assert loaded.keys() == {k[len("prompts."):] for k in checkpoint["state_dict"]}
    assert all(torch.equal(v, checkpoint["state_dict"][f"prompts.{k}"]) for k, v in loaded.items())

    # the same scores straight from the module's prompt learner
    prompts = module.prompts
    for q, f, score in zip(questions, frames, scorer.option_scores(questions, frames)):
        with torch.no_grad():
            image = module.clip.encode_image(scorer.pixels(f))
            video = F.normalize(F.normalize(image, dim=-1).mean(0), dim=0)
            prompts.set_classes(scorer.option_texts(q), unique=False)
            text = prompts(video[None], rows_per_image=len(q.options))[0] if variant == "cocoop" else prompts()
        expected = F.normalize(text, dim=-1) @ video
        assert torch.allclose(torch.tensor(list(score.values())), expected, atol=1e-5)

    # the module's own responder answers alike, and leaves its classes as they were
    prompts.set_classes(["red circle", "blue square"])
    assert module.benchmark_responder().respond(questions, frames) == scorer.respond(questions, frames)
    assert prompts.class_names == ["red circle", "blue square"]
    # and the learned prompts matter: the frozen CLIP alone answers differently
    zero_shot = ClipScorer(pretrained=str(clip_bench["clip"]), device="cpu")
    assert zero_shot.option_scores(questions, frames) != scorer.option_scores(questions, frames)


def test_cpl_checkpoint_without_learned_prompts_is_refused(clip_bench, tmp_path):
    _, checkpoint = cpl_checkpoint(clip_bench, tmp_path / "cpl.ckpt", "coop")
    checkpoint["state_dict"] = {}
    torch.save(checkpoint, tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match="no learned prompts"):
        CPLScorer(cpl_checkpoint=str(tmp_path / "empty.ckpt"))
    with pytest.raises(ParamError, match="cpl_checkpoint: .*no such file"):
        CPLScorer(cpl_checkpoint=str(tmp_path / "absent.ckpt"))
