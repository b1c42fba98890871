"""Torch references of the resampling kernels: the CPU path, and the baseline every kernel is tested against.

Each function here computes exactly what its Triton twin in `resample_triton.py` computes, op for op where the
result is discrete: the ancestors come out identical for the same uniforms (see `resample_ancestors_reference`).
Inputs are assumed valid; `ttsplugin_kernels.resample` validates them before calling either path.
"""

from __future__ import annotations

import torch

SCHEMES = ("multinomial", "systematic", "stratified", "residual")
# Largest particle count per row: one Triton program holds a whole row in registers (at 4096 it already takes
# 16 warps and ~10 s to compile); the fixed-point weights below keep 38 bits of resolution up to here.
MAX_PARTICLES = 4096


def fixed_point_bits(num_particles: int) -> int:
    """Bits S of the fixed-point weights q_i = floor(2**S * exp(lw_i - max lw)) used to build the CDF.

    Integer weights make the scan exact and independent of summation order (so the kernel and this reference
    agree bit for bit), and the residual counts floor(N q_i / T) exact. S is as large as int64 allows: the
    residual scheme forms N * T <= N**2 * 2**S < 2**63; beyond 52 bits a float64 weight has no more precision.
    A weight below 2**-S of the row's largest counts as zero (S >= 38 for N <= MAX_PARTICLES).
    """
    log2_n = max(1, (num_particles - 1).bit_length())
    return min(52, 62 - 2 * log2_n)


def uniforms_shape(batch_size: int, num_particles: int, scheme: str) -> tuple[int, int]:
    """Shape of the uniforms a scheme consumes: systematic uses one per row, the others one per particle."""
    return (batch_size, 1) if scheme == "systematic" else (batch_size, num_particles)


