"""The framework-free core of thinking control: a batched state machine over request slots (torch only).

Used by every adapter: vLLM's V1-runner and V2-runner logits processors and the transformers `LogitsProcessor`.
Each adapter owns the mapping from its engine's batch to *slots* and feeds the core two calls per decode step:

1. `observe(slots, tokens, positions)`: the token each request produced at the previous step (after the sampler,
   whatever processor chose it), which advances the state: thinking-token count, waits injected, the forced
   sequence in progress, the phase.
2. `apply(logits, slots, ...)`: edits the logits rows of those requests for the next token, without changing
   the state (a step whose token is discarded, e.g. a chunked-prefill row, leaves nothing behind). The only
   thing `apply` records is the min-budget *decision* of the step, keyed by the output position it was made
   for, which `observe` reads back to tell an injected wait token from a sampled one.

State lives in preallocated tensors of `num_slots` rows on the device (a phase enum, counters, the forced-sequence
cursor, sentinels such as `NO_LIMIT`), so the per-step work is a fixed number of tensor ops over the batch, with
no host-device synchronisation. Host mirrors of per-request flags let adapters skip work with a numpy test.

Semantics (one request; `E` = end delimiter tokens, `W` = wait tokens, `A` = answer prefix tokens):

- Thinking starts when the prompt ends inside an open think block or when the model emits the start delimiter,
  and ends at the end delimiter. Only generated tokens count; injected wait tokens count as thinking tokens.
- An *end attempt* is the end delimiter's first token `E[0]` being produced while thinking. When the model
  produces it on its own, the rest of a multi-token delimiter is forced.
- **Max:** with `count == max_think` the next tokens are forced to `E`, then `A` (a budget stop).
- **Min:** with `count < min_think` (and fewer than `max_waits` injections, and the wait text fits before
  `max_think`): greedy requests attempt to end when `E[0]` is the argmax; sampled requests attempt with
  probability p(`E[0]`) under the request's temperature (and top-k/top-p/min-p, as vLLM's sampler truncates),
  decided by a uniform drawn from a counter-based generator keyed by (request seed, output position). An attempt
  forces `W`; otherwise `E[0]` is excluded, so the token is sampled from the renormalised rest. This is the
  distribution of s1's loop (generate, stop at the end delimiter, append the wait text, continue). If the wait
  text would not fit before `max_think`, `E[0]` is excluded without injecting (thinking then ends at the max).
- **TS:** while thinking (and nothing is forced), `E[0]`'s logit z becomes z / T or z + bias; the min-budget
  decision sees the scaled logit.
- Priority: a forced sequence in progress (W, E, A: once started always completed) > max forcing > min
  decision > TS. A token different from the one we forced (another processor overrode us, e.g. vLLM's own
  `thinking_token_budget`, which runs after custom processors) abandons the forced sequence and is processed
  as a produced token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_ttsplugin.vocab import ThinkingSpec

# Phases of a slot.
PHASE_OFF = 0  # no request, or a request without thinking control
PHASE_BEFORE = 1  # controlled, waiting for the start delimiter
PHASE_THINKING = 2
PHASE_ANSWER = 3  # the end delimiter was produced (its forced tail and the answer prefix may still follow)

# Forced sequences.
SEQ_NONE = -1
SEQ_WAIT = 0
SEQ_END = 1  # end delimiter followed by the answer prefix (the prefix only after a budget stop)

# TS modes.
TS_OFF = 0
TS_TEMPERATURE = 1
TS_BIAS = 2

NO_LIMIT = 2**31 - 1  # sentinel for "no max_think" / "unlimited waits"
PAD_TOKEN = -1  # padding in token buffers (never a real id)
ANY_TOKEN = -2  # "matches anything" in the right-aligned start pattern

# Columns of the dynamic int64 state.
D_PHASE, D_THINK, D_WAITS, D_SEQ, D_SEQ_POS, D_SEQ_STOP, D_DEC_POS, D_DEC_END, D_BUDGET_STOP = range(9)
NUM_DYN = 9
# Columns of the static int64 config.
(
    C_MIN,
    C_MAX,
    C_MAX_WAITS,
    C_WAIT_LEN,
    C_END_LEN,
    C_PREFIX_LEN,
    C_END0,
    C_WAIT0,
    C_TS_MODE,
    C_GREEDY,
    C_TOP_K,
    C_SEED,
) = range(12)
NUM_CFG_I = 12
# Columns of the static float32 config.
F_TS_VALUE, F_TEMPERATURE, F_TOP_P, F_MIN_P = range(4)
NUM_CFG_F = 4


def _int64_seed(seed: int) -> int:
    """Map any Python int onto the int64 range (two's complement of seed mod 2**64)."""
    return ((int(seed) + 2**63) % 2**64) - 2**63


# -- counter-based uniforms ------------------------------------------------------------------------------------
_M32 = 0xFFFFFFFF


def _mul32(h, c: int):
    # (h * c) mod 2**32 for h < 2**32 without overflowing int64: split c into 16-bit halves.
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    # MurmurHash3's 32-bit finaliser: a bijection with full avalanche.
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def counter_uniform(seed, counter):
    """Uniforms in [0, 1) (24-bit, exact in float32) from (int64 seed, int64 counter): same pair, same number.

    A counter-based generator: no state to carry, so a decision made for output position i of a request with
    seed s is the same whether the step ran once, was discarded and re-run, or the request was preempted and
    resumed, and it is independent of how requests are batched. Works on int64 torch tensors (any device) and
    numpy arrays alike, with identical results.
    """
    if isinstance(seed, torch.Tensor):
        seed, counter = seed.to(torch.int64), counter.to(torch.int64)
    else:
        seed, counter = np.asarray(seed, dtype=np.int64), np.asarray(counter, dtype=np.int64)
    hi = _fmix32(((seed >> 32) & _M32) ^ 0x68E31DA4)
    lo = _fmix32(((seed & _M32) ^ hi) ^ 0x3C6EF372)
    h = _fmix32(_mul32(counter & _M32, 0x9E3779B1) ^ lo)
    h = _fmix32(h ^ 0x1B873593)
    if isinstance(h, torch.Tensor):
        return (h >> 8).to(torch.float32) * (1.0 / 2**24)
    return ((h >> 8) * (1.0 / 2**24)).astype(np.float32)


# -- probability of the end token as the request's sampler would draw it -----------------------------------------
def end_token_probability(
    logits: torch.Tensor,
    end_tokens: torch.Tensor,
    temperature: torch.Tensor | None,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """p(end token) after temperature, min-p, top-k and top-p, in vLLM's sampler order and definitions.

    Args:
        logits: [rows, vocab] logits as a logits processor sees them (before temperature).
        end_tokens: [rows] token id per row.
        temperature: [rows] > 0; `None` means 1 for every row (saves a pass over the vocabulary).
        top_k: [rows] int, <= 0 or >= vocab means off; `None` when no row uses it.
        top_p: [rows] float in (0, 1], 1 means off; `None` when no row uses it.
        min_p: [rows] float in [0, 1], 0 means off; `None` when no row uses it.

    Returns:
        [rows] float32 probabilities.
    """
    scaled = logits.to(torch.float32)
    if temperature is not None:
        scaled = scaled / temperature.to(torch.float32).unsqueeze(1)
    if min_p is not None:
        probs = scaled.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * min_p.to(torch.float32).unsqueeze(1)
        scaled = scaled.masked_fill(probs < threshold, -math.inf)
    if top_k is not None or top_p is not None:
        # vLLM's reference (apply_top_k_top_p_pytorch): ascending sort, keep values >= the k-th largest,
        # then drop the low tail whose cumulative probability is <= 1 - p, always keeping the largest.
        vocab = scaled.shape[-1]
        sorted_logits, order = scaled.sort(dim=-1, descending=False)
        if top_k is not None:
            k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab).to(torch.long)
            kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, -math.inf)
        if top_p is not None:
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - top_p.to(torch.float32)).unsqueeze(1)
            drop[:, -1] = False
            sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        scaled = torch.empty_like(scaled).scatter_(1, order, sorted_logits)
    end_logit = scaled.gather(1, end_tokens.to(torch.long).unsqueeze(1)).squeeze(1)
    return (end_logit - torch.logsumexp(scaled, dim=-1)).exp()


