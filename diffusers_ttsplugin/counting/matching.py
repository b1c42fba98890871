"""A small prompt–image matching score trained here, standing in for VQAScore on the counting task.

VQAScore is P("Yes" | image, "Does this figure show '{prompt}'?"). Here a small CNN reads the image and predicts,
for every kind, a distribution over its count (0, 1, 2, 3, ≥4); the score of an image for a prompt is the
probability that every kind the prompt names has the named count, Π_k P(count_k = target_k) — a probability in
[0, 1], like VQAScore. It is trained on rendered images of the task (the generator of the training set), degraded
with blur, noise and colour shifts so that it also reads the blurry Tweedie estimates of intermediate steps.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .prompts import KIND_NAMES, KINDS
from .render import render_batch

NUM_CLASSES = 5  # counts 0, 1, 2, 3 and "4 or more"


class CountNet(nn.Module):
    """Image `[N, 3, H, W]` in [0, 1] → count logits `[N, kinds, NUM_CLASSES]` (sum-pooled features: counting)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width, 4 * width), nn.SiLU(), nn.Linear(4 * width, len(KINDS) * NUM_CLASSES)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.features(images * 2 - 1).sum(dim=(2, 3)) / 64.0
        return self.head(pooled).view(-1, len(KINDS), NUM_CLASSES)


def degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur (σ up to 1.5 px), colour scaling and noise: what decoded intermediate estimates look like."""
    n = images.shape[0]
    sigma = torch.rand(n, generator=gen) * 1.5
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [n, 7]
    padded = F.pad(images, (radius,) * 4, mode="replicate").reshape(
        1, n * 3, *[d + 2 * radius for d in images.shape[2:]]
    )
    weights = (kernel[:, :, None] * kernel[:, None, :]).repeat_interleave(3, 0)[:, None]  # [n*3, 1, 7, 7]
    blurred = F.conv2d(padded, weights, groups=n * 3).reshape(images.shape)
    scale = 0.7 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen)
    noise = torch.randn(images.shape, generator=gen) * 0.08 * torch.rand(n, 1, 1, 1, generator=gen)
    return (blurred * scale + noise).clamp(0, 1)


def _random_counts(rng: np.random.Generator) -> dict[str, int]:
    # Every kind 0..4 (4 rarely), not only the prompt configurations: the scorer must see wrong counts too.
    counts = {kind: int(rng.choice(5, p=[0.4, 0.2, 0.18, 0.14, 0.08])) for kind in KIND_NAMES}
    while sum(counts.values()) > 6:
        kind = KIND_NAMES[int(rng.integers(len(KIND_NAMES)))]
        counts[kind] = max(0, counts[kind] - 1)
    return counts


def train_matching(
    steps: int = 1500, batch: int = 128, seed: int = 0, num_images: int = 30_000, log=print
) -> tuple[CountNet, dict]:
    """Train the scorer on rendered images (seeded); returns the model and its held-out count accuracy."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, 3])
    configs = [_random_counts(rng) for _ in range(num_images)]
    images = torch.from_numpy(render_batch(configs, seed + 3)).float()
    labels = torch.tensor([[min(c[k], NUM_CLASSES - 1) for k in KIND_NAMES] for c in configs])
    held = min(2000, num_images // 5)
    gen = torch.Generator().manual_seed(seed + 4)
    torch.manual_seed(seed + 5)
    net = CountNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(held, num_images, (batch,), generator=gen)
        logits = net(degrade(images[idx], gen))
        loss = F.cross_entropy(logits.reshape(-1, NUM_CLASSES), labels[idx].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"[{time.perf_counter() - start:7.1f} s] matching step {step}: loss {loss.item():.4f}")
    net.eval()
    with torch.no_grad():
        clean = net(images[:held]).argmax(-1)
        noisy = net(degrade(images[:held], gen)).argmax(-1)
    stats = {
        "heldout_exact_clean": float((clean == labels[:held]).all(-1).float().mean()),
        "heldout_exact_degraded": float((noisy == labels[:held]).all(-1).float().mean()),
        "seconds": time.perf_counter() - start,
        "steps": steps,
        "seed": seed,
    }
    return net, stats


def save_matching(net: CountNet, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def load_matching(path: str | Path) -> CountNet:
    """Load the scorer's weights; `ModelFilesError` naming the file when it is missing or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .files import ModelFilesError

    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(
            f"matching-score weights {path} do not exist; reinstall ttsplugin or rebuild them with "
            "`ttsplugin train-flow --out DIR`"
        )
    net = CountNet()
    try:
        net.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise ModelFilesError(f"cannot read matching-score weights {path}: {err}") from err
    return net.eval()
