"""Image transforms in torch (no torchvision), on uint8 [C, H, W] or [T, C, H, W] tensors as the decoders give them.

Random transforms take a `torch.Generator`; `sample_generator(seed, epoch, key)` gives one per sample, so an
augmentation depends only on which sample it is and in which epoch -- not on which worker built the batch -- and a
resumed run augments exactly as the uninterrupted run did.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def sample_generator(seed: int, epoch: int, key: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _size(image: torch.Tensor) -> tuple[int, int]:
    return image.shape[-2], image.shape[-1]


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize to (height, width) with antialiasing; uint8 in, uint8 out (float in, float out)."""
    if _size(image) == tuple(size):
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = F.interpolate(batched.float(), size=tuple(size), mode=mode, antialias=mode in ("bilinear", "bicubic"),
                        align_corners=False if mode in ("bilinear", "bicubic") else None)
    if image.dtype == torch.uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


def resize_shorter(image: torch.Tensor, shorter: int, mode: str = "bicubic") -> torch.Tensor:
    h, w = _size(image)
    scale = shorter / min(h, w)
    return resize(image, (max(1, round(h * scale)), max(1, round(w * scale))), mode)


def center_crop(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = _size(image)
    if th > h or tw > w:
        raise ValueError(f"crop {th}x{tw} is larger than the image {h}x{w}")
    top, left = (h - th) // 2, (w - tw) // 2
    return image[..., top:top + th, left:left + tw]


def random_resized_crop(image: torch.Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        mode: str = "bicubic") -> torch.Tensor:
    """A crop of random area fraction in `scale` and aspect ratio in `ratio`, resized to size x size (the usual
    ImageNet augmentation); falls back to the largest central crop of a valid ratio after 10 tries."""
    h, w = _size(image)
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1))
            return resize(image[..., top:top + ch, left:left + cw], (size, size), mode)
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return resize(center_crop(image, (ch, cw)), (size, size), mode)


def random_horizontal_flip(image: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    return image.flip(-1) if torch.rand(1, generator=generator).item() < p else image


def normalize(image: torch.Tensor, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """uint8 [.., 3, H, W] -> float32 (x / 255 - mean) / std."""
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    return (image.float() / 255.0 - m) / s