# -- prompts ------------------------------------------------------------------------------------------------------
def _last_match_end(tokens: torch.Tensor, pattern: Sequence[int]) -> torch.Tensor:
    """Index of the last token of the last occurrence of `pattern` in 1-D `tokens`, or -1 (a 0-d tensor)."""
    n, m = tokens.shape[0], len(pattern)
    if m == 0 or n < m:
        return torch.tensor(-1, dtype=torch.long, device=tokens.device)
    pat = torch.tensor(pattern, dtype=tokens.dtype, device=tokens.device)
    hits = (tokens.unfold(0, m, 1) == pat).all(dim=1)
    index = torch.arange(m - 1, n, device=tokens.device)
    return torch.where(hits, index, -1).max()


def scan_prompt(
    tokens: torch.Tensor, start_ids: Sequence[int], end_ids: Sequence[int], tail_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether a prompt ends inside an open think block, and the prompt's tail for start detection.

    Runs on the tokens' device without synchronising (V2 scans prompts on the GPU).

    Args:
        tokens: [prompt_len] token ids.
        start_ids, end_ids: The request's delimiters (empty `start_ids`: thinking is open from the start).
        tail_width: Width of the start-detection window (the returned tail is right-aligned in it).

    Returns:
        `(opens, tail)`: a 0-d bool tensor, and [tail_width] int64 holding the last `len(start_ids) - 1` prompt
        tokens right-aligned (so a start delimiter split across prompt and completion is still detected),
        `PAD_TOKEN` elsewhere.
    """
    device = tokens.device
    tokens = tokens.to(torch.long)
    tail = torch.full((tail_width,), PAD_TOKEN, dtype=torch.long, device=device)
    if not start_ids:
        return torch.tensor(True, device=device), tail
    opens = _last_match_end(tokens, start_ids) > _last_match_end(tokens, end_ids)
    keep = min(len(start_ids) - 1, tokens.shape[0], tail_width)
    if keep > 0:
        tail[tail_width - keep :] = tokens[tokens.shape[0] - keep :]
    return opens, tail


# -- array namespaces -------------------------------------------------------------------------------------------
class _TorchOps:
    """Per-step arithmetic on torch tensors (any device; what runs on accelerators)."""

    where = staticmethod(torch.where)

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
    def arange(n, like):
        return torch.arange(n, device=like.device)

    @staticmethod
    def view(t):
        return t

    @staticmethod
    def host(x) -> np.ndarray:
        return x.cpu().numpy()

    @staticmethod
    def to_torch(x):
        return x


class _NumpyOps:
    """The same arithmetic on numpy views of CPU tensors (shared memory, no copies).

    On the CPU a torch op on a few dozen elements costs microseconds of dispatch; numpy costs a fraction of
    that, and the state machine is a few dozen such ops per step. Both namespaces give identical results.
    """

    where = staticmethod(np.where)

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
    def arange(n, like):
        return np.arange(n)

    @staticmethod
    def view(t):
        return None if t is None else t.numpy()

    @staticmethod
    def host(x) -> np.ndarray:
        return x

    @staticmethod
    def to_torch(x):
        return torch.from_numpy(np.ascontiguousarray(x))


# -- the batched state machine -----------------------------------------------------------------------------------
class ThinkingControl:
    """Batched thinking-control state for `num_slots` request slots on one device.

    Args:
        num_slots: Number of slots (vLLM's `max_num_seqs`, or the batch size in transformers).
        device: Where the state lives: the logits' device.
        seq_width: Initial width of the forced-sequence buffers (grows at admission when a longer wait text or
            end delimiter + answer prefix arrives).
        start_width: Initial width of the start-delimiter detection window (grows likewise).
    """

    def __init__(
        self, num_slots: int, device: torch.device | str, seq_width: int = 8, start_width: int = 2
    ) -> None:
        self.num_slots = int(num_slots)
        self.device = torch.device(device)
        dev = self.device
        # [num_slots] whether the slot holds a controlled request.
        self.active = torch.zeros(num_slots, dtype=torch.bool, device=dev)
        # [num_slots, NUM_DYN] phase, counters, forced-sequence cursor, last min decision.
        self.dyn = torch.zeros(num_slots, NUM_DYN, dtype=torch.long, device=dev)
        # [num_slots, NUM_CFG_I] / [num_slots, NUM_CFG_F] per-request constants.
        self.cfg_i = torch.zeros(num_slots, NUM_CFG_I, dtype=torch.long, device=dev)
        self.cfg_f = torch.zeros(num_slots, NUM_CFG_F, dtype=torch.float32, device=dev)
        # [num_slots, 2, seq_width] forced sequences: row SEQ_WAIT = wait tokens, row SEQ_END = end + prefix.
        self.seq = torch.full((num_slots, 2, seq_width), PAD_TOKEN, dtype=torch.long, device=dev)
        # [num_slots, start_width] start pattern, right-aligned, ANY_TOKEN-padded on the left.
        self.start_pattern = torch.full((num_slots, start_width), ANY_TOKEN, dtype=torch.long, device=dev)
        # [num_slots, start_width] the last generated (or prompt-tail) tokens, right-aligned.
        self.recent = torch.full((num_slots, start_width), PAD_TOKEN, dtype=torch.long, device=dev)

        # Host mirrors of per-request flags, so adapters can skip work without touching the device.
        self.active_np = np.zeros(num_slots, dtype=bool)
        self.has_min_np = np.zeros(num_slots, dtype=bool)
        self.greedy_np = np.zeros(num_slots, dtype=bool)
        self.truncates_np = np.zeros(num_slots, dtype=bool)  # sampled with top-k/top-p/min-p
        self.temperature_np = np.ones(num_slots, dtype=np.float32)
        self.may_force_np = np.zeros(num_slots, dtype=bool)  # budgets or a multi-token end delimiter
        self.specs: list[ThinkingSpec | None] = [None] * num_slots

    # -- membership ------------------------------------------------------------------------------------------
    @property
    def seq_width(self) -> int:
        return self.seq.shape[2]

    @property
    def start_width(self) -> int:
        return self.start_pattern.shape[1]

    def required_start_width(self, specs: Sequence[ThinkingSpec]) -> int:
        return max([self.start_width] + [len(s.start_ids) for s in specs])

    def _grow(self, specs: Sequence[ThinkingSpec]) -> None:
        need = max(
            [self.seq_width]
            + [max(len(s.wait_ids), len(s.end_ids) + len(s.answer_prefix_ids)) for s in specs]
        )
        if need > self.seq_width:
            pad = torch.full(
                (self.num_slots, 2, need - self.seq_width), PAD_TOKEN, dtype=torch.long, device=self.device
            )
            self.seq = torch.cat([self.seq, pad], dim=2)
        need = self.required_start_width(specs)
        if need > self.start_width:
            extra = need - self.start_width
            self.start_pattern = torch.cat(
                [
                    torch.full((self.num_slots, extra), ANY_TOKEN, dtype=torch.long, device=self.device),
                    self.start_pattern,
                ],
                dim=1,
            )
            self.recent = torch.cat(
                [
                    torch.full((self.num_slots, extra), PAD_TOKEN, dtype=torch.long, device=self.device),
                    self.recent,
                ],
                dim=1,
            )

    def admit(
        self,
        slots: Sequence[int],
        specs: Sequence[ThinkingSpec],
        seeds: Sequence[int],
        opens: torch.Tensor,
        tails: torch.Tensor,
    ) -> None:
        """(Re)initialise slots for new requests. Everything a previous occupant left is overwritten.

        Args:
            slots: Slot indices.
            specs: The requests' resolved specs.
            seeds: int64 seed per request (the request's seed, or one drawn by the adapter).
            opens: [n] bool, whether each prompt ends inside an open think block (see `scan_prompt`).
            tails: [n, w] prompt tails right-aligned, `w <= self.start_width` after `required_start_width`.
        """
        if not slots:
            return
        self._grow(specs)
        n = len(slots)
        cfg_i = np.zeros((n, NUM_CFG_I), dtype=np.int64)
        cfg_f = np.zeros((n, NUM_CFG_F), dtype=np.float32)
        seq = np.full((n, 2, self.seq_width), PAD_TOKEN, dtype=np.int64)
        pattern = np.full((n, self.start_width), ANY_TOKEN, dtype=np.int64)
        for j, (spec, seed) in enumerate(zip(specs, seeds, strict=True)):
            sampling = spec.sampling
            ts_mode = (
                TS_TEMPERATURE
                if spec.end_temperature is not None
                else TS_BIAS
                if spec.end_bias is not None
                else TS_OFF
            )
            cfg_i[j] = (
                spec.min_think,
                spec.max_think if spec.max_think is not None else NO_LIMIT,
                spec.max_waits if spec.max_waits is not None else NO_LIMIT,
                len(spec.wait_ids),
                len(spec.end_ids),
                len(spec.answer_prefix_ids),
                spec.end_ids[0],
                spec.wait_ids[0],
                ts_mode,
                int(sampling.greedy),
                sampling.top_k,
                _int64_seed(seed),
            )
            ts_value = (
                spec.end_temperature
                if ts_mode == TS_TEMPERATURE
                else spec.end_bias
                if ts_mode == TS_BIAS
                else 0.0
            )
            cfg_f[j] = (ts_value, sampling.temperature, sampling.top_p, sampling.min_p)
            seq[j, SEQ_WAIT, : len(spec.wait_ids)] = spec.wait_ids
            forced_end = spec.end_ids + spec.answer_prefix_ids
            seq[j, SEQ_END, : len(forced_end)] = forced_end
            if spec.start_ids:
                pattern[j, self.start_width - len(spec.start_ids) :] = spec.start_ids
            s = slots[j]
            self.specs[s] = spec
            self.active_np[s] = True
            self.has_min_np[s] = spec.min_think > 0
            self.greedy_np[s] = sampling.greedy
            self.temperature_np[s] = sampling.temperature
            self.truncates_np[s] = not sampling.greedy and (
                sampling.top_k > 0 or sampling.top_p < 1.0 or sampling.min_p > 0.0
            )
            self.may_force_np[s] = spec.min_think > 0 or spec.max_think is not None or len(spec.end_ids) > 1
        dev = self.device
        index = torch.as_tensor(list(slots), dtype=torch.long).to(dev)
        opens = opens.to(dev, torch.bool)
        dyn = torch.zeros(n, NUM_DYN, dtype=torch.long, device=dev)
        dyn[:, D_PHASE] = torch.where(opens, PHASE_THINKING, PHASE_BEFORE)
        dyn[:, D_SEQ] = SEQ_NONE
        dyn[:, D_DEC_POS] = -1
        self.dyn[index] = dyn
        self.cfg_i[index] = torch.from_numpy(cfg_i).to(dev)
        self.cfg_f[index] = torch.from_numpy(cfg_f).to(dev)
        self.seq[index] = torch.from_numpy(seq).to(dev)
        self.start_pattern[index] = torch.from_numpy(pattern).to(dev)
        recent = torch.full((n, self.start_width), PAD_TOKEN, dtype=torch.long, device=dev)
        if tails.numel():
            width = min(tails.shape[1], self.start_width)
            recent[:, self.start_width - width :] = tails[:, tails.shape[1] - width :].to(dev, torch.long)
        self.recent[index] = recent
        self.active[index] = True

    def release(self, slots: Sequence[int]) -> None:
        """Forget the requests in these slots (finished, aborted, preempted, or overwritten)."""
        if len(slots) == 0:
            return
        for s in slots:
            self.specs[s] = None
        slots_np = np.asarray(slots, dtype=np.int64)
        for flags in (self.active_np, self.has_min_np, self.greedy_np, self.truncates_np, self.may_force_np):
            flags[slots_np] = False
        index = torch.as_tensor(slots_np).to(self.device)
        self.active[index] = False
        self.dyn[index, D_PHASE] = PHASE_OFF

    def permute(self, source: np.ndarray) -> None:
        """Rearrange slots: slot i takes what slot `source[i]` held; `source[i] == -1` empties slot i."""
        source = np.asarray(source, dtype=np.int64)
        empty = source < 0
        src = np.where(empty, np.arange(self.num_slots), source)
        index = torch.from_numpy(src).to(self.device)
        for name in ("active", "dyn", "cfg_i", "cfg_f", "seq", "start_pattern", "recent"):
            setattr(self, name, getattr(self, name)[index])
        self.specs = [None if empty[i] else self.specs[src[i]] for i in range(self.num_slots)]
        for name in (
            "active_np",
            "has_min_np",
            "greedy_np",
            "truncates_np",
            "may_force_np",
            "temperature_np",
        ):
            flags = getattr(self, name)[src]
            if flags.dtype == bool:
                flags[empty] = False
            setattr(self, name, flags)
        if empty.any():
            self.release(np.flatnonzero(empty).tolist())

    def snapshot(self, slot: int) -> tuple:
        """A copy of one slot's state (device tensors, no sync), for `restore` after a preemption."""
        return (
            self.specs[slot],
            self.dyn[slot].clone(),
            self.cfg_i[slot].clone(),
            self.cfg_f[slot].clone(),
            self.seq[slot].clone(),
            self.start_pattern[slot].clone(),
            self.recent[slot].clone(),
        )

    def restore(self, slot: int, snap: tuple) -> None:
        spec, dyn, cfg_i, cfg_f, seq, pattern, recent = snap
        self._grow([spec])
        self.admit([slot], [spec], [0], torch.zeros(1, dtype=torch.bool), torch.empty(1, 0, dtype=torch.long))
        self.dyn[slot] = dyn
        self.cfg_i[slot] = cfg_i
        self.cfg_f[slot] = cfg_f
        self.seq[slot, :, : seq.shape[1]] = seq
        self.start_pattern[slot, self.start_width - pattern.shape[0] :] = pattern
        self.recent[slot, self.start_width - recent.shape[0] :] = recent

    # -- per step --------------------------------------------------------------------------------------------
    def _ops(self, *tensors: torch.Tensor | None):
        """numpy views when everything is on the CPU (and float32 where floating), else torch."""
        if self.device.type == "cpu" and all(
            t is None or (t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == torch.float32))
            for t in tensors
        ):
            return _NumpyOps
        return _TorchOps

    def observe(
        self,
        slots: torch.Tensor,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        valid: torch.Tensor | None = None,
        infer_injections: bool = False,
    ) -> None:
        """Advance the state by one produced token per given slot.

        Args:
            slots: [n] int64 slot per token (distinct).
            tokens: [n] int64 the token produced.
            positions: [n] int64 its index in the completion (0 for the first generated token).
            valid: [n] bool, rows without a new token this step are left unchanged; `None`: all valid.
            infer_injections: Replaying tokens whose min-budget decisions were not recorded (a resumed request):
                a wait text starting where an injection was possible counts as injected.
        """
        if slots.numel() == 0:
            return
        xp = self._ops(slots, tokens, positions, valid)
        slots, tokens, positions, valid = (xp.view(t) for t in (slots, tokens, positions, valid))
        dyn, cfg_i, seq, recent_all = (xp.view(t) for t in (self.dyn, self.cfg_i, self.seq, self.recent))
        d = dyn[slots]
        c = cfg_i[slots]
        phase, think, waits = d[:, D_PHASE], d[:, D_THINK], d[:, D_WAITS]
        seq_kind, seq_pos, seq_stop = d[:, D_SEQ], d[:, D_SEQ_POS], d[:, D_SEQ_STOP]
        ok = xp.view(self.active)[slots]
        if valid is not None:
            ok = ok & valid

        # A forced sequence in progress: the token either follows it or (overridden) abandons it.
        in_seq = ok & (seq_kind >= 0)
        expected = seq[slots, xp.clamp(seq_kind, 0), xp.clamp(seq_pos, 0, self.seq_width - 1)]
        follows = in_seq & (tokens == expected)
        seq_pos = seq_pos + follows
        seq_kind = xp.where((follows & (seq_pos >= seq_stop)) | (in_seq & ~follows), SEQ_NONE, seq_kind)
        think = think + (follows & (d[:, D_SEQ] == SEQ_WAIT))
        free = ok & ~follows

        # A produced token while thinking: an injected wait, an end, or an ordinary thinking token.
        thinking = free & (phase == PHASE_THINKING)
        max_think, wait_len = c[:, C_MAX], c[:, C_WAIT_LEN]
        eligible = (
            thinking
            & (think < max_think)
            & (think < c[:, C_MIN])
            & (waits < c[:, C_MAX_WAITS])
            & (think + wait_len <= max_think)
        )
        injected = eligible & (tokens == c[:, C_WAIT0])
        if not infer_injections:
            injected = injected & (d[:, D_DEC_POS] == positions) & (d[:, D_DEC_END] == 1)
        is_end = thinking & ~injected & (tokens == c[:, C_END0])
        budget_stop = is_end & (think >= max_think)
        think = think + (thinking & ~is_end)
        waits = waits + injected
        start_wait = injected & (wait_len > 1)
        end_len, prefix_len = c[:, C_END_LEN], c[:, C_PREFIX_LEN]
        end_rest = is_end & ((end_len > 1) | (budget_stop & (prefix_len > 0)))
        seq_kind = xp.where(start_wait, SEQ_WAIT, xp.where(end_rest, SEQ_END, seq_kind))
        seq_pos = xp.where(start_wait | end_rest, 1, seq_pos)
        seq_stop = xp.where(
            start_wait, wait_len, xp.where(end_rest, end_len + budget_stop * prefix_len, seq_stop)
        )
        new_phase = xp.where(is_end, PHASE_ANSWER, phase)
        budget = xp.where(is_end, budget_stop * 1, d[:, D_BUDGET_STOP])

        # Before thinking: slide the window and look for the start delimiter.
        before = free & (phase == PHASE_BEFORE)
        recent = recent_all[slots]
        recent = xp.where(before[:, None], xp.cat_cols(recent[:, 1:], tokens[:, None]), recent)
        recent_all[slots] = recent
        pattern = xp.view(self.start_pattern)[slots]
        started = before & xp.all_rows((recent == pattern) | (pattern == ANY_TOKEN))
        new_phase = xp.where(started, PHASE_THINKING, new_phase)

        dyn[slots] = xp.stack_cols(
            [new_phase, think, waits, seq_kind, seq_pos, seq_stop, d[:, D_DEC_POS], d[:, D_DEC_END], budget]
        )

    def apply(
        self,
        logits: torch.Tensor,
        slots: torch.Tensor,
        slots_np: np.ndarray,
        out_len: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Edit the logits rows of controlled requests for their next token (in place; also returned).

        Args:
            logits: [num_rows, vocab] float logits (before temperature).
            slots: [n] int64 slot of each handled row (device).
            slots_np: The same slots on the host (to skip work without a device sync).
            out_len: [n] int64 number of tokens each request has generated so far (the position being sampled).
            rows: [n] int64 logits row of each slot; `None` means row i is `slots[i]`'s (n == num_rows).
        """
        if not self.active_np[slots_np].any():
            return logits
        xp = self._ops(logits, slots, out_len, rows)
        scores = xp.view(logits)
        slots, out_len, rows = xp.view(slots), xp.view(out_len), xp.view(rows)
        dyn, cfg_i = xp.view(self.dyn), xp.view(self.cfg_i)
        d = dyn[slots]
        c = cfg_i[slots]
        ts_value = xp.view(self.cfg_f)[slots, F_TS_VALUE]
        act = xp.view(self.active)[slots]
        phase, think, waits = d[:, D_PHASE], d[:, D_THINK], d[:, D_WAITS]
        seq_kind, seq_pos = d[:, D_SEQ], d[:, D_SEQ_POS]
        row_index = rows if rows is not None else xp.arange(slots.shape[0], slots)
        end0 = c[:, C_END0]

        in_seq = act & (seq_kind >= 0)
        seq_token = xp.view(self.seq)[slots, xp.clamp(seq_kind, 0), xp.clamp(seq_pos, 0, self.seq_width - 1)]
        free_thinking = act & ~in_seq & (phase == PHASE_THINKING)
        max_think = c[:, C_MAX]
        at_max = free_thinking & (think >= max_think)
        below_min = free_thinking & ~at_max & (think < c[:, C_MIN]) & (waits < c[:, C_MAX_WAITS])
        window = below_min & (think + c[:, C_WAIT_LEN] <= max_think)

        # TS: scale the end token's logit while thinking freely.
        end_logit = scores[row_index, end0]
        ts_mode = c[:, C_TS_MODE]
        scaled = xp.where(
            ts_mode == TS_TEMPERATURE, end_logit / xp.clamp(ts_value, 1e-30), end_logit + ts_value
        )
        end_logit_ts = xp.where(free_thinking & ~at_max & (ts_mode != TS_OFF), scaled, end_logit)

        decided = window & False
        has_min = self.has_min_np[slots_np]
        if has_min.any():
            # The decision sees the TS-scaled end logit.
            scores[row_index, end0] = end_logit_ts
            decided = self._decide(xp, scores, row_index, slots, slots_np, has_min, end0, out_len, window)
            dyn[slots, D_DEC_POS] = xp.where(window, out_len, d[:, D_DEC_POS])
            dyn[slots, D_DEC_END] = xp.where(window, decided * 1, d[:, D_DEC_END])

        forced = xp.where(
            in_seq, seq_token, xp.where(at_max, end0, xp.where(decided, c[:, C_WAIT0], PAD_TOKEN))
        )
        force = forced >= 0
        exclude = below_min & ~decided
        end_value = xp.where(
            force, xp.where(forced == end0, 0.0, -math.inf), xp.where(exclude, -math.inf, end_logit_ts)
        )
        may_force = self.may_force_np[slots_np].any()
        if may_force:
            if xp is _NumpyOps:
                scores[row_index[force]] = -math.inf  # touch only the forced rows
            elif rows is None:
                logits.masked_fill_(force[:, None], -math.inf)
            else:
                row_mask = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
                row_mask[row_index] = force
                logits.masked_fill_(row_mask[:, None], -math.inf)
        scores[row_index, end0] = end_value
        if may_force:
            column = xp.clamp(forced, 0)
            current = scores[row_index, column]
            scores[row_index, column] = xp.where(force, 0.0, current)
        return logits

    def _decide(self, xp, scores, row_index, slots, slots_np, has_min, end0, out_len, window):
        """Whether each row's end token would be produced now: argmax (greedy) or a seeded draw (sampled).

        Only rows in the min window matter. On an accelerator the candidates are chosen on the host (rows of
        requests with a minimum budget) so nothing synchronises; on the CPU, where there is nothing to synchronise
        with, the vocabulary passes are restricted to the rows actually in the window.
        """
        decided = window & False
        greedy = self.greedy_np[slots_np]
        if xp is _NumpyOps or scores.device.type == "cpu":
            candidates = np.flatnonzero(xp.host(window))
            picks = (candidates[greedy[candidates]], candidates[~greedy[candidates]])
        else:
            picks = (np.flatnonzero(has_min & greedy), np.flatnonzero(has_min & ~greedy))
        pick_greedy, pick_sampled = picks
        to_index = (lambda a: a) if xp is _NumpyOps else (lambda a: torch.from_numpy(a).to(slots.device))
        if pick_greedy.size:
            sel = to_index(pick_greedy)
            decided[sel] = scores[row_index[sel]].argmax(-1) == end0[sel]
        if pick_sampled.size:
            sel = to_index(pick_sampled)
            sel_slots = slots[sel]
            f = xp.view(self.cfg_f)[sel_slots]
            top_k = top_p = min_p = None
            if self.truncates_np[slots_np[pick_sampled]].any():
                top_k = xp.to_torch(xp.view(self.cfg_i)[sel_slots, C_TOP_K])
                top_p = xp.to_torch(f[:, F_TOP_P])
                min_p = xp.to_torch(f[:, F_MIN_P])
            temperature = None
            if not (self.temperature_np[slots_np[pick_sampled]] == 1.0).all():
                temperature = xp.to_torch(f[:, F_TEMPERATURE])
            u = counter_uniform(xp.view(self.cfg_i)[sel_slots, C_SEED], out_len[sel])
            rows = xp.to_torch(scores[row_index[sel]])
            ends = xp.to_torch(end0[sel])
            if xp is _NumpyOps and top_k is None:
                # Exact shortcut on the CPU: p(end) <= exp((z_end - z_max) / T), so a draw above that bound is
                # "no end" without the exp-sum over the vocabulary (most rows, most steps).
                scale = f[:, F_TEMPERATURE] if temperature is not None else 1.0
                z_end = scores[row_index[sel], end0[sel]]
                bound = np.exp((z_end - rows.amax(dim=-1).numpy()) / scale) * (1 + 1e-5)
                need = np.flatnonzero(u < bound)
                result = np.zeros(u.shape, dtype=bool)
                if need.size:
                    sub = torch.from_numpy(need)
                    p_end = end_token_probability(
                        rows[sub], ends[sub], None if temperature is None else temperature[sub]
                    )
                    result[need] = u[need] < p_end.numpy()
                decided[sel] = result
            else:
                p_end = end_token_probability(rows, ends, temperature, top_k, top_p, min_p)
                decided[sel] = u < (p_end.numpy() if xp is _NumpyOps else p_end)
        return decided & window

    # -- inspection (tests, reports) -------------------------------------------------------------------------
    def state(self, slot: int) -> dict[str, int]:
        """One slot's dynamic state as Python ints (synchronises; for tests and debugging)."""
        d = self.dyn[slot].tolist()
        return {
            "phase": d[D_PHASE],
            "think": d[D_THINK],
            "waits": d[D_WAITS],
            "seq": d[D_SEQ],
            "seq_pos": d[D_SEQ_POS],
            "seq_stop": d[D_SEQ_STOP],
            "budget_stop": d[D_BUDGET_STOP],
        }


# -- scalar reference ------------------------------------------------------------------------------------------
@dataclass
class ThinkingTrace:
    """Pure-Python reference of the state machine for one request (the specification the batched core matches).

    Also used to read a finished completion back into a report (`vllm_ttsplugin.report`).
    """

    spec: ThinkingSpec
    phase: int = PHASE_BEFORE
    think: int = 0
    waits: int = 0
    seq: int = SEQ_NONE
    seq_pos: int = 0
    seq_stop: int = 0
    budget_stop: bool = False
    recent: list[int] = field(default_factory=list)
    position: int = 0
    # Completion index of the first thinking token, of the end delimiter's first token, and where waits start.
    think_begin: int | None = None
    end_index: int | None = None
    wait_positions: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, spec: ThinkingSpec, prompt_ids: Sequence[int] | None) -> ThinkingTrace:
        prompt = torch.as_tensor(list(prompt_ids or []), dtype=torch.long)
        width = max(len(spec.start_ids), 1)
        opens, tail = scan_prompt(prompt, spec.start_ids, spec.end_ids, width)
        opens_b = bool(opens)
        trace = cls(spec=spec, phase=PHASE_THINKING if opens_b else PHASE_BEFORE)
        trace.recent = [t for t in tail.tolist()]
        if opens_b:
            trace.think_begin = 0
        return trace

    @property
    def _max(self) -> int:
        return self.spec.max_think if self.spec.max_think is not None else NO_LIMIT

    @property
    def _max_waits(self) -> int:
        return self.spec.max_waits if self.spec.max_waits is not None else NO_LIMIT

    def _free_thinking(self) -> bool:
        return self.phase == PHASE_THINKING and self.seq == SEQ_NONE

    def in_window(self) -> bool:
        """Whether the next token gets a min-budget decision (an end attempt would become the wait text)."""
        return (
            self._free_thinking()
            and self.think < self._max
            and self.think < self.spec.min_think
            and self.waits < self._max_waits
            and self.think + len(self.spec.wait_ids) <= self._max
        )

    def suppressed(self) -> bool:
        """Whether the end token is excluded without a decision (the wait text would not fit)."""
        return (
            self._free_thinking()
            and self.think < self._max
            and self.think < self.spec.min_think
            and self.waits < self._max_waits
            and not self.in_window()
        )

    def forced_token(self, decided_end: bool = False) -> int | None:
        """The token forced next (given the step's min decision), or `None`."""
        if self.seq != SEQ_NONE:
            tokens = (
                self.spec.wait_ids
                if self.seq == SEQ_WAIT
                else self.spec.end_ids + self.spec.answer_prefix_ids
            )
            return tokens[self.seq_pos]
        if self._free_thinking() and self.think >= self._max:
            return self.spec.end_ids[0]
        if decided_end and self.in_window():
            return self.spec.wait_ids[0]
        return None

    def observe(self, token: int, injected: bool | None = None) -> None:
        """Advance by one produced token. `injected`: the recorded decision; `None` infers it from the token."""
        spec = self.spec
        if self.seq != SEQ_NONE:
            tokens = spec.wait_ids if self.seq == SEQ_WAIT else spec.end_ids + spec.answer_prefix_ids
            if token == tokens[self.seq_pos]:
                if self.seq == SEQ_WAIT:
                    self.think += 1
                self.seq_pos += 1
                if self.seq_pos >= self.seq_stop:
                    self.seq = SEQ_NONE
                self.position += 1
                return
            self.seq = SEQ_NONE
        if self.phase == PHASE_THINKING:
            eligible = self.in_window()
            is_injection = eligible and token == spec.wait_ids[0] and (injected is None or injected)
            if is_injection:
                self.wait_positions.append(self.position)
                self.think += 1
                self.waits += 1
                if len(spec.wait_ids) > 1:
                    self.seq, self.seq_pos, self.seq_stop = SEQ_WAIT, 1, len(spec.wait_ids)
            elif token == spec.end_ids[0]:
                self.budget_stop = self.think >= self._max
                self.phase = PHASE_ANSWER
                self.end_index = self.position
                stop = len(spec.end_ids) + (len(spec.answer_prefix_ids) if self.budget_stop else 0)
                if stop > 1:
                    self.seq, self.seq_pos, self.seq_stop = SEQ_END, 1, stop
            else:
                self.think += 1
        elif self.phase == PHASE_BEFORE:
            width = max(len(spec.start_ids), 1)
            self.recent = (self.recent + [token])[-width:]
            if spec.start_ids and self.recent[-len(spec.start_ids) :] == list(spec.start_ids):
                self.phase = PHASE_THINKING
                self.think_begin = self.position + 1
        self.position += 1
