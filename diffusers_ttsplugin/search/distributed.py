"""Particle search across processes: the rows of a search batch sharded over `torch.distributed` ranks.

[`~diffusers_ttsplugin.InferenceScaler`] shards by itself when a default process group with more than one rank is
initialized (`torchrun`; gloo on CPU, NCCL on GPUs). Every rank runs the same search loop over the same *global*
batch of rows, but evaluates the velocity (and the reward) only for the rows it holds:

- **Random numbers.** Every rank draws the global batch's noise from the shared generator and keeps its rows, so
  the generators stay in step and row i gets the same noise as in a one-process run.
- **Rewards** (float64, one number per row) are all-gathered; every rank then holds the same rewards, weights,
  ESS and NFE ledger and takes the same decisions (argmax, resampling ancestors from the shared generator).
- **Latents move only when a decision needs them elsewhere:** SMC's resampled particles whose ancestor lives on
  another rank ([`balanced_owners`] places the copies near their ancestors within an even share of rows), and
  the rows a selection keeps (SVDD / CoDe / SoP / RBF chains and the final sample are held by every rank).
  [`transfer_plan`] lists, per (source, destination) pair, the distinct rows to send.

One process never enters this module: a [`RowLayout`] without owners holds every row, and indexing it is the plain
`tensor[rows]` of the one-process search.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .budget import split_evenly

__all__ = ["ParticleComm", "RowLayout", "Traffic", "balanced_owners", "transfer_plan"]


class RowLayout:
    """Where the rows `0 … total − 1` of one global batch live.

    Args:
        total (`int`): Rows in the global batch.
        owners (`torch.Tensor` `[total]` int64, *optional*): The rank holding each row; `None`: every rank holds
            every row (one process, or state replicated on all ranks).
        rank (`int`): This process's rank.
    """

    def __init__(self, total: int, owners: torch.Tensor | None = None, rank: int = 0):
        self.total = int(total)
        self.owners = owners
        self.rank = int(rank)
        self._positions = None if owners is None else (owners == rank).nonzero().flatten()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def blocks(cls, total: int, world_size: int, rank: int) -> RowLayout:
        """Contiguous, even blocks: rank r holds rows [Σ_{s<r} n_s, Σ_{s≤r} n_s)."""
        sizes = torch.tensor(split_evenly(total, world_size), dtype=torch.long)
        return cls(total, torch.repeat_interleave(torch.arange(world_size), sizes), rank)

    @property
    def sharded(self) -> bool:
        return self.owners is not None

    @property
    def positions(self) -> torch.Tensor | None:
        """Global indices of the rows held here, ascending (`None`: all rows)."""
        return self._positions

    def local(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor over the whole batch (`full` itself when every row is held here)."""
        if self._positions is None:
            return full
        index = self._on_device.get(full.device)
        if index is None:
            index = self._on_device[full.device] = self._positions.to(full.device)
        return full.index_select(0, index)


def balanced_owners(sources: torch.Tensor, source_owners: torch.Tensor, world_size: int) -> torch.Tensor:
    """Owners for a new batch whose row i is a copy of old row `sources[i]` (resampling: the ancestors).

    Every rank gets an even share of the new rows (`split_evenly`). Two placements are compared and the one that
    sends fewer distinct rows ([`transfer_plan`]) wins (the first on a tie): keep the current owner of each
    position (when the layout is already balanced), or send each copy to the rank holding its source, up to that
    rank's share; the overflow leaves in whole groups of copies of one source, the largest groups first, so a
    popular ancestor crosses once and is copied on arrival. Deterministic: every rank computes the same owners.
    """
    total = len(sources)
    capacity = split_evenly(total, world_size)
    candidates = []
    if (
        len(source_owners) == total
        and torch.bincount(source_owners, minlength=world_size).tolist() == capacity
    ):
        candidates.append(source_owners.clone())
    candidates.append(_owners_near_sources(sources, source_owners, capacity))
    cost = [
        sum(len(rows) for rows in transfer_plan(sources, source_owners, c, world_size).values())
        for c in candidates
    ]
    return candidates[cost.index(min(cost))]


