"""`TTSLogitsProcessor`: one class that plugs ttsplugin's controls into vLLM, under both model runners.

vLLM has two logits-processor interfaces that share the `--logits-processors` option and the
`vllm.logits_processors` entry-point group, and each runner refuses a class of the other interface:

- V1 runner (`vllm.v1.sample.logits_processor.LogitsProcessor`): `__init__(vllm_config, device,
  is_pin_memory)`, `update_state(BatchUpdate | None)`, `apply(logits)`; the persistent batch index is the row.
- V2 runner (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`, default on GPUs from vLLM 0.31):
  `__init__(vllm_config, req_states)`, `add_request(slot, params)`, `apply_staged_writes()`,
  `apply(logits, ctx)`; per-slot state lives on the device and token history is read from `req_states`.

`TTSLogitsProcessor` subclasses both, so the one name `vllm_ttsplugin:TTSLogitsProcessor` passes either runner's
loader; its constructor picks the adapter from the arguments it receives. Installing ttsplugin registers nothing in
`vllm.logits_processors` (an entry point there is loaded into *every* engine of the environment, and a second,
explicit `--logits-processors` would instantiate the class twice); users enable it explicitly (README).

Where it runs in the sampling order (V1): after the allowed-token mask, bad words, min-tokens and logit bias,
before penalties, vLLM's own thinking-budget forcing, temperature, min-p and top-k/top-p; V2 is the same
(its docstring: after bias, penalties, bad words; before temperature, min-p, top-k/top-p; thinking budget after).
It is not argmax-invariant (it forces tokens), so vLLM also runs it for greedy requests. Like every custom
processor it is rejected with speculative decoding.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from vllm_ttsplugin.components import COMPONENTS, SlotComponent
from vllm_ttsplugin.config import KEY_PREFIX, ThinkingConfigError
from vllm_ttsplugin.ffs import (
    FIRST_FINISH_KEY,
    GROUP_KEY,
    FirstFinishV1,
    FirstFinishV2,
    validate_first_finish_params,
)
from vllm_ttsplugin.vocab import TokenizerVocab, vocab_for

try:  # vLLM >= 0.31
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as V2LogitsProcessor
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcRequestState
except ImportError:  # pragma: no cover - older vLLM has only the V1 interface

    class V2LogitsProcessor:  # type: ignore[no-redef]
        pass

    LogitsProcRequestState = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

logger = logging.getLogger("vllm_ttsplugin")

STR_SPEC_DECODE = (
    "TTSLogitsProcessor does not support speculative decoding (nor does any custom logits processor)."
)


# -- the tokenizer at admission ---------------------------------------------------------------------------------
# `validate_params` is a classmethod that vLLM calls with the request's SamplingParams only. Where it runs (read
# in vLLM 0.32's source): `InputProcessor._validate_params` -> the validator built by
# `InputProcessor._build_logits_processors_params_validator` (V1: `validate_logits_processors_parameters`, V2:
# `build_custom_logits_processors_params_validator`) -> `validate_params`. The InputProcessor lives in the
# *frontend* process: the `LLM`/`LLMEngine` process offline, the API-server process with the OpenAI server, and
# `AsyncLLM`'s process, in-process or multiprocess alike; the engine core (another process unless
# VLLM_ENABLE_V1_MULTIPROCESSING=0) never calls it. vLLM's "current config" (`get_current_vllm_config`) is only
# set inside the workers during model initialisation, not in the frontend at admission. So the frontend's own
# InputProcessor is the reliable source of the model's tokenizer: we find it on the call stack (a few frames up)
# and use its `tokenizer` and `model_config.get_vocab_size()`; the resolved facts are cached per tokenizer object.
# Fallback: the current vLLM config when one is set (inside vLLM's workers). Elsewhere (an unknown caller) only
# the tokenizer-free checks run at admission; the engine resolves the request again and, if that fails, leaves it
# uncontrolled with a warning rather than failing the step.
_NOT_FOUND = object()
# Set by `admission_tokenizer` for frontends that validate outside vLLM's InputProcessor.
_ADMISSION_VOCAB: ContextVar[TokenizerVocab | None] = ContextVar("ttsplugin_admission_vocab", default=None)


@contextmanager
def admission_tokenizer(tokenizer: Any, vocab_size: int | None = None) -> Iterator[None]:
    """Validate the requests admitted inside this block against `tokenizer` (and `vocab_size` logits).

    For code that validates requests outside vLLM's `InputProcessor`: the server middleware, which rejects bad
    `tts_*` keys of a streaming request before its stream starts, and tests.
    """
    token = _ADMISSION_VOCAB.set(vocab_for(tokenizer, vocab_size))
    try:
        yield
    finally:
        _ADMISSION_VOCAB.reset(token)


def _input_processor_class():
    module = sys.modules.get("vllm.v1.engine.input_processor")
    return getattr(module, "InputProcessor", None)


def admission_vocab(max_depth: int = 12) -> TokenizerVocab | None | object:
    """The model's tokenizer facts for a request being admitted.

    Returns a `TokenizerVocab`, `None` when the engine has no tokenizer (`skip_tokenizer_init`), or `_NOT_FOUND`
    when this is not an admission path we know (the tokenizer checks then happen engine-side, where a failure
    leaves the request untouched with a warning instead of rejecting it).
    """
    override = _ADMISSION_VOCAB.get()
    if override is not None:
        return override
    cls = _input_processor_class()
    if cls is not None:
        frame = sys._getframe(1)
        for _ in range(max_depth):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, cls):
                tokenizer = owner.tokenizer
                if tokenizer is None:
                    return None
                return vocab_for(tokenizer, owner.model_config.get_vocab_size())
            frame = frame.f_back
    try:
        from vllm.config import get_current_vllm_config_or_none

        config = get_current_vllm_config_or_none()
    except ImportError:  # pragma: no cover
        config = None
    if config is not None and getattr(config, "model_config", None) is not None:
        return _engine_vocab(config)
    return _NOT_FOUND


def _engine_vocab(vllm_config: VllmConfig) -> TokenizerVocab | None:
    """The engine-side tokenizer facts (loaded through vLLM's own cache of tokenizers)."""
    model_config = vllm_config.model_config
    try:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(model_config)
    except Exception as exc:  # a tokenizer-less engine must still start
        logger.warning("ttsplugin: could not load the tokenizer (%s); thinking control is disabled", exc)
        return None
    if tokenizer is None:
        return None
    return vocab_for(tokenizer, model_config.get_vocab_size())


def _all_keys(components: Sequence[type[SlotComponent]]) -> set[str]:
    return {key for comp in components for key in comp.keys}


def validate_request(
    params: SamplingParams,
    components: Sequence[type[SlotComponent]] = COMPONENTS,
    external_keys: Sequence[str] = (),
) -> None:
    """Admission check of a request's `tts_*` keys; raises `ThinkingConfigError` naming the parameter.

    `external_keys` are owned (and validated) by runner components; the slot components skip them.
    """
    extra = getattr(params, "extra_args", None)
    if not extra or not any(isinstance(k, str) and k.startswith(KEY_PREFIX) for k in extra):
        return
    vocab = admission_vocab()
    all_keys = _all_keys(components) | set(external_keys)
    handled = False
    for comp in components:
        other = all_keys.difference(comp.keys)
        parsed = comp.parse(params, vocab if isinstance(vocab, TokenizerVocab) else None, tuple(other))
        handled |= parsed is not None
    if handled and vocab is None:
        raise ThinkingConfigError(
            "ttsplugin's tts_* controls need the model's tokenizer, and this engine runs without one "
            "(skip_tokenizer_init)",
            parameter="extra_args",
        )


def _validation_error(exc: ThinkingConfigError) -> Exception:
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # pragma: no cover
        return exc
    value = (
        exc.value if isinstance(exc.value, str | int | float | bool) or exc.value is None else repr(exc.value)
    )
    err = VLLMValidationError(str(exc), parameter=exc.parameter, value=value)
    return err


# -- V1 runner ------------------------------------------------------------------------------------------------
class _V1Adapter:
    """Persistent-batch bookkeeping for the V1 runner: the batch index is the slot and the logits row.

    Tokens arrive as the live `output_tok_ids` lists vLLM hands over at admission; they are read in `apply`
    (under async scheduling vLLM repairs their placeholders just before sampling, after `update_state`). An index
    overwritten by an add or a move means its previous occupant left. A removed request's state is stashed by
    the identity of its output list, so a preempted (or temporarily unscheduled) request resumes exactly;
    without a stash entry, its tokens are replayed.
    """

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool, components, external_keys=()
    ) -> None:
        if vllm_config.speculative_config is not None:
            raise ValueError(STR_SPEC_DECODE)
        self.num_slots = int(vllm_config.scheduler_config.max_num_seqs)
        self.device = torch.device(device)
        self.pin_memory = bool(is_pin_memory)
        self.vocab = _engine_vocab(vllm_config)
        seed = getattr(vllm_config.model_config, "seed", 0) or 0
        self.components: list[SlotComponent] = [
            c(self.num_slots, self.device, self.vocab, seed) for c in components
        ]
        self._all_keys = _all_keys(components) | set(external_keys)
        self.lists: list[list[int] | None] = [None] * self.num_slots
        self.prompts: list[Any] = [None] * self.num_slots
        self.requests: list[list[object | None] | None] = [None] * self.num_slots
        self.observed = np.zeros(self.num_slots, dtype=np.int64)
        self.handled = np.zeros(self.num_slots, dtype=bool)
        # [num_slots] admitted without its state while holding output: its tokens are replayed (inferred).
        self.replay = np.zeros(self.num_slots, dtype=bool)
        self._replaying = False
        self._slots_np: np.ndarray | None = None  # handled slots (host), rebuilt when membership changes
        self._slots_list: list[int] = []
        # id(output list) -> (list, observed, snapshots, parsed requests, prompt): preempted/unscheduled requests.
        self._stash: OrderedDict[int, tuple] = OrderedDict()

    # membership
    def _leave(self, slot: int, stash: bool) -> None:
        if not self.handled[slot]:
            return
        if stash:
            self._stash_slot(slot)
        for comp in self.components:
            comp.release([slot])
        self.handled[slot] = False
        self.replay[slot] = False
        self.lists[slot] = None
        self.prompts[slot] = None
        self.requests[slot] = None
        self._slots_np = None

    def _stash_slot(self, slot: int) -> None:
        """Keep the state of the request in `slot` (it is leaving, maybe to be resumed later)."""
        out = self.lists[slot]
        if out is None:
            return
        snaps = [comp.snapshot(slot) for comp in self.components]
        self._stash[id(out)] = (out, int(self.observed[slot]), snaps, self.requests[slot], self.prompts[slot])
        while len(self._stash) > 2 * self.num_slots:
            self._stash.popitem(last=False)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self._leave(slot, stash=True)
        admit: list[tuple[int, list[object | None], Any]] = []
        for slot, params, prompt_ids, output_ids in batch_update.added:
            self._leave(slot, stash=True)
            stashed = self._stash.pop(id(output_ids), None)
            if stashed is not None and stashed[0] is output_ids and len(output_ids) >= stashed[1]:
                _, observed, snaps, requests, prompt = stashed
                for comp, snap in zip(self.components, snaps, strict=True):
                    if snap is not None:
                        comp.restore(slot, snap)
                self._occupy(slot, output_ids, prompt, requests, observed)
                continue
            requests = [
                comp.parse_engine(params, tuple(self._all_keys.difference(comp.keys)))
                for comp in self.components
            ]
            if any(r is not None for r in requests):
                admit.append((slot, requests, prompt_ids))
                self._occupy(slot, output_ids, prompt_ids, requests, 0)
                if output_ids:  # resumed without its state: replay its tokens
                    self.replay[slot] = self._replaying = True
        self._admit(admit)
        if batch_update.moved:
            self._move(batch_update.moved)

    def _occupy(self, slot, output_ids, prompt, requests, observed) -> None:
        self.lists[slot] = output_ids
        self.prompts[slot] = prompt
        self.requests[slot] = requests
        self.observed[slot] = observed
        self.handled[slot] = True
        self.replay[slot] = False
        self._slots_np = None

    def _admit(self, admit: list[tuple[int, list[object | None], Any]]) -> None:
        if not admit:
            return
        prompts = [None if p is None else torch.as_tensor(p, dtype=torch.long) for _, _, p in admit]
        for k, comp in enumerate(self.components):
            chosen = [
                (slot, reqs[k], prompt)
                for (slot, reqs, _), prompt in zip(admit, prompts, strict=True)
                if reqs[k] is not None
            ]
            if chosen:
                comp.admit([c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen])

    def _move(self, moved) -> None:
        source = np.arange(self.num_slots)
        for a, b, direction in moved:
            if direction == MoveDirectionality.SWAP:
                source[a], source[b] = source[b], source[a]
            else:
                if a != b and source[b] >= 0 and self.handled[source[b]]:
                    # Condensing moved another request onto this one: it left the batch without being listed
                    # in `removed` (finished, or preempted/unscheduled and coming back): keep its state.
                    self._stash_slot(int(source[b]))
                source[b] = source[a]
                source[a] = -1
        for comp in self.components:
            comp.permute(source)
        empty = source < 0
        src = np.where(empty, np.arange(self.num_slots), source)
        self.observed = self.observed[src]
        self.handled = self.handled[src] & ~empty
        self.replay = self.replay[src] & ~empty
        for name in ("lists", "prompts", "requests"):
            old = getattr(self, name)
            setattr(self, name, [None if empty[i] else old[src[i]] for i in range(self.num_slots)])
        self._slots_np = None

    # per step
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self._slots_np is None:
            self._slots_np = np.flatnonzero(self.handled)
            self._slots_list = self._slots_np.tolist()
        slots_np, slots_list = self._slots_np, self._slots_list
        if not slots_list:
            return logits
        lists = self.lists
        lengths = [len(lists[s]) for s in slots_list]
        length_np = np.array(lengths, dtype=np.int64)
        new = length_np - self.observed[slots_np]
        # Tokens whose decisions this state did not record: more than one new token, a truncated list, or any
        # token of a request admitted without its state (`replay`); only those slots are replayed.
        stale = (new < 0) | (new > 1)
        replaying = self._replaying  # host flag: the per-slot mask is only read while some slot needs it
        if replaying:
            stale |= self.replay[slots_np] & (new > 0)
        if stale.any():
            self._catch_up(slots_np[stale], length_np[stale], new[stale])
            new = length_np - self.observed[slots_np]
        if replaying:
            self.replay[slots_np] = False
            self._replaying = bool(self.replay.any())
        tokens = [lists[s][-1] if n == 1 else -1 for s, n in zip(slots_list, new.tolist(), strict=True)]
        # One host->device copy per step: slots, tokens, output lengths.
        packed = torch.from_numpy(np.array([slots_list, tokens, lengths], dtype=np.int64))
        if self.device.type != "cpu":
            packed = packed.pin_memory() if self.pin_memory else packed
            packed = packed.to(self.device, non_blocking=True)
        slots, token_t, out_len = packed[0], packed[1], packed[2]
        valid = token_t >= 0
        for comp in self.components:
            comp.observe(slots, token_t, out_len - 1, valid)
        self.observed[slots_np] = lengths
        for comp in self.components:
            logits = comp.apply(logits, slots, slots_np, out_len, slots)
        return logits

    def _catch_up(self, slots_np: np.ndarray, lengths: np.ndarray, new: np.ndarray) -> None:
        """Replay the tokens `slots_np` generated that the state has not seen (a request re-added with output),
        or restart them after a truncation."""
        restart = slots_np[new < 0]
        for slot in restart:  # vLLM dropped output tokens (e.g. a failed KV load): rebuild from the prompt
            requests, prompt = self.requests[slot], self.prompts[slot]
            for k, comp in enumerate(self.components):
                comp.release([slot])
                if requests[k] is not None:
                    tensor = None if prompt is None else torch.as_tensor(prompt, dtype=torch.long)
                    comp.admit([int(slot)], [requests[k]], [tensor])
            self.observed[slot] = 0
        behind = [
            (int(s), int(self.observed[s]), int(n))
            for s, n in zip(slots_np, lengths, strict=True)
            if n > self.observed[s]
        ]
        # Decisions of these steps were not recorded here (the slot was just (re)admitted): infer them.
        for k in range(max((n - o for _, o, n in behind), default=0)):
            batch = [(s, self.lists[s][o + k], o + k) for s, o, n in behind if o + k < n]
            arr = torch.tensor(batch, dtype=torch.long).T.to(self.device)
            for comp in self.components:
                comp.observe(arr[0], arr[1], arr[2], None, infer_injections=True)
        for s, _, n in behind:
            self.observed[s] = n


