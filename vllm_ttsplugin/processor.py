"""`TTSLogitsProcessor`: one class that plugs ttsplugin's controls into vLLM, under both model runners.

vLLM has two logits-processor interfaces that share the `--logits-processors` option and the
`vllm.logits_processors` entry-point group, and each runner refuses a class of the other interface:

- V1 runner (`vllm.v1.sample.logits_processor.LogitsProcessor`): `__init__(vllm_config, device,
  is_pin_memory)`, `update_state(BatchUpdate | None)`, `apply(logits)`; the persistent batch index is the row.
- V2 runner (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`, default on GPUs from vLLM 0.31):
  `__init__(vllm_config, req_states)`, `add_request(slot, params)`, `apply_staged_writes()`,
  `apply(logits, ctx)`; per-slot state lives on the device and token history is read from `req_states`.

`TTSLogitsProcessor` subclasses both, so the one name `vllm_ttsplugin:TTSLogitsProcessor` passes either runner's
loader; its constructor picks the adapter from the arguments it receives. Installing ttsplugin registers it in
`vllm.logits_processors`, so every engine of the environment loads it (both runners accept it); requests without
`tts_*` keys are untouched. An engine that gets it twice (the entry point and `--logits-processors`) builds two
instances from the same config: the first one serves, the second is inert.

Where it runs in the sampling order. V1 runner: after the allowed-token mask, bad words, min-tokens and logit
bias, before penalties, vLLM's own thinking-budget forcing, temperature, min-p and top-k/top-p. V2 runner: after
logit bias (which also applies min-tokens), penalties and bad words, before vLLM's thinking-budget forcing,
temperature, min-p and top-k/top-p; so under V2 the processor sees penalised logits, under V1 it does not. It is
not argmax-invariant (it forces tokens), so vLLM also runs it for greedy requests. With speculative decoding the
V1 runner loads no custom processor; under the V2 runner the instance is inert and requests with `tts_*` keys
are rejected at admission.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from vllm_ttsplugin.arrays import to_device
from vllm_ttsplugin.components import COMPONENTS, SlotComponent, SlotEnv
from vllm_ttsplugin.config import KEY_PREFIX, TTSParamsError
from vllm_ttsplugin.vocab import TokenizerVocab, reasoning_delimiters, vocab_for

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
    "ttsplugin's tts_* controls do not support speculative decoding (nor does any custom logits processor)"
)


# -- the engine as seen at admission ----------------------------------------------------------------------------
# `validate_params` is a classmethod that vLLM calls with the request's SamplingParams only. Where it runs (read
# in vLLM 0.32's source): `InputProcessor._validate_params` -> the validator built by
# `InputProcessor._build_logits_processors_params_validator` (V1: `validate_logits_processors_parameters`, V2:
# `build_custom_logits_processors_params_validator`) -> `validate_params`. The InputProcessor lives in the
# *frontend* process: the `LLM`/`LLMEngine` process offline, the API-server process with the OpenAI server, and
# `AsyncLLM`'s process, in-process or multiprocess alike; the engine core (another process unless
# VLLM_ENABLE_V1_MULTIPROCESSING=0) never calls it. vLLM's "current config" (`get_current_vllm_config`) is only
# set inside the workers during model initialisation, not in the frontend at admission. So the frontend's own
# InputProcessor is the reliable source of the model's tokenizer and engine settings: we find it on the call stack
# (a few frames up) and use its `tokenizer`, `model_config.get_vocab_size()` and `vllm_config` (reasoning
# configuration, speculative decoding); the resolved facts are cached per tokenizer object. Fallback: the current
# vLLM config when one is set (inside vLLM's workers). Elsewhere (an unknown caller) only the tokenizer-free
# checks run at admission; the engine resolves the request again and, if that fails, leaves it uncontrolled with a
# warning rather than failing the step.
_NOT_FOUND = object()


@dataclass(frozen=True)
class AdmissionContext:
    """The frontend engine a request is admitted to.

    `engines` is how many data-parallel engine cores the frontend's client spreads requests over (and the n samples
    of one request: vLLM 0.32's load-balancing client routes each sample on its own); 1 without data parallelism,
    and with one engine per frontend (external load balancing, offline per-rank `LLM`s). `data_parallel_rank` is the
    engine the request was sent to explicitly (`X-data-parallel-rank`, `AsyncLLM.generate(data_parallel_rank=)`):
    all its samples then run there.
    """

    vocab: TokenizerVocab | None | object  # `_NOT_FOUND`: not an admission path we know
    speculative: bool = False
    engines: int = 1
    data_parallel_rank: int | None = None


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


def admission_context(max_depth: int = 12) -> AdmissionContext:
    """The model's tokenizer facts and engine settings for a request being admitted."""
    override = _ADMISSION_VOCAB.get()
    if override is not None:
        return AdmissionContext(override)
    cls = _input_processor_class()
    if cls is not None:
        frame = sys._getframe(1)
        for _ in range(max_depth):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, cls):
                vllm_config = getattr(owner, "vllm_config", None)
                speculative = getattr(owner, "speculative_config", None) is not None
                routing = _data_parallel_routing(vllm_config, owner, frame)
                tokenizer = owner.tokenizer
                if tokenizer is None:
                    return AdmissionContext(None, speculative, *routing)
                vocab = vocab_for(
                    tokenizer, owner.model_config.get_vocab_size(), reasoning_delimiters(vllm_config)
                )
                return AdmissionContext(vocab, speculative, *routing)
            frame = frame.f_back
    try:
        from vllm.config import get_current_vllm_config_or_none

        config = get_current_vllm_config_or_none()
    except ImportError:  # pragma: no cover
        config = None
    if config is not None and getattr(config, "model_config", None) is not None:
        return AdmissionContext(_engine_vocab(config), config.speculative_config is not None)
    return AdmissionContext(_NOT_FOUND)


