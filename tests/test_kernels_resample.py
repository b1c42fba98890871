"""Batched resampling: Triton kernels vs torch references, scheme properties, bad input.

Runs on CUDA when a GPU is present (the kernels compiled natively) and on the CPU otherwise, where
tests/conftest.py sets TRITON_INTERPRET=1 so `backend="triton"` runs the same kernels under the interpreter.
Interpreter programs cost ~20 ms each here, so grids and example counts stay small; statistical tests draw
their many replicates as rows of one batched call.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import ttsplugin_kernels as tk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ttsplugin_kernels.resample_reference import (
    canonical_ancestors_reference,
    fixed_point_bits,
    resample_ancestors_reference,
)
from ttsplugin_kernels.utils import triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"
BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton")),
]
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
# On the GPU every new (scheme, block, dtype) is a fresh compile (~0.3-1.5 s): fewer, still varied examples.
EXAMPLES = 10 if ON_GPU else 30
hypothesis_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PARTICLE_COUNTS = st.one_of(
    st.integers(1, 40), st.sampled_from([63, 64, 65, 100, 127, 255, 257, 500, 511, 1000, 1023, 1024])
)
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_log_weights(
    batch_size: int, num_particles: int, seed: int, spread: float, zero_fraction: float, dtype=torch.float32
) -> torch.Tensor:
    """Log weights with `spread` standard deviation, a fraction of -inf entries, at least one finite per row."""
    g = torch.Generator().manual_seed(seed)
    lw = torch.randn(batch_size, num_particles, generator=g, dtype=torch.float64) * spread
    lw[torch.rand(batch_size, num_particles, generator=g) < zero_fraction] = -math.inf
    keep = torch.randint(num_particles, (batch_size,), generator=g)
    lw[torch.arange(batch_size), keep] = torch.randn(batch_size, generator=g, dtype=torch.float64)
    return lw.to(dtype).to(DEVICE)


def offspring_counts(ancestors: torch.Tensor, num_particles: int) -> torch.Tensor:
    counts = torch.zeros(ancestors.shape[0], num_particles, dtype=torch.int64, device=ancestors.device)
    return counts.scatter_add_(1, ancestors, torch.ones_like(ancestors))


def assert_canonical(ancestors: torch.Tensor) -> None:
    """Survivors keep their slot; every copied particle is a survivor (what makes in place race-free)."""
    slot = torch.arange(ancestors.shape[1], device=ancestors.device).expand_as(ancestors)
    counts = offspring_counts(ancestors, ancestors.shape[1])
    assert torch.equal(ancestors.gather(1, ancestors), ancestors)
    assert torch.equal(torch.where(counts > 0, ancestors, slot), slot)


# ---------------------------------------------------------------------------------------------------------------
# Triton vs torch reference


@needs_triton
@hypothesis_settings
@given(
    scheme=st.sampled_from(tk.SCHEMES),
    batch_size=st.integers(1, 3),
    num_particles=PARTICLE_COUNTS,
    seed=st.integers(0, 2**31 - 1),
    spread=st.sampled_from([0.0, 1.0, 5.0, 60.0]),
    zero_fraction=st.sampled_from([0.0, 0.3, 0.9]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    masked_rows=st.booleans(),
)
def test_ancestors_identical_to_reference_for_same_uniforms(
    scheme, batch_size, num_particles, seed, spread, zero_fraction, dtype, masked_rows
):
    lw = random_log_weights(batch_size, num_particles, seed, spread, zero_fraction, dtype)
    g = torch.Generator(DEVICE).manual_seed(seed)
    uniforms = tk.draw_uniforms(batch_size, num_particles, scheme, g, device=DEVICE)
    rows = (torch.arange(batch_size, device=DEVICE) % 2 == 0) if masked_rows else None
    kernel = tk.resample_ancestors(lw, scheme, uniforms=uniforms, rows=rows, backend="triton")
    reference = tk.resample_ancestors(lw, scheme, uniforms=uniforms, rows=rows, backend="torch")
    assert kernel.dtype == torch.int64 and kernel.shape == (batch_size, num_particles)
    assert torch.equal(kernel, reference)
    assert_canonical(kernel)
    chosen = offspring_counts(kernel, num_particles) > 0
    resampled = torch.ones(batch_size, 1, dtype=torch.bool, device=DEVICE) if rows is None else rows[:, None]
    assert not (chosen & resampled & (lw == -math.inf)).any(), "a weight-zero particle was chosen"
    if rows is not None:
        assert torch.equal(kernel[1::2], torch.arange(num_particles, device=DEVICE).expand_as(kernel[1::2]))


@needs_triton
@hypothesis_settings
@given(
    scheme=st.sampled_from(tk.SCHEMES),
    batch_size=st.integers(1, 3),
    num_particles=PARTICLE_COUNTS,
    trailing=st.sampled_from([(), (1,), (3,), (5, 7), (2, 3, 5), (16,), (4097,)]),
    dtype=st.sampled_from(FLOAT_DTYPES),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(["new", "out", "in_place"]),
)
def test_resample_matches_reference(scheme, batch_size, num_particles, trailing, dtype, seed, mode):
    features = math.prod(trailing)
    if batch_size * num_particles * features > 60_000:  # keep interpreter grids small
        trailing, features = (3,), 3
    lw = random_log_weights(batch_size, num_particles, seed, 2.0, 0.2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, num_particles, *trailing, generator=g).to(dtype).to(DEVICE)
    expected, expected_ancestors = tk.resample(
        x, lw, scheme, torch.Generator(DEVICE).manual_seed(seed), backend="torch"
    )
    assert torch.equal(expected, x[torch.arange(batch_size, device=DEVICE)[:, None], expected_ancestors])

    source = x.clone()
    out = source if mode == "in_place" else torch.full_like(x, float("nan")) if mode == "out" else None
    got, ancestors = tk.resample(
        source, lw, scheme, torch.Generator(DEVICE).manual_seed(seed), backend="triton", out=out
    )
    assert torch.equal(ancestors, expected_ancestors)  # same generator state -> same uniforms -> same draws
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got, expected)
    if out is not None:
        assert got is out


@needs_triton
@hypothesis_settings
@given(
    scheme=st.sampled_from(tk.SCHEMES),
    batch_size=st.integers(1, 3),
    num_particles=st.one_of(st.integers(1, 17), st.sampled_from([31, 32, 33, 63, 64])),
    features=st.sampled_from([1, 3, 37, 1025, 4097]),
    seed=st.integers(0, 2**31 - 1),
    zero_fraction=st.sampled_from([0.0, 0.5]),
    masked_rows=st.booleans(),
    mode=st.sampled_from(["new", "out", "in_place"]),
)
def test_fused_and_two_pass_paths_are_identical(
    scheme, batch_size, num_particles, features, seed, zero_fraction, masked_rows, mode
):
    """The one-launch fused kernel (small problems) and the ancestor kernel + gather give the reference's
    ancestors and particles, bit for bit, in every mode."""
    from ttsplugin_kernels.resample import _resample

    if batch_size * num_particles * features > 60_000:  # keep interpreter grids small
        features = 3
    lw = random_log_weights(batch_size, num_particles, seed, 3.0, zero_fraction)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, num_particles, features, generator=g).to(DEVICE)
    uniforms = tk.draw_uniforms(batch_size, num_particles, scheme, torch.Generator(DEVICE).manual_seed(seed))
    rows = (torch.arange(batch_size, device=DEVICE) % 2 == 0) if masked_rows else None
    expected, expected_ancestors = tk.resample(x, lw, scheme, uniforms=uniforms, rows=rows, backend="torch")
    for path in ("fused", "two_pass"):
        source = x.clone()
        out = source if mode == "in_place" else torch.full_like(x, float("nan")) if mode == "out" else None
        got, ancestors = _resample(
            source, lw, uniforms, scheme, rows, out, None, mode == "in_place", "triton", path
        )
        assert torch.equal(ancestors, expected_ancestors), path
        assert torch.equal(got, expected), path
        if out is not None:
            assert got is out


@needs_triton
def test_size_dispatch(monkeypatch):
    """Small problems take one launch (the fused kernel), large ones the ancestor kernel + the gather."""
    import ttsplugin_kernels.resample_triton as rt
    from ttsplugin_kernels.resample import FUSED_MAX_BYTES, _resample

    launches = []
    for name in ("resample_fused_triton", "resample_ancestors_triton", "gather_particles_triton"):
        original = getattr(rt, name)
        monkeypatch.setattr(
            rt, name, lambda *a, _o=original, _n=name, **k: launches.append(_n) or _o(*a, **k)
        )
    tk.resample(torch.zeros(1, 4, 8, device=DEVICE), torch.zeros(1, 4, device=DEVICE), backend="triton")
    assert launches == ["resample_fused_triton"]
    launches.clear()
    tk.resample(torch.zeros(1, 65, 2, device=DEVICE), torch.zeros(1, 65, device=DEVICE), backend="triton")
    assert launches == ["resample_ancestors_triton", "gather_particles_triton"]
    assert FUSED_MAX_BYTES >= 32 * 2**20  # every size the H200 table showed launch-bound (<= 32 MiB)
    big = torch.zeros(1, 65, 1, device=DEVICE)
    uniforms = torch.zeros(1, 1, device=DEVICE, dtype=torch.float64)
    with pytest.raises(ValueError, match="N <= 64"):
        _resample(big, big[..., 0], uniforms, "systematic", None, None, None, False, "triton", "fused")


@needs_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gather_strided_inputs_and_other_particle_counts(dtype):
    g = torch.Generator().manual_seed(3)
    base = torch.randn(3, 10, 6, 5, generator=g).to(dtype).to(DEVICE)
    cases = [
        base[:, ::2],  # strided along N
        base.transpose(2, 3),  # trailing dims not mergeable: gathered from a contiguous copy
        base[:, :, 1:4],  # row stride != features
    ]
    for x in cases:
        ancestors = torch.randint(x.shape[1], (3, 7), generator=g).to(DEVICE)  # M = 7 != N
        expected = x[torch.arange(3, device=DEVICE)[:, None], ancestors]
        assert torch.equal(tk.gather_particles(x, ancestors, backend="triton"), expected)
        out = torch.empty(3, 7, *x.shape[2:], dtype=dtype, device=DEVICE)
        assert tk.gather_particles(x, ancestors, out=out, backend="triton") is out
        assert torch.equal(out, expected)


def test_ancestors_are_deterministic_given_the_generator():
    lw = random_log_weights(4, 33, seed=1, spread=1.0, zero_fraction=0.2)
    first = tk.resample_ancestors(lw, "stratified", torch.Generator(DEVICE).manual_seed(7))
    again = tk.resample_ancestors(lw, "stratified", torch.Generator(DEVICE).manual_seed(7))
    other = tk.resample_ancestors(lw, "stratified", torch.Generator(DEVICE).manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_fixed_point_weights_fit_int64():
    for n in [1, 2, 3, 32, 33, 1000, 1024, tk.MAX_PARTICLES]:
        bits = fixed_point_bits(n)
        assert 38 <= bits <= 52
        assert n * n * 2**bits < 2**63  # residual totals N * T, T <= N * 2**bits


# ---------------------------------------------------------------------------------------------------------------
# Scheme properties: many independent draws = many rows of one batched call (same weights in every row).

# N = 10; N * w = (3, 0.2, 0, 1.1, 0.7, 1.5, 0.05, 2, 0.45, 1): integers, fractions and one zero weight.
PROPERTY_WEIGHTS = torch.tensor(
    [0.30, 0.02, 0.0, 0.11, 0.07, 0.15, 0.005, 0.20, 0.045, 0.10], dtype=torch.float64
)
ALPHA = (
    1e-3  # significance level of every chi-square test below; seeds are fixed, so results are reproducible
)
DRAWS = {"torch": 4000, "triton": 4000 if ON_GPU else 100}  # interpreter: ~20 ms per row


PROPERTY_LOG_WEIGHTS = PROPERTY_WEIGHTS.log() + 3.0  # float64, unnormalised


def represented_copies(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(N w_i) and ceil(N w_i), exactly, for the weights w_i = q_i / T that float log weights represent.

    exp(log 0.3 - log 0.3 ...) is not exactly 0.3 / 0.3 ...: N w_i = 3 may be 2.9999999999999996 as far as any
    resampler can know, so the copy bounds are computed in integers from the fixed-point weights q_i."""
    num_particles = log_weights.shape[-1]
    # exp() on the resampler's own device: CUDA's float64 exp may differ from the CPU's in the last ulp, which
    # moves N w_i = 3 to 2.999... there, and the bounds must be those of the weights the resampler saw.
    lw = log_weights.to(DEVICE, torch.float64)
    q = (torch.exp(lw - lw.max()) * 2.0 ** fixed_point_bits(num_particles)).to(torch.int64)
    total = q.sum()
    return ((num_particles * q) // total).cpu(), (-((-num_particles * q) // total)).cpu()


@functools.cache
def property_counts(backend: str, scheme: str) -> torch.Tensor:
    """Offspring counts [draws, N] of `scheme` with PROPERTY_LOG_WEIGHTS in every row."""
    draws = DRAWS[backend]
    lw = PROPERTY_LOG_WEIGHTS.expand(draws, -1).contiguous().to(DEVICE)
    g = torch.Generator(DEVICE).manual_seed(2024 + tk.SCHEMES.index(scheme))
    ancestors = tk.resample_ancestors(lw, scheme, g, backend=backend)
    assert_canonical(ancestors)
    return offspring_counts(ancestors, lw.shape[1]).cpu()


def chi_square_p_value(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit over the cells with expected > 0 (df = cells - 1)."""
    cells = expected > 0
    assert observed[~cells].sum() == 0
    stat = ((observed[cells] - expected[cells]) ** 2 / expected[cells]).sum()
    df = int(cells.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", tk.SCHEMES)
def test_every_scheme_is_unbiased(scheme, backend):
    counts = property_counts(backend, scheme)
    draws, num_particles = counts.shape
    assert (counts.sum(dim=1) == num_particles).all()
    assert (counts[:, PROPERTY_WEIGHTS == 0] == 0).all(), "a weight-zero particle was chosen"
    expected = draws * num_particles * PROPERTY_WEIGHTS
    # Pooled offspring over all draws vs N w_i per draw. Multinomial pools to an exact multinomial; the other
    # schemes have lower variance, which only makes the test conservative, never hides a bias of the mean.
    observed = counts.sum(dim=0).to(torch.float64)
    assert chi_square_p_value(observed, expected) > ALPHA
    # ... and the same test would catch a bias: swap the expectations of particles 3 and 4 (N w = 1.1, 0.7).
    wrong = expected.clone()
    wrong[[3, 4]] = wrong[[4, 3]]
    assert chi_square_p_value(observed, wrong) < ALPHA


@pytest.mark.parametrize("backend", BACKENDS)
def test_systematic_gives_floor_or_ceil_copies(backend):
    counts = property_counts(backend, "systematic")
    floor, ceil = represented_copies(PROPERTY_LOG_WEIGHTS)
    assert ((counts >= floor) & (counts <= ceil)).all()
    assert (ceil - floor <= 1).all() and (floor[[0, 7, 9]] >= torch.tensor([2, 1, 0])).all()
    # Particle 5 (N w = 1.5) gets 2 copies with probability 0.5: two-sided binomial (normal) test at ALPHA.
    ceil_hits = int((counts[:, 5] == 2).sum())
    draws = counts.shape[0]
    z = (ceil_hits - 0.5 * draws) / math.sqrt(0.25 * draws)
    assert math.erfc(abs(z) / math.sqrt(2)) > ALPHA


@pytest.mark.parametrize("backend", BACKENDS)
def test_residual_copies_floor_deterministically(backend):
    counts = property_counts(backend, "residual")
    floor, _ = represented_copies(PROPERTY_LOG_WEIGHTS)
    assert (counts >= floor).all()  # the floor(N w_i) copies are in every draw
    assert ((counts - floor).sum(dim=1) == counts.shape[1] - floor.sum()).all()  # R residual draws
    assert (counts.min(dim=0).values == floor).all()  # ... and nothing more is guaranteed
    # Integer N w (weights exactly representable: equal or zero): deterministic whatever the uniforms.
    lw = torch.tensor(
        [[0.0, -math.inf, 0.0, -math.inf], [-math.inf, -math.inf, 5.0, -math.inf]], device=DEVICE
    )
    for seed in range(3):
        g = torch.Generator(DEVICE).manual_seed(seed)
        ancestors = tk.resample_ancestors(lw, "residual", g, backend=backend)
        assert ancestors.tolist() == [[0, 0, 2, 2], [2, 2, 2, 2]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", tk.SCHEMES)
def test_equal_weights_keep_everyone_under_low_variance_schemes(scheme, backend):
    lw = torch.zeros(3, 37, device=DEVICE)
    ancestors = tk.resample_ancestors(lw, scheme, torch.Generator(DEVICE).manual_seed(0), backend=backend)
    if scheme in ("systematic", "residual"):
        assert torch.equal(ancestors, torch.arange(37, device=DEVICE).expand(3, 37))
    assert_canonical(ancestors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scheme", tk.SCHEMES)
def test_uniforms_on_cdf_boundaries(scheme, backend):
    # Equal weights put every systematic/stratified position k/N (u = 0) exactly on a CDF boundary: the
    # slot belongs to the interval that starts there. u just below 1 ends each slot's stratum.
    num_particles = 1000
    lw = torch.zeros(2, num_particles, device=DEVICE)
    columns = 1 if scheme == "systematic" else num_particles
    low = torch.zeros(2, columns, dtype=torch.float64, device=DEVICE)
    high = torch.full_like(low, 1.0 - 2.0**-53)
    for uniforms in (low, high):
        ancestors = tk.resample_ancestors(lw, scheme, uniforms=uniforms, backend=backend)
        assert torch.equal(ancestors, resample_ancestors_reference(lw, uniforms, scheme))
        if scheme != "multinomial":
            assert torch.equal(ancestors, torch.arange(num_particles, device=DEVICE).expand(2, -1))
        else:  # every draw lands on the first (u = 0) or last (u -> 1) particle
            assert set(ancestors.unique().tolist()) == ({0} if uniforms is low else {num_particles - 1})


def test_canonical_order_reference():
    counts = torch.tensor([[0, 3, 0, 1, 0, 2], [2, 0, 2, 0, 1, 1]])
    assert canonical_ancestors_reference(counts).tolist() == [[1, 1, 1, 3, 5, 5], [0, 0, 2, 2, 4, 5]]


# ---------------------------------------------------------------------------------------------------------------
# Normalised weights and effective sample size


@needs_triton
@hypothesis_settings
@given(
    batch_size=st.integers(1, 3),
    num_particles=PARTICLE_COUNTS,
    seed=st.integers(0, 2**31 - 1),
    spread=st.sampled_from([0.0, 1.0, 1e3]),
    zero_fraction=st.sampled_from([0.0, 0.5]),
    temperature=st.sampled_from([1e-3, 0.1, 1.0, 30.0]),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_weights_and_ess_match_reference(
    batch_size, num_particles, seed, spread, zero_fraction, temperature, dtype
):
    rewards = random_log_weights(batch_size, num_particles, seed, spread, zero_fraction, dtype)
    weights = tk.normalized_weights(rewards, temperature, backend="triton")
    expected = torch.softmax(rewards.float() / temperature, dim=-1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        weights.sum(dim=-1), torch.ones(batch_size, device=DEVICE), rtol=1e-5, atol=1e-5
    )
    ess = tk.effective_sample_size(rewards, temperature, backend="triton")
    torch.testing.assert_close(
        ess, tk.effective_sample_size(rewards, temperature, backend="torch"), rtol=1e-4, atol=0
    )
    assert ((ess >= 1 - 1e-4) & (ess <= num_particles * (1 + 1e-4))).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_and_ess_values(backend):
    lw = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [5.0, -math.inf, -math.inf, -math.inf], [1e4, 1e4 - 1, -1e4, 0.0]]
    )
    lw = lw.to(DEVICE)
    weights = tk.normalized_weights(lw, backend=backend)
    e = 1 / (1 + math.exp(-1))
    expected = torch.tensor([[0.25] * 4, [1.0, 0, 0, 0], [e, 1 - e, 0, 0]], device=DEVICE)
    torch.testing.assert_close(weights, expected)
    ess = tk.effective_sample_size(lw, backend=backend)
    torch.testing.assert_close(ess, torch.tensor([4.0, 1.0, 1 / (e * e + (1 - e) ** 2)], device=DEVICE))
    # Temperature: softmax(r / lambda); higher lambda flattens, leading dims are kept.
    r = torch.tensor([[[1.0, 2.0, 3.0]]], device=DEVICE)
    torch.testing.assert_close(tk.normalized_weights(r, 2.0, backend=backend), torch.softmax(r / 2, -1))
    assert tk.effective_sample_size(r, 100.0, backend=backend).shape == (1, 1)
    assert tk.effective_sample_size(r, 100.0, backend=backend) > tk.effective_sample_size(
        r, 0.5, backend=backend
    )
    out = torch.empty(3, 4, device=DEVICE)
    assert tk.normalized_weights(lw, out=out, backend=backend) is out


# ---------------------------------------------------------------------------------------------------------------
# Buffers, row selection, dispatch


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler_loop_reuses_its_buffers(backend):
    batch_size, num_particles = 2, 24
    x = torch.randn(batch_size, num_particles, 3, 4, device=DEVICE)
    ancestors = torch.empty(batch_size, num_particles, dtype=torch.int64, device=DEVICE)
    uniforms = torch.empty(batch_size, num_particles, dtype=torch.float64, device=DEVICE)
    g = torch.Generator(DEVICE).manual_seed(0)
    for _ in range(3):
        reference = x.clone()
        lw = torch.randn(batch_size, num_particles, device=DEVICE)
        u = tk.draw_uniforms(batch_size, num_particles, "stratified", g, out=uniforms)
        got, got_ancestors = tk.resample(
            x, lw, "stratified", uniforms=u, out=x, ancestors_out=ancestors, backend=backend, validate=False
        )
        assert got is x and got_ancestors is ancestors and u is uniforms
        expected = resample_ancestors_reference(lw, uniforms, "stratified")
        assert torch.equal(ancestors, expected)
        assert torch.equal(x, reference[torch.arange(batch_size, device=DEVICE)[:, None], expected])


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_selects_which_prompts_resample(backend):
    lw = torch.tensor([[0.0, -9.0, -9.0, -9.0], [0.0, 0.0, 0.0, 0.0], [3.0, -9.0, -9.0, 0.0]], device=DEVICE)
    rows = tk.effective_sample_size(lw, backend=backend) < 0.5 * lw.shape[1]
    assert rows.tolist() == [True, False, True]
    ancestors = tk.resample_ancestors(
        lw, "systematic", torch.Generator(DEVICE).manual_seed(0), rows=rows, backend=backend
    )
    assert ancestors[0].tolist() == [0, 0, 0, 0] and ancestors[1].tolist() == [0, 1, 2, 3]
    assert set(ancestors[2].tolist()) <= {0, 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unvalidated_invalid_rows_keep_their_particles(backend):
    lw = torch.tensor([[-math.inf] * 3, [0.0, math.nan, 0.0], [0.0, math.inf, 1.0], [0.0, 1.0, -math.inf]])
    lw = lw.to(DEVICE)
    ancestors = tk.resample_ancestors(
        lw, "multinomial", torch.Generator(DEVICE).manual_seed(0), backend=backend, validate=False
    )
    assert ancestors[:3].tolist() == [[0, 1, 2]] * 3
    assert 2 not in ancestors[3].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, lw = torch.empty(0, 5, 3, device=DEVICE), torch.empty(0, 5, device=DEVICE)
    out, ancestors = tk.resample(x, lw, backend=backend)
    assert out.shape == (0, 5, 3) and ancestors.shape == (0, 5)
    assert tk.effective_sample_size(lw, backend=backend).shape == (0,)


def test_auto_dispatch_and_explicit_triton_on_cpu(monkeypatch):
    from ttsplugin_kernels import utils

    assert utils.resolve_backend("torch", torch.device(DEVICE)) == "torch"
    if ON_GPU:
        assert utils.resolve_backend("auto", torch.device("cuda")) == "triton"
    elif triton_available():
        # CI: TRITON_INTERPRET=1 (tests/conftest.py) -> CPU tensors run the kernels under the interpreter.
        assert utils.resolve_backend("auto", torch.device("cpu")) == "triton"
    monkeypatch.setattr(utils, "_kernels_interpreted", lambda: False)
    monkeypatch.setattr(utils, "interpreter_enabled", lambda: False)
    assert utils.resolve_backend("auto", torch.device("cpu")) == "torch"
    if triton_available():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            tk.resample_ancestors(torch.zeros(1, 3), backend="triton")
    with pytest.raises(ValueError, match="`backend` must be one of"):
        tk.resample_ancestors(torch.zeros(1, 3), backend="cuda")


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear error before anything is drawn or written


def _call_resample(backend, x=None, lw=None, **kwargs):
    x = torch.zeros(2, 4, 3, device=DEVICE) if x is None else x
    lw = torch.zeros(2, 4, device=DEVICE) if lw is None else lw
    return tk.resample(x, lw, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("all_inf_row", r"rows \[1\] are all -inf"),
        ("nan", r"contains NaN \(rows \[0\]\)"),
        ("pos_inf", r"contains \+inf"),
        ("shape_mismatch", r"`x` must have shape \[B, N, \.\.\.\] = \[2, 4, \.\.\.\]"),
        ("log_weights_1d", r"`log_weights` must be a tensor of shape \[B, N\]"),
        ("no_particles", r"N = 0 particles"),
        ("integer_weights", r"must be a float tensor"),
        ("scheme", r"`scheme` must be one of"),
        ("uniforms_shape", r"`uniforms` for scheme 'systematic' must have shape \[2, 1\]"),
        ("uniforms_range", r"`uniforms` must lie in \[0, 1\)"),
        ("rows", r"`rows` must be a bool tensor of shape \[B=2\]"),
        ("out_shape", r"`out` must be a torch.float32 tensor of shape \[2, 4, 3\]"),
        ("out_overlap", r"`out` shares memory with `x`"),
        ("ancestors_out", r"`ancestors_out` must be a torch.int64 tensor"),
        ("generator", r"`generator` must be a torch.Generator"),
        ("too_many", r"at most 4096 are supported"),
    ],
)
def test_bad_input_is_rejected_clearly(case, match, backend):
    lw = torch.zeros(2, 4, device=DEVICE)
    x = torch.zeros(2, 4, 3, device=DEVICE)
    g = torch.Generator(DEVICE).manual_seed(0)
    state = g.get_state()
    out = torch.full_like(x, 7.0)
    kwargs = {}
    if case == "all_inf_row":
        lw[1] = -math.inf
    elif case == "nan":
        lw[0, 2] = math.nan
    elif case == "pos_inf":
        lw[1, 0] = math.inf
    elif case == "shape_mismatch":
        x = torch.zeros(2, 5, 3, device=DEVICE)
    elif case == "log_weights_1d":
        lw = torch.zeros(4, device=DEVICE)
    elif case == "no_particles":
        x, lw = torch.zeros(2, 0, 3, device=DEVICE), torch.zeros(2, 0, device=DEVICE)
    elif case == "integer_weights":
        lw = torch.zeros(2, 4, dtype=torch.int64, device=DEVICE)
    elif case == "scheme":
        kwargs["scheme"] = "roulette"
    elif case == "uniforms_shape":
        kwargs["uniforms"] = torch.rand(2, 4, device=DEVICE)
    elif case == "uniforms_range":
        kwargs["uniforms"] = torch.tensor([[0.5], [1.0]], device=DEVICE)
    elif case == "rows":
        kwargs["rows"] = torch.ones(2, device=DEVICE)
    elif case == "out_shape":
        kwargs["out"] = torch.zeros(2, 4, 2, device=DEVICE)
    elif case == "out_overlap":
        big = torch.zeros(3, 4, 3, device=DEVICE)
        x, kwargs["out"] = big[:2], big[1:]
    elif case == "ancestors_out":
        kwargs["ancestors_out"] = torch.zeros(2, 4, dtype=torch.int32, device=DEVICE)
    elif case == "generator":
        g = 1234
    elif case == "too_many":
        x, lw = torch.zeros(1, 5000, device=DEVICE), torch.zeros(1, 5000, device=DEVICE)
    if "out" not in kwargs and case not in ("shape_mismatch", "no_particles", "too_many", "out_overlap"):
        kwargs["out"] = out
    with pytest.raises(ValueError, match=match):
        tk.resample(x, lw, generator=g, backend=backend, **kwargs)
    if isinstance(g, torch.Generator):
        assert torch.equal(g.get_state(), state), "a rejected call must not consume randomness"
    assert (out == 7.0).all(), "a rejected call must not write its outputs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_to_the_other_ops(backend):
    x = torch.randn(2, 4, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"`ancestors` must lie in \[0, N=4\)"):
        tk.gather_particles(x, torch.tensor([[0, 1, 2, 4], [0, 0, 0, 0]], device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match="in-place gather needs canonical ancestors"):
        tk.gather_particles(
            x, torch.tensor([[1, 0, 2, 3], [0, 0, 0, 0]], device=DEVICE), out=x, backend=backend
        )
    with pytest.raises(ValueError, match="`ancestors` must be int64"):
        tk.gather_particles(x, torch.zeros(2, 4, dtype=torch.int32, device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match=r"`ancestors` must have shape \[B=2, M\]"):
        tk.gather_particles(x, torch.zeros(3, 4, dtype=torch.int64, device=DEVICE), backend=backend)
    for temperature in [0.0, -1.0, math.inf, math.nan, "1"]:
        with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
            tk.normalized_weights(torch.zeros(2, 3, device=DEVICE), temperature, backend=backend)
    with pytest.raises(ValueError, match="rows \\[0\\] are all -inf"):
        tk.effective_sample_size(torch.full((1, 3), -math.inf, device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match="contains NaN"):
        tk.normalized_weights(torch.tensor([[0.0, math.nan]], device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match="N = 0 particles"):
        tk.effective_sample_size(torch.zeros(2, 0, device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match=r"`out` must be a float tensor of shape \[2, 1\]"):
        tk.draw_uniforms(2, 4, "systematic", out=torch.empty(2, 4, device=DEVICE))


def test_docstring_examples_run():
    import doctest
    import sys

    for module in (sys.modules["ttsplugin_kernels.resample"], sys.modules["ttsplugin_kernels"]):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