# -- V2 runner ------------------------------------------------------------------------------------------------
class _V2Adapter:
    """Slot bookkeeping for the V2 runner: state on the device per slot, no host-device sync per step.

    Tokens are read on the device from `req_states.all_token_ids` at `total_len - 1`; a slot's tokens not yet
    observed are counted by an on-device `observed` length. `add_request` only stages (host) work;
    `apply_staged_writes` admits the staged requests and scans their prompts on the device. A request resumed
    after preemption is re-added with its partial output in `prefill_len`, which is replayed there.
    """

    def __init__(self, vllm_config: VllmConfig, req_states: Any, components, external_keys=()) -> None:
        if vllm_config.speculative_config is not None:
            raise ValueError(STR_SPEC_DECODE)
        self.req_states = req_states
        self.num_slots = int(req_states.max_num_reqs)
        self.device = torch.device(req_states.device)
        self.vocab = _engine_vocab(vllm_config)
        seed = getattr(vllm_config.model_config, "seed", 0) or 0
        self.components: list[SlotComponent] = [
            c(self.num_slots, self.device, self.vocab, seed) for c in components
        ]
        self._all_keys = _all_keys(components) | set(external_keys)
        self.handled = np.zeros(self.num_slots, dtype=bool)
        # [num_slots] number of generated tokens the components have observed.
        self.observed = torch.zeros(self.num_slots, dtype=torch.long, device=self.device)
        self._staged: list[tuple[int, list[object | None]]] = []

    def add_request(self, slot: int, params: SamplingParams) -> bool:
        requests = [
            comp.parse_engine(params, tuple(self._all_keys.difference(comp.keys))) for comp in self.components
        ]
        handled = any(r is not None for r in requests)
        # The slot's previous occupant left; release it now (host mirrors) and admit in apply_staged_writes.
        for comp in self.components:
            if comp.active_np[slot]:
                comp.release([slot])
        self.handled[slot] = handled
        self._staged = [entry for entry in self._staged if entry[0] != slot]
        if handled:
            self._staged.append((slot, requests))
        return handled

    def apply_staged_writes(self) -> None:
        if not self._staged:
            return
        staged, self._staged = self._staged, []
        rs = self.req_states
        prompt_len = rs.prompt_len.np
        prefill_len = rs.prefill_len.np
        all_tokens = rs.all_token_ids.gpu
        slots = [slot for slot, _ in staged]
        prompts = [all_tokens[slot, : int(prompt_len[slot])] for slot in slots]
        for k, comp in enumerate(self.components):
            chosen = [
                (slot, reqs[k], p)
                for (slot, reqs), p in zip(staged, prompts, strict=True)
                if reqs[k] is not None
            ]
            if chosen:
                comp.admit([c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen])
        # Output already present at (re)admission: a request resumed after preemption.
        n_out = np.array([int(prefill_len[s]) - int(prompt_len[s]) for s in slots], dtype=np.int64)
        slot_t = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.observed[slot_t] = torch.from_numpy(n_out).to(self.device)
        for k in range(int(n_out.max(initial=0))):
            pick = np.flatnonzero(n_out > k)
            sel = slot_t[torch.from_numpy(pick).to(self.device)]
            pos = torch.from_numpy(prompt_len[np.asarray(slots)[pick]].astype(np.int64) + k).to(self.device)
            tokens = all_tokens[sel, pos].long()
            positions = torch.full_like(tokens, k)
            for comp in self.components:
                comp.observe(sel, tokens, positions, None, infer_injections=True)

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        idx_np = ctx.idx_mapping_np
        if not self.handled[idx_np].any():
            return logits
        rs = self.req_states
        slots = ctx.expanded_idx_mapping.long()
        total = rs.total_len.gpu[slots].long()
        out_len = total - rs.prompt_len.gpu[slots].long()
        observed = self.observed[slots]
        new = out_len > observed
        tokens = rs.all_token_ids.gpu[slots, (total - 1).clamp(min=0)].long()
        for comp in self.components:
            comp.observe(slots, tokens, out_len - 1, new)
        self.observed[slots] = torch.where(new, out_len, observed)
        for comp in self.components:
            logits = comp.apply(logits, slots, idx_np, out_len, None)
        return logits