def _owners_near_sources(
    sources: torch.Tensor, source_owners: torch.Tensor, capacity: list[int]
) -> torch.Tensor:
    preferred = source_owners[sources]
    copies = torch.bincount(sources, minlength=len(source_owners))[sources]
    owners = torch.full_like(preferred, -1)
    spare = list(capacity)
    for rank in range(len(capacity)):
        wanting = (preferred == rank).nonzero().flatten()
        # Keep the rarest sources home; the most copied ones overflow (one transfer each, copied on arrival).
        order = _lexsort(wanting, sources[wanting], copies[wanting])
        keep = wanting[order][: spare[rank]]
        owners[keep] = rank
        spare[rank] -= len(keep)
    homeless = (owners < 0).nonzero().flatten()
    homeless = homeless[
        _lexsort(homeless, sources[homeless], -copies[homeless])
    ]  # groups of one source together
    start = 0
    for rank in range(len(capacity)):
        take = homeless[start : start + spare[rank]]
        owners[take] = rank
        start += len(take)
    return owners


def _lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """Indices sorting by the last key first, then the one before it, ... (like `numpy.lexsort`)."""
    order = torch.arange(len(keys[0]))
    for key in keys:
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def transfer_plan(
    sources: torch.Tensor,
    source_owners: torch.Tensor | None,
    dest_owners: torch.Tensor | None,
    world_size: int,
) -> dict[tuple[int, int], torch.Tensor]:
    """Rows to send: `{(src_rank, dst_rank): distinct global source rows, ascending}` for a new batch whose row i
    is old row `sources[i]`. `dest_owners` `None`: every rank wants every new row. Rows a rank already holds, and
    repeats of one row to one rank, are not listed (sent once, copied on arrival)."""
    if source_owners is None:  # every rank holds every old row: nothing moves
        return {}
    plan = {}
    for dst in range(world_size):
        wanted = sources if dest_owners is None else sources[dest_owners == dst]
        if len(wanted) == 0:
            continue
        held_by = source_owners[wanted]
        for src in range(world_size):
            if src == dst:
                continue
            rows = torch.unique(wanted[held_by == src])
            if len(rows):
                plan[(src, dst)] = rows
    return plan


@dataclass
class Traffic:
    """Bytes this rank sent during one search: latent rows moved between ranks, and all-gathered rewards."""

    rows_sent: int = 0
    latent_bytes_sent: int = 0
    gathered_bytes_sent: int = 0
    moves: list[int] = field(default_factory=list)  # rows sent by this rank, per move


