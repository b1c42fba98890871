"""Procedural images of the counting task: flat coloured shapes on black, none touching (so they are countable)."""

from __future__ import annotations

import numpy as np

from .prompts import KIND_NAMES, KINDS

IMAGE_SIZE = 32
OBJECT_SIZE = 7  # bounding box of every shape, pixels
GAP = 2  # least free pixels between two objects' boxes (so no two touch, even diagonally)


def _masks(size: int = OBJECT_SIZE) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    circle = (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2
    square = np.zeros((size, size), bool)
    square[0:size, 0:size] = True
    triangle = np.abs(xx - c) <= yy / 2 + 0.5  # apex up, base on the last row
    return {"circle": circle, "square": square, "triangle": triangle}


_SHAPES = _masks()


def render(counts: dict[str, int], rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image `[3, size, size]` float32 in [0, 1] holding exactly `counts` objects of each kind.

    Positions are uniform among placements that keep `GAP` pixels between boxes (rejection sampling).
    """
    span = size - OBJECT_SIZE + 1
    total = sum(counts.values())
    for _restart in range(100):  # random placement can dead-end; then start the image over
        boxes: list[tuple[int, int]] = []
        while len(boxes) < total:
            for _attempt in range(200):
                y, x = (int(v) for v in rng.integers(0, span, size=2))
                if all(
                    abs(y - by) >= OBJECT_SIZE + GAP or abs(x - bx) >= OBJECT_SIZE + GAP for by, bx in boxes
                ):
                    boxes.append((y, x))
                    break
            else:
                break
        if len(boxes) == total:
            break
    else:
        raise RuntimeError(f"cannot place {total} objects on a {size}x{size} image")
    image = np.zeros((3, size, size), np.float32)
    slots = iter(boxes)
    for kind, n in counts.items():
        _colour, shape, rgb = KINDS[KIND_NAMES.index(kind)]
        mask = _SHAPES[shape]
        for _ in range(n):
            y, x = next(slots)
            for channel in range(3):
                image[channel, y : y + OBJECT_SIZE, x : x + OBJECT_SIZE][mask] = rgb[channel]
    return image


def render_batch(configs: list[dict[str, int]], seed: int) -> np.ndarray:
    """`render` for each configuration, `[N, 3, H, W]`, from one seeded stream."""
    rng = np.random.default_rng(seed)
    return (
        np.stack([render(c, rng) for c in configs]) if configs else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE))
    )
