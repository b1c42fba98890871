"""Triton kernels for batched resampling, and their launchers. Torch references: `resample_reference.py`.

Four kernels, each launched once per call for the whole batch:
  * `_resample_ancestors_kernel`: one program per row (max-shift, exp, fixed-point weights, scan, binary
    search, offspring histogram, canonical in-place-safe order). Its ancestors equal the reference's for the
    same uniforms: everything after exp() is int64 arithmetic or single IEEE float64 products.
  * `_gather_particles_kernel`: out[b, k] = x[b, ancestors[b, k]] over [rows, features] tiles, a pure copy at
    memory speed; in place it only moves the particles that died (survivors keep their slot).
  * `_normalized_weights_kernel`: softmax(r / temperature) and the effective sample size per row.
  * `_resample_fused_kernel`: both steps in one launch for small problems (resample.FUSED_MAX_PARTICLES), where the
    cost is launches, not bytes: every program recomputes its row's ancestors in registers (N x N comparisons
    instead of a scan in memory, the same integer arithmetic, so the same ancestors) and copies one tile of
    features of every particle of the row.

Written for triton 3.6 (GPU machine) and 3.9 (CI, interpreter): every load is masked, no block pointers, no
libdevice calls, no inline asm. Whether the kernels run under the interpreter is decided when this module is
imported (`TRITON_INTERPRET=1`), as Triton decides it when `@triton.jit` runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .resample_reference import SCHEMES, fixed_point_bits

_SCHEME_IDS = {name: index for index, name in enumerate(SCHEMES)}
_MULTINOMIAL: tl.constexpr = tl.constexpr(_SCHEME_IDS["multinomial"])
_RESIDUAL: tl.constexpr = tl.constexpr(_SCHEME_IDS["residual"])

# Gather: a particle wider than _MAX_BLOCK_D elements spans programs (32 contiguous elements per thread);
# narrower ones are packed into tiles of _NARROW_TILE elements (each row has its own source address, so
# fewer elements per thread keep registers low).
_MAX_BLOCK_D = 4096
_NARROW_TILE = 1024
# A row block of at least one element per thread: no element is replicated across threads, which
# tl.histogram's lowering counts once per replica in some Triton versions.
_MIN_ROW_BLOCK = 32
# Elements of x one fused program copies (BLOCK_N particles x BLOCK_D features).
_FUSED_TILE = 4096


@triton.jit
def _search_right(sorted_ptr, target, n, mask, LOG2_BLOCK: tl.constexpr):
    """Per lane: the smallest i in [0, n) with sorted[i] > target, for a nondecreasing `sorted` whose last
    element exceeds every target. Binary search over memory, LOG2_BLOCK >= ceil(log2(n)) steps."""
    lo = tl.zeros(target.shape, dtype=tl.int64)
    hi = lo + (n - 1)
    for _ in range(LOG2_BLOCK):
        mid = (lo + hi) // 2
        value = tl.load(sorted_ptr + mid, mask=mask, other=0, volatile=True)
        right = value <= target
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    return tl.minimum(lo, n - 1)


@triton.jit
def _fixed_point_weights(
    log_weights_ptr, row, slot, in_row, stride_lb, stride_ln, fixed_point_scale, BLOCK: tl.constexpr
):
    """One row's weights as int64 q_i = floor(2^S exp(lw_i - max lw)), their total and the row's validity flag,
    exactly as `resample_ancestors_reference` computes them (step 1 of both resampling kernels)."""
    lw = tl.load(log_weights_ptr + row * stride_lb + slot * stride_ln, mask=in_row, other=float("-inf"))
    lw = lw.to(tl.float64)
    # A NaN counts as +inf for the max (GPU max reductions drop NaN), so one max flags bad rows: all -inf,
    # any NaN or +inf. Row-wide flags stay [BLOCK] tensors: the 3.9 interpreter mistypes a comparison of
    # scalars, and broadcasting that into a block fails.
    row_max = tl.zeros([BLOCK], dtype=tl.float64) + tl.max(tl.where(lw != lw, float("inf"), lw), axis=0)
    row_ok = (row_max > float("-inf")) & (row_max < float("inf"))
    kept = (lw > float("-inf")) & row_ok
    scaled = tl.where(kept, tl.exp(tl.where(kept, lw, 0.0) - tl.where(kept, row_max, 0.0)), 0.0)
    q = (scaled * fixed_point_scale).to(tl.int64)
    return q, tl.maximum(tl.sum(q, axis=0), 1), row_ok


@triton.jit(do_not_specialize=["n", "stride_lb", "stride_ln", "stride_ub", "stride_un", "stride_ab"])
def _resample_ancestors_kernel(
    log_weights_ptr,  # [B, N] any float dtype
    uniforms_ptr,  # [B, N] or [B, 1] (stride_un = 0) float
    rows_ptr,  # [B] bool, read only if HAS_ROWS
    ancestors_ptr,  # [B, N] int64, unit stride along N; also the row's scratch space
    n,
    stride_lb,
    stride_ln,
    stride_ub,
    stride_un,
    stride_ab,
    fixed_point_scale,  # 2.0 ** fixed_point_bits(n), float64
    SCHEME: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    LOG2_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, BLOCK)
    in_row = slot < n
    scratch = ancestors_ptr + row * stride_ab

    # 1. Max-shift, exp, fixed-point weights, exact integer scan.
    q, total, row_ok = _fixed_point_weights(
        log_weights_ptr, row, slot, in_row, stride_lb, stride_ln, fixed_point_scale, BLOCK
    )
    u = tl.load(uniforms_ptr + row * stride_ub + slot * stride_un, mask=in_row, other=0.0).to(tl.float64)

    # 2-3. Positions -> targets -> drawn particle per slot, then offspring counts (a histogram).
    if SCHEME == _RESIDUAL:
        det_counts = (n * q) // total
        det_total = tl.sum(det_counts, axis=0)
        residual = n * q - det_counts * total
        residual_total = tl.maximum((n - det_total) * total, 1)
        target = (u * residual_total.to(tl.float64)).to(tl.int64)
        target = tl.maximum(tl.minimum(target, residual_total - 1), 0)
        tl.store(scratch + slot, tl.cumsum(residual, axis=0), mask=in_row)
        tl.debug_barrier()
        draws = in_row & (slot >= det_total)
        drawn = _search_right(scratch, target, n, draws, LOG2_BLOCK)
        counts = det_counts + tl.histogram(tl.where(draws, drawn, 0).to(tl.int32), BLOCK, mask=draws)
    else:
        target = (u * total.to(tl.float64)).to(tl.int64)
        target = tl.maximum(tl.minimum(target, total - 1), 0)
        if SCHEME != _MULTINOMIAL:  # slot k's stratum, exact; systematic reads one u per row (stride_un = 0)
            target = (slot.to(tl.int64) * total + target) // n
        tl.store(scratch + slot, tl.cumsum(q, axis=0), mask=in_row)
        tl.debug_barrier()
        drawn = _search_right(scratch, target, n, in_row, LOG2_BLOCK)
        counts = tl.histogram(tl.where(in_row, drawn, 0).to(tl.int32), BLOCK, mask=in_row).to(tl.int64)

    # 4. Canonical order: survivors keep their slot, extra copies fill the dead slots in order.
    dead = in_row & (counts == 0)
    dead_rank = tl.maximum(tl.cumsum(dead.to(tl.int64), axis=0) - 1, 0)
    extra_end = tl.cumsum(tl.where(in_row, tl.maximum(counts - 1, 0), 0), axis=0)
    tl.debug_barrier()  # every lane is done reading the scan above before it is overwritten
    tl.store(scratch + slot, extra_end, mask=in_row)
    tl.debug_barrier()
    source = _search_right(scratch, dead_rank, n, dead, LOG2_BLOCK)
    ancestors = tl.where(dead, source, slot.to(tl.int64))
    resample_row = row_ok
    if HAS_ROWS:
        resample_row = resample_row & (tl.load(rows_ptr + row + slot * 0, mask=in_row, other=0) != 0)
    ancestors = tl.where(resample_row, ancestors, slot.to(tl.int64))
    tl.debug_barrier()
    tl.store(scratch + slot, ancestors, mask=in_row)


@triton.jit
def _gather_particles_kernel(
    x_ptr,  # [B, N_in, D], unit stride along D
    ancestors_ptr,  # [B, N_out] int64
    out_ptr,  # [B, N_out, D], unit stride along D (may be x itself: IN_PLACE)
    n_in,
    n_out,
    d,
    num_slots,  # B * N_out
    stride_xb,
    stride_xn,
    stride_ab,
    stride_an,
    stride_ob,
    stride_on,
    num_d_blocks,
    IN_PLACE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    slot_block = pid // num_d_blocks
    d_block = pid % num_d_blocks  # consecutive programs copy consecutive chunks of one particle
    flat_slot = slot_block * ROWS + tl.arange(0, ROWS).to(tl.int64)
    slot_ok = flat_slot < num_slots
    batch = flat_slot // n_out
    slot = flat_slot % n_out
    source = tl.load(ancestors_ptr + batch * stride_ab + slot * stride_an, mask=slot_ok, other=0)
    source = tl.minimum(tl.maximum(source, 0), n_in - 1)  # memory safety if unvalidated ancestors are bad
    if IN_PLACE:
        slot_ok = slot_ok & (source != slot)  # survivors stay put: read once per copy, no write-after-read
    feature = d_block * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = slot_ok[:, None] & (feature < d)[None, :]
    src = x_ptr + (batch * stride_xb + source * stride_xn)[:, None] + feature[None, :]
    values = tl.load(src, mask=mask, other=0)
    dst = out_ptr + (batch * stride_ob + slot * stride_on)[:, None] + feature[None, :]
    tl.store(dst, values, mask=mask)


@triton.jit(do_not_specialize=["n", "stride_rb", "stride_rn", "stride_wb"])
def _normalized_weights_kernel(
    rewards_ptr,  # [B, N] any float dtype
    weights_ptr,  # [B, N] float32, written if WRITE_WEIGHTS
    ess_ptr,  # [B] float32, written if WRITE_ESS
    n,
    stride_rb,
    stride_rn,
    stride_wb,
    inv_temperature,
    WRITE_WEIGHTS: tl.constexpr,
    WRITE_ESS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, BLOCK)
    in_row = slot < n
    z = tl.load(rewards_ptr + row * stride_rb + slot * stride_rn, mask=in_row, other=float("-inf"))
    z = z.to(tl.float32) * inv_temperature
    row_max = tl.max(z, axis=0)
    kept = z > float("-inf")
    # A row of -inf (or NaN) yields 0/0 = NaN, as torch.softmax does; validated inputs never get here.
    e = tl.where(kept, tl.exp(tl.where(kept, z, 0.0) - tl.where(kept, row_max, 0.0)), 0.0)
    e = tl.where(z != z, float("nan"), e)
    total = tl.sum(e, axis=0)
    if WRITE_WEIGHTS:
        tl.store(weights_ptr + row * stride_wb + slot, e / total, mask=in_row)
    if WRITE_ESS:
        tl.store(ess_ptr + row, total * total / tl.sum(e * e, axis=0))


@triton.jit
def _count_at_most(sorted_values, targets, valid):
    """Per target k: #{i valid : sorted[i] <= targets[k]}, i.e. the smallest i with sorted[i] > target (a
    right-sided search) for a nondecreasing `sorted`, by brute force in registers: [BLOCK, BLOCK] comparisons."""
    hits = (sorted_values[None, :] <= targets[:, None]) & valid[None, :]
    return tl.sum(hits.to(tl.int64), axis=1)


@triton.jit
def _offspring(drawn, draws, slot):
    """Per particle i: #{k : draws[k] and drawn[k] == i} (a histogram, in registers)."""
    hits = (drawn[None, :] == slot[:, None]) & draws[None, :]
    return tl.sum(hits.to(tl.int64), axis=1)