class ParticleComm:
    """The collectives the sharded search needs, over a `torch.distributed` process group.

    Build it with [`ParticleComm.from_default_group`] (`None` unless a default group with ≥ 2 ranks exists). With
    NCCL, tensors travel on the search's CUDA device; with gloo on the CPU.
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        self.traffic = Traffic()

    @classmethod
    def from_default_group(cls) -> ParticleComm | None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls()

    def _wire(self, tensor: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
        """The tensor where the backend can send it (NCCL: a CUDA device, by default the current one; gloo: CPU)."""
        if self.backend == "nccl":
            if device is None or device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            return tensor.to(device).contiguous()
        return tensor.cpu().contiguous()

    def blocks(self, total: int) -> RowLayout:
        return RowLayout.blocks(total, self.world_size, self.rank)

    def everywhere(self, total: int) -> RowLayout:
        return RowLayout(total, None, self.rank)

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self.dist.all_gather(parts, tensor, group=self.group)
        return parts

    def gather_values(
        self, local: torch.Tensor, layout: RowLayout, failed: bool = False
    ) -> tuple[torch.Tensor, list[int]]:
        """One number per row (float64 rewards `[rows held]`) → the whole batch's `[total]` on every rank, and the
        ranks that reported `failed` (their values are ignored; all ranks learn it, so all can raise together)."""
        device = local.device
        counts = torch.bincount(layout.owners, minlength=self.world_size).tolist()
        width = max(counts) + 1  # padded to the largest share, plus a failure flag
        mine = torch.zeros(width, dtype=torch.float64)
        if not failed:
            mine[: len(local)] = local.detach().to(torch.float64).cpu()
        mine[-1] = float(failed)
        parts = self._all_gather(self._wire(mine, device))
        self.traffic.gathered_bytes_sent += mine.numel() * mine.element_size()
        failures = [r for r, part in enumerate(parts) if float(part[-1]) != 0.0]
        full = torch.empty(layout.total, dtype=torch.float64)
        if not failures:
            for rank, part in enumerate(parts):
                full[layout.owners == rank] = part[: counts[rank]].cpu()
        return full.to(device), failures

    def move(
        self,
        tensors: list[torch.Tensor],
        layout: RowLayout,
        sources: torch.Tensor,
        dest: RowLayout,
    ) -> list[torch.Tensor]:
        """Each of `tensors` (this rank's rows of `layout`) → this rank's rows of `dest`, whose row i is the
        source batch's row `sources[i]` (global indices). Sends only the rows [`transfer_plan`] lists."""
        sources = sources.cpu()
        mine = sources if dest.positions is None else sources[dest.positions]
        if not layout.sharded:
            return [t[mine.to(t.device)] for t in tensors]
        plan = transfer_plan(sources, layout.owners, dest.owners, self.world_size)
        where = torch.full((layout.total,), -1, dtype=torch.long)  # global row → index in the pool
        where[layout.positions] = torch.arange(len(layout.positions))
        pending, received = [], []
        offset = len(layout.positions)
        for (src, dst), rows in plan.items():
            if src == self.rank:
                picked = where[rows]
                for tag, t in enumerate(tensors):
                    payload = self._wire(t[picked.to(t.device)], t.device)
                    pending.append(self.dist.isend(payload, dst, group=self.group, tag=tag))
                    self.traffic.latent_bytes_sent += payload.numel() * payload.element_size()
                self.traffic.rows_sent += len(rows)
            elif dst == self.rank:
                buffers = [
                    self._wire(torch.empty((len(rows), *t.shape[1:]), dtype=t.dtype), t.device)
                    for t in tensors
                ]
                for tag, buffer in enumerate(buffers):
                    pending.append(self.dist.irecv(buffer, src, group=self.group, tag=tag))
                received.append(buffers)
                where[rows] = torch.arange(offset, offset + len(rows))
                offset += len(rows)
        for request in pending:
            request.wait()
        self.traffic.moves.append(sum(len(r) for (s, _), r in plan.items() if s == self.rank))
        index = where[mine]
        out = []
        for i, t in enumerate(tensors):
            pool = torch.cat([t, *(b[i].to(t.device) for b in received)]) if received else t
            out.append(pool[index.to(t.device)])
        return out

    def total(self, value: int) -> int:
        """Sum of an integer over the ranks."""
        tensor = self._wire(torch.tensor([int(value)], dtype=torch.int64))
        self.dist.all_reduce(tensor, group=self.group)
        return int(tensor.item())

    def check_same(self, **values) -> None:
        """Raise on every rank if the ranks were called with different arguments (prompts, seed, budget...): the
        sharded search is only correct when every rank runs the same search."""
        digest = hashlib.sha256(repr(sorted(values.items())).encode()).digest()[:8]
        mine = torch.tensor([int.from_bytes(digest, "little", signed=True)], dtype=torch.int64)
        parts = self._all_gather(self._wire(mine))
        differing = [r for r, p in enumerate(parts) if int(p.item()) != int(mine.item())]
        if differing:
            raise ValueError(
                f"InferenceScaler on {self.world_size} ranks: rank {self.rank} and rank(s) {differing} were called "
                f"with different {', '.join(sorted(values))}; every rank must run the same search (same prompts, "
                "options, and a generator seeded the same)"
            )