# -- the public class -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerComponent:
    """A control that brings its own runner-level processors (rather than a `SlotComponent`).

    `TTSLogitsProcessor` runs these after its slot components, so on a row both touch they win: this is where a
    First Finish stop (the highest priority) plugs in.

    Args:
        keys: The `extra_args` keys it owns (validated by `validate`, ignored by the other components).
        validate: Called at admission with the request's `SamplingParams` (may raise `ValueError` or
            `VLLMValidationError`).
        v1: Constructed as `v1(vllm_config, device, is_pin_memory)`; gets `update_state(batch_update)` and
            `apply(logits)` every step, after the slot components.
        v2: Constructed as `v2(vllm_config, req_states)`; gets `add_request(slot, params) -> bool`,
            `apply_staged_writes()` and `apply(logits, ctx)`.
    """

    keys: tuple[str, ...]
    validate: Callable[[Any], None]
    v1: Callable[..., Any] | None = None
    v2: Callable[..., Any] | None = None


class TTSLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """ttsplugin's controls for vLLM, per request through `SamplingParams.extra_args` / `vllm_xargs`.

    Enable it with `LLM(..., logits_processors=[TTSLogitsProcessor])` (or the string
    `"vllm_ttsplugin:TTSLogitsProcessor"`), or `--logits-processors vllm_ttsplugin:TTSLogitsProcessor` on the
    server. Requests without `tts_*` keys are untouched (their logits rows are not modified). The keys are
    documented in `vllm_ttsplugin.config.ThinkingConfig`; invalid values are rejected at admission (HTTP 400
    naming the parameter).

    The same class implements vLLM's V1-runner and V2-runner interfaces; vLLM constructs it with the arguments of
    the runner in use and it dispatches to the matching adapter.
    """

    # Controls in application order (a later one wins on a row both touch): slot components share the
    # processor's slot bookkeeping; runner components bring their own and run last.
    components: tuple[type[SlotComponent], ...] = tuple(COMPONENTS)
    # First Finish Search (`tts_first_finish`, `tts_group`) runs last: its stop wins over every thinking control.
    runner_components: tuple[RunnerComponent, ...] = (
        RunnerComponent(
            (FIRST_FINISH_KEY, GROUP_KEY), validate_first_finish_params, v1=FirstFinishV1, v2=FirstFinishV2
        ),
    )

    def __init__(self, vllm_config: VllmConfig, *args: Any, **kwargs: Any) -> None:
        req_states = kwargs.get("req_states", args[0] if len(args) == 1 else None)
        is_v2 = LogitsProcRequestState is not None and isinstance(req_states, LogitsProcRequestState)
        if is_v2 or (req_states is not None and hasattr(req_states, "all_token_ids")):
            self.runner = "v2"
            self._impl: _V1Adapter | _V2Adapter = _V2Adapter(
                vllm_config, req_states, self.components, self._external_keys()
            )
            self._extra = [
                rc.v2(vllm_config, req_states) for rc in self.runner_components if rc.v2 is not None
            ]
        else:
            device = kwargs.get("device", args[0] if args else torch.device("cpu"))
            is_pin_memory = kwargs.get("is_pin_memory", args[1] if len(args) > 1 else False)
            self.runner = "v1"
            self._impl = _V1Adapter(
                vllm_config, device, is_pin_memory, self.components, self._external_keys()
            )
            self._extra = [
                rc.v1(vllm_config, device, is_pin_memory)
                for rc in self.runner_components
                if rc.v1 is not None
            ]

    @classmethod
    def _external_keys(cls) -> tuple[str, ...]:
        return tuple(key for rc in cls.runner_components for key in rc.keys)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject invalid `tts_*` keys at admission (vLLM turns the error into HTTP 400 naming the key)."""
        try:
            validate_request(sampling_params, cls.components, cls._external_keys())
        except ThinkingConfigError as exc:
            raise _validation_error(exc) from exc
        for rc in cls.runner_components:
            rc.validate(sampling_params)

    # V1 interface
    def is_argmax_invariant(self) -> bool:
        """False: forcing a token or excluding the end token changes greedy results."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self._impl.update_state(batch_update)  # type: ignore[union-attr]
        for extra in self._extra:
            extra.update_state(batch_update)

    # V2 interface
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        touched = self._impl.add_request(req_idx, sampling_params)  # type: ignore[union-attr]
        for extra in self._extra:
            touched |= bool(extra.add_request(req_idx, sampling_params))
        return touched

    def apply_staged_writes(self) -> None:
        self._impl.apply_staged_writes()  # type: ignore[union-attr]
        for extra in self._extra:
            extra.apply_staged_writes()

    # both
    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if ctx is None:
            logits = self._impl.apply(logits)  # type: ignore[call-arg]
            for extra in self._extra:
                logits = extra.apply(logits)
            return logits
        logits = self._impl.apply(logits, ctx)  # type: ignore[call-arg]
        for extra in self._extra:
            logits = extra.apply(logits, ctx)
        return logits
