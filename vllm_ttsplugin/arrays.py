"""Array namespaces for the per-step state machines, and host-to-device copies that never synchronise.

The per-step code of a slot component is written once against a namespace `xp`:

- `TorchOps`: torch tensors on any device (what runs on accelerators);
- `NumpyOps`: numpy views of CPU tensors (shared memory, no copies). On the CPU a torch op on a few dozen
  elements costs microseconds of dispatch, numpy a fraction of that, and a step is a few dozen such ops.

Both give identical results; `ops_for(...)` picks numpy when every tensor is on the CPU. Whatever differs between
the two (in-place row fills, host index arrays, conversion to torch for vocabulary passes) is a method here, so
the callers do not branch on the namespace.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_device(values, device: torch.device, pin_memory: bool = True) -> torch.Tensor:
    """A host array (numpy, list, CPU tensor) on `device`, copied without synchronising the device.

    CPU: the same memory. Accelerators: copied through pinned memory with `non_blocking=True`; a copy from
    pageable memory would wait for the device's queued work (a hidden sync). PyTorch's pinned-memory allocator
    keeps the staging block until the copy is done, so the host array may be dropped at once.
    """
    host = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if device.type == "cpu":
        return host
    if pin_memory and torch.cuda.is_available():
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


class TorchOps:
    """Per-step arithmetic on torch tensors (any device)."""

    where = staticmethod(torch.where)

    def __init__(self, device: torch.device, pin_memory: bool = True) -> None:
        self.device = device
        self.pin_memory = pin_memory

    @staticmethod
    def view(t):
        return t

    @staticmethod
    def clamp(x, lo, hi=None):
        return x.clamp(min=lo) if hi is None else x.clamp(lo, hi)

    @staticmethod
    def stack_cols(cols):
        return torch.stack(cols, dim=1)

    @staticmethod
    def cat_cols(a, b):
        return torch.cat([a, b], dim=1)

    @staticmethod
    def all_rows(x):
        return x.all(dim=1)

    @staticmethod
    def any_rows(x):
        return x.any(dim=1)

    @staticmethod
    def max_rows(x):
        return x.amax(dim=1)

    @staticmethod
    def logsumexp_rows(x):
        return torch.logsumexp(x, dim=1)

    @staticmethod
    def exp_sum_rows(x):
        return x.exp().sum(dim=1)

    def candidates(self, mask, host_mask: np.ndarray | None) -> np.ndarray:
        """Host positions of the rows that may be in `mask`: exact on the CPU; on an accelerator the host's
        superset `host_mask` (all rows when `None`), so that nothing synchronises."""
        if self.device.type == "cpu":
            return np.flatnonzero(mask.numpy())
        return np.arange(mask.shape[0]) if host_mask is None else np.flatnonzero(host_mask)

    @staticmethod
    def full(shape, value, like):
        return torch.full(shape, value, dtype=like.dtype, device=like.device)

    @staticmethod
    def arange(n, like):
        return torch.arange(n, device=like.device)

    @staticmethod
    def host(x) -> np.ndarray:
        """Host copy (synchronises on an accelerator; only used where the tensors are on the CPU)."""
        return x.cpu().numpy()

    def index(self, array: np.ndarray):
        """Host indices as an index of this namespace (a non-blocking copy to the device)."""
        return to_device(np.ascontiguousarray(array, dtype=np.int64), self.device, self.pin_memory)

    @staticmethod
    def to_torch(x):
        return x

    @staticmethod
    def from_torch(t):
        return t

    @staticmethod
    def fill_rows_(logits: torch.Tensor, rows, mask, value: float) -> None:
        """Set whole logits rows `rows[mask]` to `value`, in place (no host sync)."""
        row_mask = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        row_mask[rows] = mask
        logits.masked_fill_(row_mask.unsqueeze(1), value)


class NumpyOps:
    """The same arithmetic on numpy views of CPU tensors."""

    where = staticmethod(np.where)

    def __init__(self, device: torch.device | None = None, pin_memory: bool = False) -> None:
        self.device = torch.device("cpu")

    @staticmethod
    def view(t):
        return None if t is None else t.numpy()

    @staticmethod
    def clamp(x, lo, hi=None):
        return np.maximum(x, lo) if hi is None else np.clip(x, lo, hi)

    @staticmethod
    def stack_cols(cols):
        return np.stack(cols, axis=1)

    @staticmethod
    def cat_cols(a, b):
        return np.concatenate([a, b], axis=1)

    @staticmethod
    def all_rows(x):
        return x.all(axis=1)

    @staticmethod
    def any_rows(x):
        return x.any(axis=1)

    @staticmethod
    def max_rows(x):
        return x.max(axis=1)

    @staticmethod
    def logsumexp_rows(x):
        top = x.max(axis=1)
        safe = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            return np.log(np.exp(x - safe[:, None]).sum(axis=1)) + safe

    @staticmethod
    def exp_sum_rows(x):
        return np.exp(x).sum(axis=1)

    @staticmethod
    def candidates(mask, host_mask: np.ndarray | None) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def full(shape, value, like):
        return np.full(shape, value, dtype=like.dtype)

    @staticmethod
    def arange(n, like):
        return np.arange(n)

    @staticmethod
    def host(x) -> np.ndarray:
        return x

    @staticmethod
    def index(array: np.ndarray):
        return array

    @staticmethod
    def to_torch(x):
        return torch.from_numpy(np.ascontiguousarray(x))

    @staticmethod
    def from_torch(t):
        return t.numpy()

    @staticmethod
    def fill_rows_(logits, rows, mask, value: float) -> None:
        logits[rows[mask]] = value  # touch only those rows


NEG_INF = -math.inf


def ops_for(device: torch.device, pin_memory: bool, *tensors: torch.Tensor | None) -> TorchOps | NumpyOps:
    """numpy views when everything is on the CPU (and float32 where floating), else torch."""
    if device.type == "cpu" and all(
        t is None or (t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == torch.float32))
        for t in tensors
    ):
        return _NUMPY
    return TorchOps(device, pin_memory)


_NUMPY = NumpyOps()