def resample_ancestors_reference(
    log_weights: torch.Tensor,
    uniforms: torch.Tensor,
    scheme: str = "systematic",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestor indices of one resampling step, in torch (the reference of `_resample_ancestors_kernel`).

    Args:
        log_weights (`torch.Tensor` of shape `[B, N]`): unnormalised log weights; `-inf` is weight zero.
        uniforms (`torch.Tensor` of shape `[B, 1]` (systematic) or `[B, N]`): uniforms in [0, 1).
        scheme (`str`): one of `SCHEMES`.
        rows (`torch.Tensor` of shape `[B]`, bool, *optional*): rows to resample; the others keep their particles.

    Returns:
        `torch.Tensor` of shape `[B, N]`, int64: `ancestors[b, k]` is the particle copied into slot k. Survivors
        stay in their own slot (`ancestors[b, i] == i` whenever particle i has offspring) and the extra copies
        fill the slots of the particles that died, in increasing slot order, survivors' extras in index order.
        This canonical order is what makes in-place resampling race-free. Rows without a valid weight (all
        `-inf`, a NaN or `+inf`) keep their particles.

    The algorithm, shared with the kernel:
      1. q_i = floor(2**S * exp(lw_i - max lw)) as int64 (`fixed_point_bits`), Q = cumsum(q), T = Q[-1].
      2. One integer target per slot, v_k = floor(u_k * T) (float64 product, clamped to [0, T - 1]):
         multinomial t_k = v_k; stratified t_k = (k T + v_k) // N; systematic the same with one u per row.
         Integer strata are spaced exactly T / N apart, so systematic's floor/ceil guarantee is exact.
      3. The slot's draw is the smallest i with Q_i > t_k (a zero weight has an empty interval: never drawn).
         Residual: particle i first gets floor(N q_i / T) copies; the R remaining slots draw multinomially from
         the residuals N q_i - T floor(N q_i / T), with the uniforms of slots k >= N - R.
      4. Offspring counts -> canonical ancestors (above).
    """
    batch_size, num_particles = log_weights.shape
    device = log_weights.device
    lw = log_weights.to(torch.float64)
    row_max = lw.amax(dim=1, keepdim=True)
    row_ok = (row_max > -torch.inf) & (row_max < torch.inf) & ~torch.isnan(lw).any(dim=1, keepdim=True)
    kept = (lw > -torch.inf) & row_ok
    # NaN/-inf rows would make exp() NaN; they are masked here and left unchanged at the end.
    scaled = torch.where(kept, torch.exp(torch.where(kept, lw - row_max, 0.0)), 0.0)
    q = (scaled * float(2 ** fixed_point_bits(num_particles))).to(torch.int64)
    total = q.sum(dim=1, keepdim=True).clamp_min(1)
    slot = torch.arange(num_particles, device=device)
    u = uniforms.to(torch.float64).expand(batch_size, num_particles)

    if scheme == "residual":
        det_counts = (num_particles * q) // total
        det_total = det_counts.sum(dim=1, keepdim=True)
        residual = num_particles * q - det_counts * total
        residual_total = ((num_particles - det_total) * total).clamp_min(1)
        target = _clamp_target((u * residual_total.to(torch.float64)).to(torch.int64), residual_total)
        drawn = torch.searchsorted(residual.cumsum(dim=1), target, right=True).clamp_max(num_particles - 1)
        counts = det_counts.scatter_add(1, drawn, (slot >= det_total).to(torch.int64))
    elif scheme in SCHEMES:
        target = _clamp_target((u * total.to(torch.float64)).to(torch.int64), total)
        if scheme != "multinomial":  # slot k's stratum [k T / N, (k + 1) T / N), in exact integers
            target = (slot * total + target) // num_particles
        drawn = torch.searchsorted(q.cumsum(dim=1), target, right=True).clamp_max(num_particles - 1)
        counts = torch.zeros_like(q).scatter_add(1, drawn, torch.ones_like(drawn))
    else:
        raise ValueError(f"`scheme` must be one of {SCHEMES}, got {scheme!r}")

    ancestors = canonical_ancestors_reference(counts)
    keep_rows = row_ok if rows is None else row_ok & rows.reshape(batch_size, 1).to(torch.bool)
    return torch.where(keep_rows, ancestors, slot)


def _clamp_target(target: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.minimum(target, total - 1).clamp_min(0)


def canonical_ancestors_reference(counts: torch.Tensor) -> torch.Tensor:
    """Offspring counts `[B, N]` (each row sums to N) -> ancestors in the in-place-safe canonical order.

    Particle i with counts[i] >= 1 keeps slot i; its counts[i] - 1 extra copies go, in order of i, to the slots
    of the particles with counts == 0, in increasing slot order.
    """
    num_particles = counts.shape[1]
    slot = torch.arange(num_particles, device=counts.device)
    extra_end = (counts - 1).clamp_min(0).cumsum(dim=1)
    dead = counts == 0
    dead_rank = (dead.to(torch.int64).cumsum(dim=1) - 1).clamp_min(0)
    source = torch.searchsorted(extra_end, dead_rank, right=True).clamp_max(num_particles - 1)
    return torch.where(dead, source, slot)


def gather_particles_reference(
    x: torch.Tensor, ancestors: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`out[b, k] = x[b, ancestors[b, k]]` for x `[B, N, ...]` and ancestors `[B, M]` (reference of the gather)."""
    batch_index = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    gathered = x[batch_index, ancestors]
    if out is None:
        return gathered
    return out.copy_(gathered)


def normalized_weights_reference(rewards: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(rewards / temperature) over the particles, in float32; `-inf` rewards get weight 0."""
    return torch.softmax(rewards.to(torch.float32) / temperature, dim=-1)


def effective_sample_size_reference(log_weights: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ESS = 1 / sum_i w_i**2 of w = softmax(log_weights / temperature), per row, float32, in [1, N]."""
    weights = normalized_weights_reference(log_weights, temperature)
    return 1.0 / weights.square().sum(dim=-1)