def load_balanced_engines(parallel_config: Any) -> int:
    """Data-parallel engine cores one frontend load-balances over (vLLM 0.32: `DPLBAsyncMPClient` routes each
    request, and each of the n samples of a request, to the least loaded of them); 1 when it talks to one engine."""
    size = int(getattr(parallel_config, "data_parallel_size", 1) or 1)
    if size <= 1 or getattr(parallel_config, "data_parallel_external_lb", False):
        return 1
    if getattr(parallel_config, "data_parallel_rank_local", None) is not None:  # offline: one LLM per rank
        return 1
    if getattr(parallel_config, "local_engines_only", False):
        return int(getattr(parallel_config, "data_parallel_size_local", size) or size)
    return size


def _data_parallel_routing(vllm_config: Any, owner: Any, frame: Any) -> tuple[int, int | None]:
    """(engines, explicit rank) for the request being admitted: the rank is `process_inputs`' own argument, a few
    frames up from the validator (vLLM passes it nowhere else before routing)."""
    engines = load_balanced_engines(getattr(vllm_config, "parallel_config", None))
    if engines == 1:
        return 1, None
    for _ in range(4):
        if frame is None:
            break
        if frame.f_code.co_name.startswith("process_inputs") and frame.f_locals.get("self") is owner:
            rank = frame.f_locals.get("data_parallel_rank")
            return engines, rank if isinstance(rank, int) else None
        frame = frame.f_back
    return engines, None


def admission_vocab(max_depth: int = 12) -> TokenizerVocab | None | object:
    """The model's tokenizer facts for a request being admitted (`None`: no tokenizer; `_NOT_FOUND`: unknown)."""
    return admission_context(max_depth + 1).vocab


def _engine_vocab(vllm_config: VllmConfig) -> TokenizerVocab | None:
    """The engine-side tokenizer facts (loaded through vLLM's own cache of tokenizers)."""
    model_config = vllm_config.model_config
    if getattr(model_config, "skip_tokenizer_init", False):
        return None
    try:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(model_config)
    except Exception as exc:  # a tokenizer-less engine must still start
        logger.warning("ttsplugin: could not load the tokenizer (%s); thinking control is disabled", exc)
        return None
    if tokenizer is None:
        return None
    return vocab_for(tokenizer, model_config.get_vocab_size(), reasoning_delimiters(vllm_config))


def _all_keys(components: Sequence[type[SlotComponent]]) -> set[str]:
    return {key for comp in components for key in comp.keys}


