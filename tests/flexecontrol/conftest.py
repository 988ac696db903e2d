"""FlexEControl tests: one torch thread while they run (tiny models: on a shared 2-core machine extra OpenMP threads
only contend, measured 10x slower), restored afterwards for the rest of the suite; tiny random depth and
segmentation models with their image processors, for the shard kinds and the evaluator."""

import pytest
import torch

from tests.conftest import single_torch_thread

one_torch_thread = pytest.fixture(autouse=True, scope="package")(single_torch_thread)


@pytest.fixture(scope="package")
def vision_models(tmp_path_factory) -> dict:
    """Tiny random models saved with their image processors: DPT (relative depth), GLPN (metric depth), Segformer
    (semantic segmentation, 3 labels)."""
    from transformers import (DPTConfig, DPTForDepthEstimation, DPTImageProcessor, GLPNConfig, GLPNForDepthEstimation,
                              GLPNImageProcessor, SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)

    root = tmp_path_factory.mktemp("vision-models")
    torch.manual_seed(0)
    encoder = dict(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 16, 16],
                   num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=8)
    DPTForDepthEstimation(DPTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, image_size=32, patch_size=8,
        backbone_out_indices=[0, 1], neck_hidden_sizes=[8, 8], fusion_hidden_size=8, reassemble_factors=[2, 1],
        head_in_index=-1)).save_pretrained(root / "dpt")
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dpt")
    GLPNForDepthEstimation(GLPNConfig(**encoder)).save_pretrained(root / "glpn")
    GLPNImageProcessor(size_divisor=32).save_pretrained(root / "glpn")
    labels = {0: "sky", 1: "tree", 2: "car"}
    SegformerForSemanticSegmentation(SegformerConfig(
        **encoder, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    ).save_pretrained(root / "seg")
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "seg")
    return {"dpt": root / "dpt", "glpn": root / "glpn", "seg": root / "seg"}

