"""Batched reward-weighted resampling for particle methods: public API, validation and dispatch.

B prompts x N particles: `x` is `[B, N, ...]`, log weights are `[B, N]`. One call resamples every row.

Dispatch (every op, `backend="auto"`): CUDA tensors run the Triton kernels of `resample_triton.py`; CPU tensors
run the torch references of `resample_reference.py`, or the Triton kernels under the interpreter when
`TRITON_INTERPRET=1` was set before they were imported. The uniforms are always drawn by torch from `generator`
before dispatch, so both backends return identical ancestors for the same generator state.

Validation (`validate=True`, the default) costs one host-device sync per call; a sampler loop that checks its
weights elsewhere passes `validate=False` and gets no sync at all (invalid rows then keep their particles).
"""

from __future__ import annotations

import math

import torch

from .resample_reference import (
    MAX_PARTICLES,
    SCHEMES,
    effective_sample_size_reference,
    gather_particles_reference,
    normalized_weights_reference,
    resample_ancestors_reference,
    uniforms_shape,
)
from .utils import resolve_backend

#: Resampling calls on the Triton backend up to these sizes take the one-launch fused kernel (see `_resample`); it
#: holds N x N comparisons in registers, so N is capped.
FUSED_MAX_PARTICLES = 64
FUSED_MAX_BYTES = 32 * 2**20

__all__ = [
    "MAX_PARTICLES",
    "SCHEMES",
    "draw_uniforms",
    "effective_sample_size",
    "gather_particles",
    "normalized_weights",
    "resample",
    "resample_ancestors",
]