def validate_request(params: SamplingParams, components: Sequence[type[SlotComponent]] = COMPONENTS) -> None:
    """Admission check of a request's `tts_*` keys; raises `TTSParamsError` naming the parameter."""
    extra = getattr(params, "extra_args", None)
    if not extra or not any(isinstance(k, str) and k.startswith(KEY_PREFIX) for k in extra):
        return
    context = admission_context()
    vocab = context.vocab if isinstance(context.vocab, TokenizerVocab) else None
    all_keys = _all_keys(components)
    handled = [comp for comp in components if comp.validate(params, vocab, tuple(all_keys - set(comp.keys)))]
    if handled and context.speculative:
        key = next(k for k in extra if any(k in comp.keys for comp in handled))
        raise TTSParamsError(STR_SPEC_DECODE, parameter=key)
    if any(comp.needs_tokenizer for comp in handled) and context.vocab is None:
        raise TTSParamsError(
            "ttsplugin's tts_* controls need the model's tokenizer, and this engine runs without one "
            "(skip_tokenizer_init)",
            parameter="extra_args",
        )


def _validation_error(exc: TTSParamsError) -> Exception:
    """vLLM's request-error class, which it passes through unchanged (HTTP 400 with `error.param`)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # pragma: no cover
        return exc
    value = (
        exc.value if isinstance(exc.value, str | int | float | bool) or exc.value is None else repr(exc.value)
    )
    return VLLMValidationError(str(exc), parameter=exc.parameter, value=value)


def _slot_env(vllm_config: VllmConfig, num_slots: int, device: torch.device, pin_memory: bool) -> SlotEnv:
    model_config = getattr(vllm_config, "model_config", None)
    vocab_size = model_config.get_vocab_size() if model_config is not None else None
    return SlotEnv(
        num_slots=num_slots,
        device=device,
        vocab=_engine_vocab(vllm_config) if model_config is not None else None,
        seed=getattr(model_config, "seed", 0) or 0,
        pin_memory=pin_memory and device.type != "cpu",
        max_model_len=getattr(model_config, "max_model_len", None),
        vocab_size=vocab_size,
    )


def _parse(components: list[SlotComponent], all_keys: set[str], params: Any) -> list[object | None]:
    return [comp.parse_engine(params, tuple(all_keys.difference(comp.keys))) for comp in components]


def _admit(components: list[SlotComponent], entries: list[tuple[int, list[object | None], Any]]) -> None:
    """Admit `(slot, parsed requests, prompt)` entries, each component the requests that are its own."""
    for k, comp in enumerate(components):
        chosen = [(slot, reqs[k], prompt) for slot, reqs, prompt in entries if reqs[k] is not None]
        if chosen:
            comp.admit([c[0] for c in chosen], [c[1] for c in chosen], [c[2] for c in chosen])


# -- V1 runner ------------------------------------------------------------------------------------------------
class _V1Adapter:
    """Persistent-batch bookkeeping for the V1 runner: the batch index is the slot and the logits row.

    Tokens arrive as the live `output_tok_ids` lists vLLM hands over at admission; they are read in `apply`
    (under async scheduling vLLM repairs their placeholders just before sampling, after `update_state`). Before a
    request leaves its slot, its tokens not yet observed (the one that finished it) are observed. An index
    overwritten by an add or a move means its previous occupant left. A removed request's state is stashed by the
    identity of its output list, so a preempted (or temporarily unscheduled) request resumes exactly; without a
    stash entry, its tokens are replayed.
    """

    def __init__(
        self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool, components
    ) -> None:
        self.num_slots = int(vllm_config.scheduler_config.max_num_seqs)
        self.device = torch.device(device)
        self.env = _slot_env(vllm_config, self.num_slots, self.device, bool(is_pin_memory))
        self.components: list[SlotComponent] = [c(self.env) for c in components]
        self._all_keys = _all_keys(components)
        self.lists: list[list[int] | None] = [None] * self.num_slots
        self.prompts: list[Any] = [None] * self.num_slots
        self.requests: list[list[object | None] | None] = [None] * self.num_slots
        self.observed = np.zeros(self.num_slots, dtype=np.int64)
        self.handled = np.zeros(self.num_slots, dtype=bool)
        # [num_slots] admitted without its state while holding output (a resumed request): decisions for its
        # tokens were never recorded here, so they are replayed with inference, however few they are.
        self.replay = np.zeros(self.num_slots, dtype=bool)
        self._slots_np: np.ndarray | None = None  # handled slots (host), rebuilt when membership changes
        self._slots_list: list[int] = []
        # id(output list) -> (list, observed, snapshots, parsed requests, prompt): preempted/unscheduled requests.
        self._stash: OrderedDict[int, tuple] = OrderedDict()

    # membership
    def _leave(self, slot: int, stash: bool) -> None:
        if not self.handled[slot]:
            return
        out = self.lists[slot]
        self._observe_pending(np.array([slot]))
        if stash and out is not None:
            snaps = [comp.snapshot(slot) for comp in self.components]
            self._stash[id(out)] = (
                out,
                int(self.observed[slot]),
                snaps,
                self.requests[slot],
                self.prompts[slot],
            )
            while len(self._stash) > 2 * self.num_slots:
                self._stash.popitem(last=False)
        for comp in self.components:
            comp.release([slot], [out])
        self.handled[slot] = False
        self.replay[slot] = False
        self.lists[slot] = None
        self.prompts[slot] = None
        self.requests[slot] = None
        self._slots_np = None

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self._leave(slot, stash=True)
        admit: list[tuple[int, list[object | None], Any]] = []
        # Every overwritten slot's occupant leaves first: a request moved by one update from one index to another
        # (removed at one, re-added at another) finds its stash entry.
        for slot, *_ in batch_update.added:
            self._leave(slot, stash=True)
        for slot, params, prompt_ids, output_ids in batch_update.added:
            stashed = self._stash.pop(id(output_ids), None)
            if stashed is not None and stashed[0] is output_ids and len(output_ids) >= stashed[1]:
                _, observed, snaps, requests, prompt = stashed
                for comp, snap in zip(self.components, snaps, strict=True):
                    if snap is not None:
                        comp.restore(slot, snap)
                self._occupy(slot, output_ids, prompt, requests, observed)
                continue
            requests = _parse(self.components, self._all_keys, params)
            if any(r is not None for r in requests):
                prompt = list(prompt_ids) if prompt_ids is not None else None
                admit.append((slot, requests, prompt))
                self._occupy(slot, output_ids, prompt, requests, 0)
                self.replay[slot] = len(output_ids) > 0
        _admit(self.components, admit)
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

    def _move(self, moved) -> None:
        # held[i]: the slot whose request index i holds after the moves so far (-1: empty).
        held = np.arange(self.num_slots)
        for a, b, direction in moved:
            if direction == MoveDirectionality.SWAP:
                held[a], held[b] = held[b], held[a]
            else:
                if held[b] >= 0 and held[b] != held[a] and self.handled[held[b]]:
                    self._leave(int(held[b]), stash=True)  # a condensing move overwrote a request
                held[b], held[a] = held[a], -1
        for comp in self.components:
            comp.permute(held)
        empty = held < 0
        src = np.where(empty, np.arange(self.num_slots), held)
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
        lengths = np.array([len(lists[s]) for s in slots_list], dtype=np.int64)
        new = lengths - self.observed[slots_np]
        stale = (new < 0) | (new > 1) | (self.replay[slots_np] & (new > 0))
        if stale.any():
            self._observe_pending(slots_np[stale])
            new = lengths - self.observed[slots_np]
        tokens = [lists[s][-1] if n == 1 else -1 for s, n in zip(slots_list, new.tolist(), strict=True)]
        # One host->device copy per step (pinned, non-blocking): slots, tokens, output lengths.
        packed = to_device(
            np.array([slots_list, tokens, lengths], dtype=np.int64), self.device, self.env.pin_memory
        )
        slots, token_t, out_len = packed[0], packed[1], packed[2]
        valid = token_t >= 0
        for comp in self.components:
            comp.observe(slots, token_t, out_len - 1, valid)
        self.observed[slots_np] = lengths
        for comp in self.components:
            comp.inspect(logits, slots, slots_np, out_len, slots)
        for comp in self.components:
            logits = comp.apply(logits, slots, slots_np, out_len, slots)
        return logits

    def _observe_pending(self, slots_np: np.ndarray) -> None:
        """Observe the tokens of these slots not yet seen (a request leaving, or re-added with output), or
        restart a slot whose output shrank (vLLM dropped tokens, e.g. a failed KV load)."""
        for slot in slots_np.tolist():
            if len(self.lists[slot]) < self.observed[slot]:
                requests, prompt = self.requests[slot], self.prompts[slot]
                for comp in self.components:
                    comp.release([slot], None)
                _admit(self.components, [(slot, requests, prompt)])
                self.observed[slot] = 0
                self.replay[slot] = True
        behind = []
        for slot in slots_np.tolist():
            tokens = self.lists[slot]
            end = int(self.observed[slot])
            while end < len(tokens) and tokens[end] >= 0:  # async scheduling's placeholders are -1
                end += 1
            if end > self.observed[slot]:
                behind.append((slot, int(self.observed[slot]), end))
        # One pending token: this processor recorded its decision. More, or any token of a request admitted
        # without its state: they are replayed, decisions inferred.
        for infer in (False, True):
            group = [(s, o, e) for s, o, e in behind if (e - o > 1 or self.replay[s]) == infer]
            for k in range(max((e - o for _, o, e in group), default=0)):
                batch = [(s, self.lists[s][o + k], o + k) for s, o, e in group if o + k < e]
                arr = to_device(np.array(batch, dtype=np.int64).T, self.device, self.env.pin_memory)
                for comp in self.components:
                    comp.observe(arr[0], arr[1], arr[2], None, infer_injections=infer)
        for s, _, end in behind:
            self.observed[s] = end
            self.replay[s] = False


# -- V2 runner ------------------------------------------------------------------------------------------------
class _V2Adapter:
    """Slot bookkeeping for the V2 runner: state on the device per slot, no host-device sync per step.

    Tokens are read on the device from `req_states.all_token_ids` at `total_len - 1`; a slot's tokens not yet
    observed are counted by an on-device `observed` length. Every handled slot is observed each step, not only
    the batch's rows, so a request's last token is seen after it left the batch (a finish counts for First
    Finish), and again right before its slot is reused. `add_request` only stages (host) work;
    `apply_staged_writes` admits the staged requests and scans their prompts on the device. A request resumed
    after preemption is re-added with its partial output in `prefill_len`, which is replayed there.
    """

    def __init__(self, vllm_config: VllmConfig, req_states: Any, components) -> None:
        self.req_states = req_states
        self.num_slots = int(req_states.max_num_reqs)
        self.device = torch.device(req_states.device)
        self.env = _slot_env(vllm_config, self.num_slots, self.device, torch.cuda.is_available())
        self.components: list[SlotComponent] = [c(self.env) for c in components]
        self._all_keys = _all_keys(components)
        self.handled = np.zeros(self.num_slots, dtype=bool)
        # [num_slots] number of generated tokens the components have observed.
        self.observed = torch.zeros(self.num_slots, dtype=torch.long, device=self.device)
        self._staged: list[tuple[int, list[object | None]]] = []
        self._handled_slots: torch.Tensor | None = None  # device index of handled slots, rebuilt on change

    def _to_device(self, values) -> torch.Tensor:
        return to_device(values, self.device, self.env.pin_memory)

    def _observe(self, slots: torch.Tensor) -> None:
        """Observe the newest committed token of each slot, where it has one not yet observed."""
        rs = self.req_states
        total = rs.total_len.gpu[slots].long()
        out_len = total - rs.prompt_len.gpu[slots].long()
        observed = self.observed[slots]
        new = out_len > observed
        tokens = rs.all_token_ids.gpu[slots, (total - 1).clamp(min=0)].long()
        for comp in self.components:
            comp.observe(slots, tokens, out_len - 1, new)
        self.observed[slots] = torch.where(new, out_len, observed)

    def add_request(self, slot: int, params: SamplingParams) -> bool:
        if self.handled[slot]:
            # The slot's previous occupant left: observe its last token before the runner's staged writes (flushed
            # after every add_request of this step) overwrite it, then release it.
            self._observe(self._to_device(np.array([slot], dtype=np.int64)))
            for comp in self.components:
                if comp.active_np[slot]:
                    comp.release([slot], None)
            self.handled[slot] = False
            self._handled_slots = None
        requests = _parse(self.components, self._all_keys, params)
        handled = any(r is not None for r in requests)
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
        _admit(
            self.components,
            [(slot, reqs, all_tokens[slot, : int(prompt_len[slot])]) for slot, reqs in staged],
        )
        self.handled[slots] = True
        self._handled_slots = None
        # Output already present at (re)admission: a request resumed after preemption.
        slots_np = np.asarray(slots, dtype=np.int64)
        n_out = prefill_len[slots_np].astype(np.int64) - prompt_len[slots_np].astype(np.int64)
        self.observed[self._to_device(slots_np)] = self._to_device(n_out)
        for k in range(int(n_out.max(initial=0))):
            pick = slots_np[n_out > k]
            sel = self._to_device(pick)
            tokens = all_tokens[sel, self._to_device(prompt_len[pick].astype(np.int64) + k)].long()
            for comp in self.components:
                comp.observe(sel, tokens, torch.full_like(tokens, k), None, infer_injections=True)

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        idx_np = ctx.idx_mapping_np
        if not self.handled[idx_np].any():
            return logits
        if self._handled_slots is None:
            self._handled_slots = self._to_device(np.flatnonzero(self.handled))
        self._observe(self._handled_slots)
        rs = self.req_states
        slots = ctx.expanded_idx_mapping.long()
        out_len = rs.total_len.gpu[slots].long() - rs.prompt_len.gpu[slots].long()
        for comp in self.components:
            comp.inspect(logits, slots, idx_np, out_len, None)
        for comp in self.components:
            logits = comp.apply(logits, slots, idx_np, out_len, None)
        return logits


# -- the public class -----------------------------------------------------------------------------------------
# (id(vllm_config), runner) -> the instance serving that engine. The instance holds its config, so the id
# cannot be reused while the entry is alive.
_SERVING: dict[tuple[int, str], weakref.ref] = {}


class TTSLogitsProcessor(V1LogitsProcessor, V2LogitsProcessor):
    """ttsplugin's controls for vLLM, per request through `SamplingParams.extra_args` / `vllm_xargs`.

    Installed with ttsplugin, it is registered in vLLM's `vllm.logits_processors` entry-point group, so every
    engine loads it with no flag; passing it explicitly too (`LLM(..., logits_processors=[TTSLogitsProcessor])`,
    `--logits-processors vllm_ttsplugin:TTSLogitsProcessor`) is harmless (the second instance is inert).
    Requests without `tts_*` keys are untouched (their logits rows are not modified). The keys are documented in
    `vllm_ttsplugin.config.ThinkingConfig` and `vllm_ttsplugin.ffs`; invalid values are rejected at admission
    (HTTP 400 naming the parameter).

    The same class implements vLLM's V1-runner and V2-runner interfaces; vLLM constructs it with the arguments of
    the runner in use and it dispatches to the matching adapter.
    """

    # Controls in application order (a later one wins on a row both touch); First Finish Search runs last: its
    # stop wins over every thinking control.
    components: tuple[type[SlotComponent], ...] = tuple(COMPONENTS)

    def __init__(self, vllm_config: VllmConfig, *args: Any, **kwargs: Any) -> None:
        req_states = kwargs.get("req_states", args[0] if len(args) == 1 else None)
        is_v2 = LogitsProcRequestState is not None and isinstance(req_states, LogitsProcRequestState)
        self.runner = (
            "v2" if is_v2 or (req_states is not None and hasattr(req_states, "all_token_ids")) else "v1"
        )
        self._vllm_config = vllm_config
        self._impl: _V1Adapter | _V2Adapter | None = None
        key = (id(vllm_config), self.runner)
        serving = _SERVING.get(key)
        serving = serving() if serving is not None else None
        if serving is not None and serving._vllm_config is vllm_config:
            logger.debug("ttsplugin: TTSLogitsProcessor loaded twice in one engine; this instance is inert")
            return
        if getattr(vllm_config, "speculative_config", None) is not None:
            logger.info("ttsplugin: speculative decoding is enabled; TTSLogitsProcessor is inert")
            return
        _SERVING[key] = weakref.ref(self)
        if self.runner == "v2":
            self._impl = _V2Adapter(vllm_config, req_states, self.components)
        else:
            device = kwargs.get("device", args[0] if args else torch.device("cpu"))
            is_pin_memory = kwargs.get("is_pin_memory", args[1] if len(args) > 1 else False)
            self._impl = _V1Adapter(vllm_config, device, is_pin_memory, self.components)

    @property
    def is_serving(self) -> bool:
        """False for an inert instance (a duplicate in its engine, or speculative decoding)."""
        return self._impl is not None

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject invalid `tts_*` keys at admission (vLLM turns the error into HTTP 400 naming the key)."""
        try:
            validate_request(sampling_params, cls.components)
        except TTSParamsError as exc:
            raise _validation_error(exc) from exc

    # V1 interface
    def is_argmax_invariant(self) -> bool:
        """False: forcing a token or excluding the end token changes greedy results."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self._impl is not None:
            self._impl.update_state(batch_update)  # type: ignore[union-attr]

    # V2 interface
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return self._impl is not None and self._impl.add_request(req_idx, sampling_params)  # type: ignore[union-attr]

    def apply_staged_writes(self) -> None:
        if self._impl is not None:
            self._impl.apply_staged_writes()  # type: ignore[union-attr]

    # both
    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if self._impl is None:
            return logits
        if ctx is None:
            return self._impl.apply(logits)  # type: ignore[call-arg]
        return self._impl.apply(logits, ctx)  # type: ignore[call-arg]