@triton.jit(
    do_not_specialize=[
        "n", "d", "num_d_blocks", "stride_lb", "stride_ln", "stride_ub", "stride_un", "stride_xb", "stride_xn",
        "stride_ob", "stride_on", "stride_ab",
    ]
)  # fmt: skip
def _resample_fused_kernel(
    log_weights_ptr,  # [B, N] any float dtype
    uniforms_ptr,  # [B, N] or [B, 1] (stride_un = 0) float
    rows_ptr,  # [B] bool, read only if HAS_ROWS
    x_ptr,  # [B, N, D], unit stride along D
    out_ptr,  # [B, N, D], unit stride along D (may be x itself: IN_PLACE)
    ancestors_ptr,  # [B, N] int64, unit stride along N
    n,
    d,
    num_d_blocks,
    stride_lb,
    stride_ln,
    stride_ub,
    stride_un,
    stride_xb,
    stride_xn,
    stride_ob,
    stride_on,
    stride_ab,
    fixed_point_scale,  # 2.0 ** fixed_point_bits(n), float64
    SCHEME: tl.constexpr,
    HAS_ROWS: tl.constexpr,
    IN_PLACE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // num_d_blocks
    d_block = pid % num_d_blocks
    slot = tl.arange(0, BLOCK_N)
    in_row = slot < n

    # 1. The fixed-point weights of `_resample_ancestors_kernel`, by the same function.
    q, total, row_ok = _fixed_point_weights(
        log_weights_ptr, row, slot, in_row, stride_lb, stride_ln, fixed_point_scale, BLOCK_N
    )
    u = tl.load(uniforms_ptr + row * stride_ub + slot * stride_un, mask=in_row, other=0.0).to(tl.float64)

    # 2. Draws and offspring counts, searches and histogram in registers.
    if SCHEME == _RESIDUAL:
        det_counts = (n * q) // total
        det_total = tl.sum(det_counts, axis=0)
        residual = n * q - det_counts * total
        residual_total = tl.maximum((n - det_total) * total, 1)
        target = (u * residual_total.to(tl.float64)).to(tl.int64)
        target = tl.maximum(tl.minimum(target, residual_total - 1), 0)
        drawn = tl.minimum(_count_at_most(tl.cumsum(residual, axis=0), target, in_row), n - 1)
        counts = det_counts + _offspring(drawn, in_row & (slot >= det_total), slot)
    else:
        target = (u * total.to(tl.float64)).to(tl.int64)
        target = tl.maximum(tl.minimum(target, total - 1), 0)
        if SCHEME != _MULTINOMIAL:
            target = (slot.to(tl.int64) * total + target) // n
        drawn = tl.minimum(_count_at_most(tl.cumsum(q, axis=0), target, in_row), n - 1)
        counts = _offspring(drawn, in_row, slot)

    # 3. Canonical order: survivors keep their slot, extra copies fill the dead slots in order.
    dead = in_row & (counts == 0)
    dead_rank = tl.maximum(tl.cumsum(dead.to(tl.int64), axis=0) - 1, 0)
    extra_end = tl.cumsum(tl.where(in_row, tl.maximum(counts - 1, 0), 0), axis=0)
    source = tl.minimum(_count_at_most(extra_end, dead_rank, in_row), n - 1)
    ancestors = tl.where(dead, source, slot.to(tl.int64))
    resample_row = row_ok
    if HAS_ROWS:
        resample_row = resample_row & (tl.load(rows_ptr + row + slot * 0, mask=in_row, other=0) != 0)
    ancestors = tl.where(resample_row, ancestors, slot.to(tl.int64))
    # The first tile's program writes the ancestors (the d_block test is a block: the interpreter mistypes scalars).
    first = (tl.zeros([BLOCK_N], dtype=tl.int64) + d_block) == 0
    tl.store(ancestors_ptr + row * stride_ab + slot, ancestors, mask=in_row & first)

    # 4. This program's tile of every particle of the row: out[row, k, tile] = x[row, ancestors[k], tile].
    feature = d_block * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    copy = in_row
    if IN_PLACE:
        copy = copy & (ancestors != slot)  # survivors stay put; sources are survivors, never written
    mask = copy[:, None] & (feature < d)[None, :]
    values = tl.load(x_ptr + row * stride_xb + (ancestors * stride_xn)[:, None] + feature[None, :], mask=mask)
    tl.store(
        out_ptr + row * stride_ob + (slot.to(tl.int64) * stride_on)[:, None] + feature[None, :],
        values,
        mask=mask,
    )


def _row_block(n: int) -> tuple[int, int, int]:
    """(BLOCK, log2(BLOCK), num_warps) for one program per row of n: at least one element per thread."""
    block = max(_MIN_ROW_BLOCK, triton.next_power_of_2(n))
    num_warps = min(block // 32, 16 if block >= 4096 else 8)  # <= 8 int64 values per thread and array
    return block, block.bit_length() - 1, num_warps


def resample_ancestors_triton(
    log_weights: torch.Tensor,
    uniforms: torch.Tensor,
    scheme: str,
    rows: torch.Tensor | None,
    out: torch.Tensor,
) -> torch.Tensor:
    """Launch `_resample_ancestors_kernel` (one program per row) writing into `out` ([B, N] int64, unit stride
    along N). Inputs are validated by the caller."""
    batch_size, n = log_weights.shape
    if batch_size == 0:
        return out
    block, log2_block, num_warps = _row_block(n)
    stride_un = 0 if uniforms.shape[1] == 1 else uniforms.stride(1)
    _resample_ancestors_kernel[(batch_size,)](
        log_weights,
        uniforms,
        rows if rows is not None else out,
        out,
        n,
        log_weights.stride(0),
        log_weights.stride(1),
        uniforms.stride(0),
        stride_un,
        out.stride(0),
        float(2 ** fixed_point_bits(n)),
        SCHEME=_SCHEME_IDS[scheme],
        HAS_ROWS=rows is not None,
        BLOCK=block,
        LOG2_BLOCK=log2_block,
        num_warps=num_warps,
    )
    return out


def fused_launch_config(n: int, d: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D) of the fused kernel: all N particles of a row times a tile of features."""
    block_n = triton.next_power_of_2(max(n, 1))
    block_d = max(1, min(_FUSED_TILE // block_n, triton.next_power_of_2(max(d, 1))))
    return block_n, block_d


def resample_fused_triton(
    log_weights: torch.Tensor,
    uniforms: torch.Tensor,
    scheme: str,
    rows: torch.Tensor | None,
    x: torch.Tensor,
    out: torch.Tensor,
    ancestors: torch.Tensor,
) -> None:
    """Launch `_resample_fused_kernel` once: ancestors into `ancestors` ([B, N] int64, unit stride along N) and
    particles x [B, N, D] -> out [B, N, D] (3-D views with unit stride along D; `out` may be `x`). N must be
    <= `resample.FUSED_MAX_PARTICLES` (it holds N x N comparisons in registers). Inputs are validated by the
    caller."""
    batch_size, n, d = x.shape
    if batch_size == 0:
        return
    block_n, block_d = fused_launch_config(n, d)
    num_d_blocks = triton.cdiv(max(d, 1), block_d)
    stride_un = 0 if uniforms.shape[1] == 1 else uniforms.stride(1)
    _resample_fused_kernel[(batch_size * num_d_blocks,)](
        log_weights,
        uniforms,
        rows if rows is not None else ancestors,
        x,
        out,
        ancestors,
        n,
        d,
        num_d_blocks,
        log_weights.stride(0),
        log_weights.stride(1),
        uniforms.stride(0),
        stride_un,
        x.stride(0),
        x.stride(1),
        out.stride(0),
        out.stride(1),
        ancestors.stride(0),
        float(2 ** fixed_point_bits(n)),
        SCHEME=_SCHEME_IDS[scheme],
        HAS_ROWS=rows is not None,
        IN_PLACE=out.data_ptr() == x.data_ptr(),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=4,
    )


def gather_launch_config(d: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_D, num_warps) of the gather for particles of d elements: one wide particle spans programs
    of _MAX_BLOCK_D elements; narrow ones are packed ROWS per program."""
    block_d = min(triton.next_power_of_2(max(d, 1)), _MAX_BLOCK_D)
    rows = max(1, _NARROW_TILE // block_d)
    return rows, block_d, 4


def gather_particles_triton(
    x: torch.Tensor, ancestors: torch.Tensor, out: torch.Tensor, config: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """Launch `_gather_particles_kernel`: x [B, N_in, D] -> out [B, N_out, D] (3-D views with unit stride along
    D). `out` may be `x` itself (in place; ancestors must be canonical, see `resample_ancestors_reference`).
    `config` overrides `gather_launch_config` (benchmarks)."""
    batch_size, n_in, d = x.shape
    n_out = ancestors.shape[1]
    num_slots = batch_size * n_out
    if num_slots == 0 or d == 0:
        return out
    rows, block_d, num_warps = config or gather_launch_config(d)
    num_d_blocks = triton.cdiv(d, block_d)
    grid = (triton.cdiv(num_slots, rows) * num_d_blocks,)
    _gather_particles_kernel[grid](
        x,
        ancestors,
        out,
        n_in,
        n_out,
        d,
        num_slots,
        x.stride(0),
        x.stride(1),
        ancestors.stride(0),
        ancestors.stride(1),
        out.stride(0),
        out.stride(1),
        num_d_blocks,
        IN_PLACE=out.data_ptr() == x.data_ptr(),
        ROWS=rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out


def normalized_weights_triton(
    rewards: torch.Tensor,
    temperature: float,
    weights_out: torch.Tensor | None,
    ess_out: torch.Tensor | None,
) -> None:
    """Launch `_normalized_weights_kernel`: weights [B, N] float32 (unit stride along N) and/or ESS [B]."""
    batch_size, n = rewards.shape
    if batch_size == 0:
        return
    block, _, num_warps = _row_block(n)
    placeholder = weights_out if weights_out is not None else ess_out
    _normalized_weights_kernel[(batch_size,)](
        rewards,
        weights_out if weights_out is not None else placeholder,
        ess_out if ess_out is not None else placeholder,
        n,
        rewards.stride(0),
        rewards.stride(1),
        weights_out.stride(0) if weights_out is not None else 0,
        1.0 / temperature,
        WRITE_WEIGHTS=weights_out is not None,
        WRITE_ESS=ess_out is not None,
        BLOCK=block,
        num_warps=num_warps,
    )


def kernels_interpreted() -> bool:
    """Whether this module's kernels were built for the Triton CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return type(_resample_ancestors_kernel).__name__ == "InterpretedFunction"
