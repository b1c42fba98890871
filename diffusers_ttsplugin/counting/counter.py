"""Exact object counter for the counting task: connected components per colour on the decoded image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .prompts import KIND_NAMES, KINDS

#: Palette the pixels are assigned to: black background, then the kinds' colours.
_PALETTE = torch.tensor([(0.0, 0.0, 0.0)] + [rgb for _, _, rgb in KINDS], dtype=torch.float32)
MAX_COLOUR_DISTANCE = 0.45  # RGB distance beyond which a pixel belongs to no colour (counted as background)
MIN_AREA = 4  # components smaller than this many pixels are specks, not objects


def as_image_batch(images: Any, name: str = "images") -> torch.Tensor:
    """Validate `[N, 3, H, W]` images in [0, 1] (tensor or array) → float32 CPU tensor; `ValueError` otherwise."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor [N, 3, H, W] in [0, 1], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape [N, 3, H, W], got {tuple(images.shape)}")
    if images.is_complex() or not (images.is_floating_point() or images.dtype == torch.uint8):
        raise ValueError(f"`{name}` must be real floats in [0, 1], got dtype {images.dtype}")
    images = images.detach().to("cpu", torch.float32)
    if images.numel() and not bool(torch.isfinite(images).all()):
        raise ValueError(f"`{name}` contains NaN or inf")
    if images.numel() and (float(images.min()) < -1e-3 or float(images.max()) > 1 + 1e-3):
        raise ValueError(
            f"`{name}` must lie in [0, 1], got values in [{float(images.min()):.3g}, {float(images.max()):.3g}]"
        )
    return images


def colour_masks(images: torch.Tensor) -> torch.Tensor:
    """`[N, K, H, W]` bool: pixel belongs to kind k (nearest palette colour, within `MAX_COLOUR_DISTANCE`)."""
    distance = torch.cdist(images.permute(0, 2, 3, 1).reshape(-1, 3), _PALETTE)  # [N*H*W, 1+K]
    nearest = distance.argmin(-1)
    close = distance.gather(1, nearest[:, None])[:, 0] <= MAX_COLOUR_DISTANCE
    label = torch.where(close, nearest, torch.zeros_like(nearest)).view(images.shape[0], *images.shape[2:])
    return torch.stack([label == k + 1 for k in range(len(KINDS))], dim=1)


def count_components(masks: torch.Tensor, min_area: int = MIN_AREA) -> torch.Tensor:
    """Number of 8-connected components of at least `min_area` pixels in each mask `[..., H, W]` → int64 `[...]`.

    Label propagation: every pixel starts with its own index and takes the largest label of its 3×3
    neighbourhood within the mask until nothing changes, so each component ends labelled by its largest index.
    """
    lead, (h, w) = masks.shape[:-2], masks.shape[-2:]
    m = masks.reshape(-1, 1, h, w).float()
    index = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    labels = index * m
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(grown, labels):
            break
        labels = grown
    flat = labels.view(labels.shape[0], -1).long()  # 0 = background
    rows = flat.shape[0]
    ids = flat + torch.arange(rows).view(-1, 1) * (h * w + 1)
    area = torch.bincount(ids.flatten(), minlength=rows * (h * w + 1)).view(rows, h * w + 1)
    area[:, 0] = 0
    return (area >= min_area).sum(1).view(lead)


def count_objects(images: Any, min_area: int = MIN_AREA) -> list[dict[str, int]]:
    """Count the objects of every kind in each image.

    Args:
        images: `[N, 3, H, W]` float in [0, 1] (tensor or numpy array), e.g. decoded samples of the counting model.
        min_area (`int`, defaults to 4): Smallest component (pixels) counted as an object.

    Returns:
        One dict per image, `{kind: count}` for every kind of the task (`"red circle"`, `"green triangle"`,
        `"blue square"`), zeros included. Exact on rendered images: objects never touch, and a pixel takes the
        nearest palette colour.
    """
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 1:
        raise ValueError(f"`min_area` must be an integer >= 1, got {min_area!r}")
    batch = as_image_batch(images)
    if batch.shape[0] == 0:
        return []
    counts = count_components(colour_masks(batch), min_area).tolist()
    return [dict(zip(KIND_NAMES, row, strict=True)) for row in counts]
