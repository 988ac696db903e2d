"""ComCLIP tests: one torch thread while they run (tiny models on a shared 2-core machine: extra OpenMP threads only
contend), restored afterwards; a tiny random OWL-ViT and CLIP, written once."""

import pytest

from tests.conftest import single_torch_thread


one_torch_thread = pytest.fixture(autouse=True, scope="package")(single_torch_thread)


@pytest.fixture(scope="package")
def tiny_owl(tmp_path_factory):
    from tests.comclip.tiny_models import write_tiny_owl

    return write_tiny_owl(tmp_path_factory.mktemp("owlvit") / "owlvit")


@pytest.fixture(scope="package")
def tiny_clip(tmp_path_factory):
    """A random CLIP whose cosines are positive (write_scoring_clip), so that ratio weights are not all uniform."""
    from lightning_modules.clip_pretrain.random_clip import write_scoring_clip
    from lightning_modules.frozen_clip import FrozenCLIP

    return FrozenCLIP(pretrained=str(write_scoring_clip(tmp_path_factory.mktemp("clip") / "clip")))
