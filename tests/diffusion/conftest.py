"""Tiny random pipelines written once per test session: what the diffusion-core tests load through from_pretrained."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pixel_pipeline(tmp_path_factory) -> Path:
    """A tiny pixel-space pipeline directory (no vae/): 32x32 RGB, seed 0."""
    from lightning_modules.diffusion.tiny import write_tiny_text_to_image

    return write_tiny_text_to_image(tmp_path_factory.mktemp("diffusion") / "pixel")


@pytest.fixture(scope="session")
def latent_pipeline(tmp_path_factory) -> Path:
    """A tiny latent pipeline directory (with a 2-level vae/): 32x32 RGB images, 16x16x4 latents, seed 0."""
    from lightning_modules.diffusion.tiny import write_tiny_text_to_image

    return write_tiny_text_to_image(tmp_path_factory.mktemp("diffusion") / "latent", vae=True)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on several (thread start-up costs more than their work) and do not
    slow down when other processes share the cores; the thread count is put back after each test."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