def draw_uniforms(
    batch_size: int,
    num_particles: int,
    scheme: str = "systematic",
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The uniforms one resampling step consumes, drawn by torch (float64 in [0, 1)).

    Args:
        batch_size (`int`): B, the number of rows (prompts).
        num_particles (`int`): N, particles per row.
        scheme (`str`, defaults to `"systematic"`): one of `SCHEMES`.
        generator (`torch.Generator`, *optional*): source of randomness (on `device`).
        device (`torch.device`, *optional*): defaults to the generator's device, else CPU.
        out (`torch.Tensor`, *optional*): a float buffer of the right shape to fill instead of allocating.

    Returns:
        `torch.Tensor` of shape `[B, 1]` for "systematic" (one uniform per row), `[B, N]` otherwise.

    Examples::

        >>> g = torch.Generator().manual_seed(0)
        >>> u = draw_uniforms(2, 8, "stratified", g)  # [2, 8] float64
        >>> a1 = resample_ancestors(torch.randn(2, 8), "stratified", uniforms=u, backend="torch")
    """
    _check_scheme(scheme)
    shape = uniforms_shape(batch_size, num_particles, scheme)
    if device is None:
        device = out.device if out is not None else (generator.device if generator is not None else "cpu")
    device = torch.device(device)
    _check_generator(generator, device)
    if out is not None:
        if tuple(out.shape) != shape or not out.is_floating_point() or out.device != device:
            raise ValueError(
                f"`out` must be a float tensor of shape {list(shape)} on {device}, got "
                f"{out.dtype} {list(out.shape)} on {out.device}"
            )
        return torch.rand(shape, generator=generator, out=out)
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def resample_ancestors(
    log_weights: torch.Tensor,
    scheme: str = "systematic",
    generator: torch.Generator | None = None,
    *,
    uniforms: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Ancestor indices of one resampling step for every row, in one kernel launch.

    Args:
        log_weights (`torch.Tensor` of shape `[B, N]`): unnormalised log weights (any float dtype); `-inf` is
            weight zero: such a particle is never chosen. N <= `MAX_PARTICLES`.
        scheme (`str`, defaults to `"systematic"`): "multinomial", "systematic", "stratified" or "residual".
        generator (`torch.Generator`, *optional*): draws the uniforms when `uniforms` is not given.
        uniforms (`torch.Tensor`, *optional*): the uniforms to use instead, from `draw_uniforms`
            (`[B, 1]` for systematic, `[B, N]` otherwise, values in [0, 1)).
        rows (`torch.Tensor` of shape `[B]`, bool, *optional*): resample only these rows; the others keep
            their particles (`ancestors[b] = arange(N)`). E.g. `rows = effective_sample_size(lw) < 0.5 * N`
            resamples the degenerate prompts without a host sync.
        out (`torch.Tensor` of shape `[B, N]`, int64, *optional*): contiguous buffer to write into.
        backend (`str`, defaults to `"auto"`): "auto", "triton" or "torch" (module docstring).
        validate (`bool`, defaults to `True`): check the values (NaN, +inf, all -inf rows, uniforms in
            [0, 1)) with one host sync; without it, a row with no valid weight keeps its particles.

    Returns:
        `torch.Tensor` of shape `[B, N]`, int64: `ancestors[b, k]` is the particle of row b copied into slot k.
        The order is canonical: a particle with offspring keeps its own slot (`ancestors[b, i] == i`), and the
        extra copies fill the slots of the particles that died, in increasing order. Offspring counts follow
        the scheme; the canonical order makes resampling in place safe and moves only the dead slots.

    Raises:
        ValueError: bad shapes, dtypes or devices, N = 0, an unknown scheme, or (validating) NaN / +inf log
            weights, a row whose weights are all zero, uniforms outside [0, 1).

    Examples::

        >>> lw = torch.tensor([[0.0, -1.0, float("-inf"), 2.0]])
        >>> g = torch.Generator().manual_seed(0)
        >>> ancestors = resample_ancestors(lw, "systematic", g)  # [1, 4]; index 2 never appears
    """
    batch_size, num_particles = _check_log_weights(log_weights, "log_weights")
    _check_scheme(scheme)
    device = log_weights.device
    if uniforms is None:
        _check_generator(generator, device)
    else:
        _check_uniforms(uniforms, batch_size, num_particles, scheme, device)
    if rows is not None:
        _check_rows(rows, batch_size, device)
    if out is not None:
        _check_buffer(out, "out", (batch_size, num_particles), torch.int64, device, contiguous=True)
    selected = resolve_backend(backend, device)
    if validate:
        _check_weight_values(log_weights, "log_weights", uniforms)
    if uniforms is None:
        uniforms = draw_uniforms(batch_size, num_particles, scheme, generator, device=device)
    return _ancestors(log_weights, uniforms, scheme, rows, out, selected)


def gather_particles(
    x: torch.Tensor,
    ancestors: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Copy particles by ancestor index: `out[b, k] = x[b, ancestors[b, k]]`, at memory speed.

    Args:
        x (`torch.Tensor` of shape `[B, N, ...]`): the particles, any dtype and trailing shape.
        ancestors (`torch.Tensor` of shape `[B, M]`, int64): indices in [0, N) (M = N when in place).
        out (`torch.Tensor` of shape `[B, M, ...]`, *optional*): buffer to write into, same dtype and device
            as `x`; `out=x` resamples in place, which needs canonical ancestors (as `resample_ancestors`
            returns: every source slot keeps its own particle) and then moves only the slots that change.
        backend (`str`, defaults to `"auto"`): "auto", "triton" or "torch".
        validate (`bool`, defaults to `True`): check that indices are in range (and canonical in place), with
            one host sync. Without it the kernel clamps bad indices into range.

    Returns:
        `torch.Tensor` of shape `[B, M, ...]`: `out` if given, else a new tensor.

    Examples::

        >>> x = torch.randn(2, 4, 3, 8)
        >>> ancestors = torch.tensor([[0, 0, 2, 2], [3, 1, 2, 3]])
        >>> y = gather_particles(x, ancestors)  # y[1, 0] is x[1, 3]
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"`x` must be a tensor of shape [B, N, ...], got {_describe(x)}")
    batch_size, num_particles = x.shape[:2]
    if not isinstance(ancestors, torch.Tensor) or ancestors.dim() != 2 or ancestors.shape[0] != batch_size:
        raise ValueError(f"`ancestors` must have shape [B={batch_size}, M], got {_describe(ancestors)}")
    if ancestors.dtype != torch.int64 or ancestors.device != x.device:
        raise ValueError(
            f"`ancestors` must be int64 on {x.device}, got {ancestors.dtype} on {ancestors.device}"
        )
    in_place = out is not None and out.data_ptr() == x.data_ptr() and out.shape == x.shape
    if in_place and ancestors.shape[1] != num_particles:
        raise ValueError(
            f"in place, `ancestors` must have N={num_particles} columns, got {ancestors.shape[1]}"
        )
    out_shape = (batch_size, ancestors.shape[1], *x.shape[2:])
    if out is not None:
        _check_out_particles(out, x, out_shape, in_place)
    selected = resolve_backend(backend, x.device)
    if validate and ancestors.numel() > 0:
        if num_particles == 0:
            raise ValueError("`x` has N = 0 particles: there is nothing to gather from")
        bad = (ancestors < 0) | (ancestors >= num_particles)
        flags = [bad.any()]
        if in_place:
            flags.append((ancestors.gather(1, ancestors.clamp(0, num_particles - 1)) != ancestors).any())
        flags = torch.stack(flags).tolist()
        if flags[0]:
            raise ValueError(f"`ancestors` must lie in [0, N={num_particles}), got values outside it")
        if in_place and flags[1]:
            raise ValueError(
                "in-place gather needs canonical ancestors (every copied particle keeps its own slot: "
                "ancestors[b, ancestors[b, k]] == ancestors[b, k]); use resample_ancestors' output or `out=`"
            )
    return _gather(x, ancestors, out, in_place, selected)


def resample(
    x: torch.Tensor,
    log_weights: torch.Tensor,
    scheme: str = "systematic",
    generator: torch.Generator | None = None,
    *,
    uniforms: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    ancestors_out: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample B rows of N particles by their weights: ancestors in one launch, then one gather.

    Args:
        x (`torch.Tensor` of shape `[B, N, ...]`): particles, any trailing shape; float32/float16/bfloat16
            (any dtype works: it is a copy).
        log_weights (`torch.Tensor` of shape `[B, N]`): unnormalised log weights, e.g. rewards / temperature;
            `-inf` is weight zero.
        scheme (`str`, defaults to `"systematic"`): "multinomial", "systematic", "stratified" or "residual".
        generator (`torch.Generator`, *optional*): draws the uniforms (on the device of `log_weights`).
        uniforms, rows, backend, validate: as in [`resample_ancestors`].
        out (`torch.Tensor` of shape `[B, N, ...]`, *optional*): where to write the particles; `out=x`
            resamples in place (only the particles that died are overwritten).
        ancestors_out (`torch.Tensor` of shape `[B, N]`, int64, *optional*): buffer for the ancestors. With
            `out`, `ancestors_out` and `uniforms=draw_uniforms(..., out=buffer)` a sampler loop allocates
            nothing per step.

    Returns:
        `(x_resampled, ancestors)`: `x_resampled[b, k] = x[b, ancestors[b, k]]` (`[B, N, ...]`, `out` if
        given) and the ancestors (`[B, N]` int64, canonical order, see [`resample_ancestors`]).

    Examples::

        >>> x = torch.randn(2, 16, 4, 8, 8)  # 2 prompts x 16 particles x latent
        >>> rewards = torch.randn(2, 16)
        >>> g = torch.Generator().manual_seed(0)
        >>> x_new, ancestors = resample(x, rewards / 0.1, "systematic", g)
        >>> x_new, ancestors = resample(x, rewards / 0.1, "residual", g, out=x)  # in place
    """
    # Checks in order of cost: small problems are launch-bound, so this wrapper's own time counts (issue 13).
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"`x` must be a tensor of shape [B, N, ...], got {_describe(x)}")
    batch_size, num_particles = _check_log_weights(log_weights, "log_weights")
    shape = x.shape
    if shape[0] != batch_size or shape[1] != num_particles:
        raise ValueError(
            f"`x` must have shape [B, N, ...] = [{batch_size}, {num_particles}, ...] to match `log_weights`, "
            f"got {list(shape)}"
        )
    device = x.device
    if device != log_weights.device:
        raise ValueError(f"`x` is on {device} but `log_weights` is on {log_weights.device}")
    if out is x:  # in place, the sampler-loop form: x itself is the checked buffer
        in_place = True
        if _features_view(x) is None:
            raise ValueError("in place, `x` must have its trailing dims (after [B, N]) laid out contiguously")
    else:
        in_place = out is not None and out.data_ptr() == x.data_ptr() and out.shape == shape
        if out is not None:
            _check_out_particles(out, x, tuple(shape), in_place)
    _check_scheme(scheme)
    if uniforms is None:
        _check_generator(generator, device)
    else:
        _check_uniforms(uniforms, batch_size, num_particles, scheme, device)
    if rows is not None:
        _check_rows(rows, batch_size, device)
    if ancestors_out is not None:
        _check_buffer(
            ancestors_out, "ancestors_out", (batch_size, num_particles), torch.int64, device, contiguous=True
        )
    selected = resolve_backend(backend, device)
    if validate:
        _check_weight_values(log_weights, "log_weights", uniforms)
    if uniforms is None:  # what draw_uniforms does, without checking the generator a second time
        shape = uniforms_shape(batch_size, num_particles, scheme)
        uniforms = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return _resample(x, log_weights, uniforms, scheme, rows, out, ancestors_out, in_place, selected)


def _resample(
    x, log_weights, uniforms, scheme, rows, out, ancestors_out, in_place, backend, path: str = "auto"
):
    """Validated inputs -> (particles, ancestors). `path` (benchmarks): "auto", "fused" or "two_pass".

    On the Triton backend, small problems (N <= FUSED_MAX_PARTICLES and at most FUSED_MAX_BYTES of particles) take
    one fused launch (ancestors and copy together): there the cost is launches, not bytes, and two launches made
    resampling slower than torch's softmax + multinomial + gather (0.54-0.91x at B=1, N <= 16 and B=8, N=4 on an
    H200, BENCHMARKS.md). Larger ones take the ancestor kernel and the memory-speed gather."""
    if backend == "triton" and path != "two_pass":
        fits = x.shape[1] <= FUSED_MAX_PARTICLES and x.numel() * x.element_size() <= FUSED_MAX_BYTES
        if path == "fused" and x.shape[1] > FUSED_MAX_PARTICLES:
            raise ValueError(f"the fused kernel takes N <= {FUSED_MAX_PARTICLES} particles, got {x.shape[1]}")
        if path == "fused" or fits:
            return _resample_fused(x, log_weights, uniforms, scheme, rows, out, ancestors_out, in_place)
    ancestors = _ancestors(log_weights, uniforms, scheme, rows, ancestors_out, backend)
    return _gather(x, ancestors, out, in_place, backend), ancestors


def _resample_fused(x, log_weights, uniforms, scheme, rows, out, ancestors_out, in_place):
    from .resample_triton import resample_fused_triton

    x3 = _features_view(x)
    if x3 is None:  # trailing dims not mergeable into one unit-stride axis (in place is refused earlier)
        x3 = _features_view(x.contiguous())
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    ancestors = ancestors_out
    if ancestors is None:
        ancestors = torch.empty(log_weights.shape, dtype=torch.int64, device=x.device)
    resample_fused_triton(
        log_weights, uniforms, scheme, rows, x3, x3 if in_place else _features_view(out), ancestors
    )
    return out, ancestors


def normalized_weights(
    rewards: torch.Tensor,
    temperature: float = 1.0,
    *,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Normalised weights softmax(rewards / temperature) over the last dimension, float32, max-shifted.

    Args:
        rewards (`torch.Tensor` of shape `[..., N]`, usually `[B, N]`): rewards (or log weights with
            temperature 1); `-inf` gives weight zero.
        temperature (`float`, defaults to 1.0): lambda > 0; small lambda concentrates the weight on the best.
        out (`torch.Tensor` of shape `[..., N]`, float32, *optional*): contiguous buffer to write into.
        backend, validate: as in [`resample_ancestors`] (validation rejects NaN, +inf and rows that are all
            `-inf`; unvalidated, such rows come out NaN as with `torch.softmax`).

    Returns:
        `torch.Tensor` of shape `[..., N]`, float32, each row summing to 1.

    Examples::

        >>> normalized_weights(torch.tensor([[1000.0, 999.0, float("-inf")]]), temperature=1.0)
        tensor([[0.7311, 0.2689, 0.0000]])
    """
    flat = _flatten_rows(rewards, "rewards")
    _check_temperature(temperature)
    if out is not None:
        _check_buffer(out, "out", tuple(rewards.shape), torch.float32, rewards.device, contiguous=True)
    selected = resolve_backend(backend, rewards.device)
    if validate:
        _check_weight_values(flat, "rewards", None)
    if selected == "torch":
        weights = normalized_weights_reference(flat, temperature)
        return weights.view(rewards.shape) if out is None else out.copy_(weights.view(rewards.shape))
    from .resample_triton import normalized_weights_triton

    if out is None:
        out = torch.empty(rewards.shape, dtype=torch.float32, device=rewards.device)
    normalized_weights_triton(flat, temperature, out.view(flat.shape), None)
    return out


def effective_sample_size(
    log_weights: torch.Tensor,
    temperature: float = 1.0,
    *,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Effective sample size 1 / sum_i w_i**2 of w = softmax(log_weights / temperature), per row.

    Args:
        log_weights (`torch.Tensor` of shape `[..., N]`, usually `[B, N]`): unnormalised log weights
            (`-inf` = weight zero).
        temperature (`float`, defaults to 1.0): lambda > 0, as in [`normalized_weights`].
        backend, validate: as in [`normalized_weights`].

    Returns:
        `torch.Tensor` of shape `[...]` (`[B]`), float32, in [1, N]: N for equal weights, 1 when one particle
        holds all the weight.

    Examples::

        >>> lw = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, float("-inf"), float("-inf"), float("-inf")]])
        >>> effective_sample_size(lw)
        tensor([4., 1.])
        >>> rows = effective_sample_size(lw) < 0.5 * lw.shape[1]  # which rows to resample (no host sync)
    """
    flat = _flatten_rows(log_weights, "log_weights")
    _check_temperature(temperature)
    selected = resolve_backend(backend, log_weights.device)
    if validate:
        _check_weight_values(flat, "log_weights", None)
    if selected == "torch":
        return effective_sample_size_reference(flat, temperature).view(log_weights.shape[:-1])
    from .resample_triton import normalized_weights_triton

    ess = torch.empty(flat.shape[0], dtype=torch.float32, device=log_weights.device)
    normalized_weights_triton(flat, temperature, None, ess)
    return ess.view(log_weights.shape[:-1])


# ---------------------------------------------------------------------------------------------------------------
# Dispatch


def _ancestors(log_weights, uniforms, scheme, rows, out, backend) -> torch.Tensor:
    if backend == "torch":
        ancestors = resample_ancestors_reference(log_weights, uniforms, scheme, rows)
        return ancestors if out is None else out.copy_(ancestors)
    from .resample_triton import resample_ancestors_triton

    if out is None:
        out = torch.empty(log_weights.shape, dtype=torch.int64, device=log_weights.device)
    return resample_ancestors_triton(log_weights, uniforms, scheme, rows, out)


def _gather(x, ancestors, out, in_place, backend) -> torch.Tensor:
    out_shape = (x.shape[0], ancestors.shape[1], *x.shape[2:])
    if backend == "torch":
        return gather_particles_reference(x, ancestors, out)
    from .resample_triton import gather_particles_triton

    x3 = _features_view(x)
    if x3 is None:  # trailing dims not mergeable into one unit-stride axis (in place is refused earlier)
        x3 = _features_view(x.contiguous())
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    gather_particles_triton(x3, ancestors, x3 if in_place else _features_view(out))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Validation: shapes, dtypes and devices first (no sync), then values with one sync.


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def _check_log_weights(log_weights, name: str) -> tuple[int, int]:
    if not isinstance(log_weights, torch.Tensor) or log_weights.dim() != 2:
        raise ValueError(
            f"`{name}` must be a tensor of shape [B, N] (prompts x particles), got {_describe(log_weights)}"
        )
    if not log_weights.is_floating_point():
        raise ValueError(f"`{name}` must be a float tensor, got {log_weights.dtype}")
    batch_size, num_particles = log_weights.shape
    if num_particles == 0:
        raise ValueError(f"`{name}` has N = 0 particles per row: there is nothing to resample")
    if num_particles > MAX_PARTICLES:
        raise ValueError(
            f"`{name}` has N = {num_particles} particles per row; at most {MAX_PARTICLES} are supported"
        )
    return batch_size, num_particles


def _flatten_rows(values, name: str) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.dim() < 1:
        raise ValueError(f"`{name}` must be a tensor of shape [..., N], got {_describe(values)}")
    if not values.is_floating_point():
        raise ValueError(f"`{name}` must be a float tensor, got {values.dtype}")
    if values.shape[-1] == 0:
        raise ValueError(f"`{name}` has N = 0 particles per row: weights are undefined")
    if values.shape[-1] > MAX_PARTICLES:
        raise ValueError(
            f"`{name}` has N = {values.shape[-1]} particles per row; at most {MAX_PARTICLES} are supported"
        )
    return values.reshape(-1, values.shape[-1])


def _check_scheme(scheme) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"`scheme` must be one of {SCHEMES}, got {scheme!r}")


def _check_temperature(temperature) -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (0 < temperature < math.inf)
    ):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}")


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator, got {_describe(generator)}")
    if generator.device.type != device.type:
        raise ValueError(f"`generator` is on {generator.device} but the weights are on {device}")


def _check_uniforms(uniforms, batch_size: int, num_particles: int, scheme: str, device) -> None:
    shape = uniforms_shape(batch_size, num_particles, scheme)
    if not isinstance(uniforms, torch.Tensor) or tuple(uniforms.shape) != shape:
        raise ValueError(
            f"`uniforms` for scheme {scheme!r} must have shape {list(shape)} (see draw_uniforms), got "
            f"{_describe(uniforms)}"
        )
    if not uniforms.is_floating_point() or uniforms.device != device:
        raise ValueError(
            f"`uniforms` must be a float tensor on {device}, got {uniforms.dtype} on {uniforms.device}"
        )


def _check_rows(rows, batch_size: int, device) -> None:
    if not isinstance(rows, torch.Tensor) or rows.dtype != torch.bool or tuple(rows.shape) != (batch_size,):
        raise ValueError(f"`rows` must be a bool tensor of shape [B={batch_size}], got {_describe(rows)}")
    if rows.device != device:
        raise ValueError(f"`rows` is on {rows.device}, expected {device}")


def _check_buffer(buffer, name: str, shape: tuple, dtype: torch.dtype, device, contiguous: bool) -> None:
    if not isinstance(buffer, torch.Tensor) or tuple(buffer.shape) != tuple(shape) or buffer.dtype != dtype:
        raise ValueError(f"`{name}` must be a {dtype} tensor of shape {list(shape)}, got {_describe(buffer)}")
    if buffer.device != device:
        raise ValueError(f"`{name}` is on {buffer.device}, expected {device}")
    if contiguous and not buffer.is_contiguous():
        raise ValueError(f"`{name}` must be contiguous")


def _check_out_particles(out, x: torch.Tensor, shape: tuple, in_place: bool) -> None:
    _check_buffer(out, "out", shape, x.dtype, x.device, contiguous=False)
    if _features_view(out) is None:
        raise ValueError("`out` must have its trailing dims (after [B, N]) laid out contiguously")
    if not in_place and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
        raise ValueError("`out` shares memory with `x` without being `x`: pass `out=x` or a separate buffer")


def _features_view(t: torch.Tensor) -> torch.Tensor | None:
    """[B, N, ...] -> a [B, N, D] view with unit stride along D, or None when the trailing dims don't merge."""
    batch_size, num_particles = t.shape[:2]
    if t.dim() == 2:
        return t.unsqueeze(-1)
    features = math.prod(t.shape[2:])
    try:
        view = t.view(batch_size, num_particles, features)
    except RuntimeError:
        return None
    return view if features <= 1 or view.stride(2) == 1 else None


def _check_weight_values(log_weights: torch.Tensor, name: str, uniforms: torch.Tensor | None) -> None:
    """One host sync: NaN / +inf entries, rows with no positive weight, uniforms outside [0, 1)."""
    if log_weights.numel() == 0:
        return
    flags = [(~(log_weights < math.inf)).any(), (~(log_weights > -math.inf).any(dim=1)).any()]
    if uniforms is not None:
        flags.append(~((uniforms >= 0) & (uniforms < 1)).all())
    flags = torch.stack(flags).tolist()
    if not any(flags):
        return
    if flags[0]:
        nan_rows = torch.isnan(log_weights).any(dim=1).nonzero().flatten().tolist()
        if nan_rows:
            raise ValueError(f"`{name}` contains NaN (rows {nan_rows[:8]})")
        inf_rows = torch.isposinf(log_weights).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"`{name}` contains +inf (rows {inf_rows[:8]}): use finite values, -inf for weight zero"
        )
    if flags[1]:
        dead_rows = (~(log_weights > -math.inf).any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"`{name}` rows {dead_rows[:8]} are all -inf: every particle has weight zero, nothing to resample from"
        )
    raise ValueError("`uniforms` must lie in [0, 1)")
