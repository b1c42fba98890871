"""ttsplugin on vLLM's OpenAI-compatible server: `--middleware vllm_ttsplugin.serving.TTSMiddleware`.

vLLM's supported way to change what its HTTP API accepts and returns is an ASGI middleware named on the command
line (``--middleware``, added with ``app.add_middleware``; vLLM 0.32 `init_entrypoints_middleware`). The logits
processor cannot do this part: it runs in the engine core and sees neither HTTP requests nor responses. For
``POST /v1/completions`` and ``/v1/chat/completions`` this middleware

- opens one First Finish *admission scope* per HTTP request (`vllm_ttsplugin.ffs.first_finish_scope`): a
  ``tts_group`` ties the prompts of that request and nothing else, so no client can join or stop another
  client's race;
- validates the ``tts_*`` keys of ``vllm_xargs`` before the request reaches vLLM, with the server's tokenizer,
  and answers HTTP 400 naming the parameter. vLLM itself validates a request's params only when its result
  generator is first advanced, which for ``"stream": true`` is after the 200 and the first bytes are sent (an
  error event in the stream, and a traceback in the server log);
- makes results readable by a plain OpenAI client (no vLLM-specific field needed), for requests with ``tts_*``
  keys: each choice gets a ``tts`` object with its thinking report (`vllm_ttsplugin.report.ThinkingReport` as
  JSON) and, with First Finish, ``first_finish`` (``"winner"``, ``"stopped"`` or ``"unfinished"``) and the
  winners' ``rank`` (finishing order); with a ``tts_confidence_threshold``, ``confidence`` (``"stopped"`` or
  ``"kept"``); samples FFS or the confidence rule stopped get ``finish_reason="abort"`` instead of ``"stop"``;
  and in a non-streamed response the winners come first, in finishing order (``choices[0]`` is the first
  finisher; each choice keeps its ``index``). To compute reports it asks vLLM for token ids and removes them
  again when the client did not ask for them (``return_token_ids``);
- under data parallelism, sends each First Finish request to one engine core (round robin over the engines the
  server balances, via vLLM's ``X-data-parallel-rank`` header, unless the client set it): vLLM would otherwise
  spread the n samples of a request over the engines, where a race cannot see its siblings (admission refuses
  such a request; see `vllm_ttsplugin.ffs`).

Requests without ``tts_*`` keys pass through untouched (their bodies are not even parsed twice: only read).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vllm_ttsplugin.confidence import THRESHOLD_KEY
from vllm_ttsplugin.config import KEY_PREFIX, ThinkingConfig
from vllm_ttsplugin.ffs import (
    FFS_MARKER_TEXT,
    FIRST_FINISH_KEY,
    FIRST_FINISH_STATUS,
    GROUP_KEY,
    find_marker_token,
    first_finish_scope,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Route -> (request model, serving handler attribute on app.state) of vLLM 0.32.
ROUTES = {
    "/v1/completions": (
        "vllm.entrypoints.openai.completion.protocol:CompletionRequest",
        "openai_serving_completion",
    ),
    "/v1/chat/completions": (
        "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest",
        "openai_serving_chat",
    ),
}
# Finish reason of the samples First Finish stopped (vLLM's own word for a request ended from outside; the
# engine-level `vllm_ttsplugin.first_finish` reports its aborted losers the same way).
STOPPED_FINISH_REASON = "abort"
CONFIDENCE_STATUS = (
    "confidence"  # key of a choice's `tts` report: "stopped" by the confidence rule, or "kept"
)
# vLLM's header naming the data-parallel engine of a request (a router may set it).
DP_RANK_HEADER = b"x-data-parallel-rank"

__all__ = ["STOPPED_FINISH_REASON", "TTSMiddleware"]


class TTSMiddleware:
    """Pure ASGI middleware: ``--middleware vllm_ttsplugin.serving.TTSMiddleware`` (see the module docstring)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        self._next_engine = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in ROUTES:
            await self.app(scope, receive, send)
            return
        with first_finish_scope():  # asyncio tasks vLLM creates for this request inherit it
            await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        payload = _json_or_none(body)
        xargs = payload.get("vllm_xargs") if isinstance(payload, dict) else None
        if not isinstance(xargs, dict) or not any(
            isinstance(k, str) and k.startswith(KEY_PREFIX) for k in xargs
        ):
            await self.app(scope, _replay(body, receive), send)
            return
        state = scope["app"].state
        if not _authorized(scope, state):  # vLLM's authentication (inside us) answers 401; we add nothing
            await self.app(scope, _replay(body, receive), send)
            return
        request, error = _validate(scope["path"], payload, state)
        if error is not None:
            await _send_json(send, error.error.code, error.model_dump())
            return
        if request is None:  # not a request vLLM would accept: let vLLM answer in its own words
            await self.app(scope, _replay(body, receive), send)
            return
        view = _ResponseView(scope["path"], payload, xargs, state)
        payload["return_token_ids"] = True
        body = json.dumps(payload).encode()
        headers = _with_content_length(scope.get("headers", []), len(body))
        if FIRST_FINISH_KEY in xargs or GROUP_KEY in xargs:
            headers = self._with_engine(headers, state)
        scope = dict(scope, headers=headers)
        await self.app(scope, _replay(body, receive), view.wrap(send))

    def _with_engine(self, headers: list[tuple[bytes, bytes]], state: Any) -> list[tuple[bytes, bytes]]:
        """All samples of the request's races in one data-parallel engine (round robin over the engines)."""
        from vllm_ttsplugin.processor import load_balanced_engines

        config = getattr(state, "vllm_config", None)
        engines = load_balanced_engines(getattr(config, "parallel_config", None))
        if engines <= 1 or any(k.lower() == DP_RANK_HEADER for k, _ in headers):
            return headers
        rank, self._next_engine = self._next_engine % engines, self._next_engine + 1
        return [*headers, (DP_RANK_HEADER, str(rank).encode())]


# ----------------------------------------------------------------------------------------------------------------
# Admission before the stream
# ----------------------------------------------------------------------------------------------------------------


def _authorized(scope: Scope, state: Any) -> bool:
    """Whether the request passes the server's ``--api-key`` check (vLLM's own verifier and token list).

    Middleware named with ``--middleware`` wraps vLLM's authentication, so a request reaches this one before it is
    authenticated; only an authenticated request may learn anything from us (e.g. a 400 about its parameters).
    """
    from starlette.datastructures import Headers
    from vllm import envs
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    args = getattr(state, "args", None)
    tokens = [key for key in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if key]
    if not tokens:
        return True
    return AuthenticationMiddleware(None, tokens).verify_token(Headers(scope=scope))


def _validate(path: str, payload: dict, state: Any):
    """(parsed request, None), (None, ErrorResponse) for invalid params, or (None, None) to let vLLM answer."""
    import importlib

    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
    from vllm.exceptions import VLLMClientError

    from vllm_ttsplugin.processor import TTSLogitsProcessor, admission_tokenizer

    model_path, handler_name = ROUTES[path]
    module, name = model_path.split(":")
    try:
        request = getattr(importlib.import_module(module), name).model_validate(payload)
    except Exception:  # malformed body: vLLM's own request validation answers it (HTTP 400)
        return None, None
    handler = getattr(state, handler_name, None)
    defaults = dict(getattr(handler, "default_sampling_params", None) or {})
    engine = state.engine_client
    max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens or 1
    try:
        params = request.to_sampling_params(max_tokens, defaults)
        tokenizer = engine.get_tokenizer()
        if tokenizer is None:
            TTSLogitsProcessor.validate_params(params)
        else:
            with admission_tokenizer(tokenizer, engine.model_config.get_vocab_size()):
                TTSLogitsProcessor.validate_params(params)
    except (VLLMClientError, ValueError, TypeError, OverflowError) as exc:  # what vLLM answers with HTTP 400
        return None, create_error_response(exc)
    return request, None


# ----------------------------------------------------------------------------------------------------------------
# Responses: winners first, losers marked, thinking reports
# ----------------------------------------------------------------------------------------------------------------


class _ResponseView:
    """Rewrites one response (JSON or an SSE stream) of a request with ``tts_*`` keys."""

    def __init__(self, path: str, payload: dict, xargs: dict, state: Any) -> None:
        from vllm_ttsplugin.vocab import vocab_for

        self.chat = path == "/v1/chat/completions"
        self.keep_token_ids = bool(payload.get("return_token_ids"))
        self.n = int(payload.get("n") or 1)
        self.ffs = FIRST_FINISH_KEY in xargs or GROUP_KEY in xargs
        self.confidence = THRESHOLD_KEY in xargs
        engine = state.engine_client
        tokenizer = engine.get_tokenizer()
        vocab_size = engine.model_config.get_vocab_size()
        self.vocab = vocab_for(tokenizer, vocab_size) if tokenizer is not None else None
        self.marker = find_marker_token(tokenizer, vocab_size) if self.ffs or self.confidence else None
        config = ThinkingConfig.from_extra_args(xargs, known_keys=tuple(xargs))
        self.thinking = config if config is not None and config.is_active and self.vocab is not None else None
        # Streaming state: prompt ids per prompt, generated ids per choice, natural finishes per prompt.
        self._prompt_ids: dict[int, list[int]] = {}
        self._token_ids: dict[int, list[int]] = {}
        self._finished: dict[int, int] = {}

    # -- ASGI plumbing -------------------------------------------------------------------------------------------
    def wrap(self, send: Send) -> Send:
        start: Message | None = None
        chunks: list[bytes] = []
        streaming = False
        pending = b""

        async def wrapped(message: Message) -> None:
            nonlocal start, streaming, pending
            if message["type"] == "http.response.start":
                if message.get("status") != 200:
                    start = None
                    await send(message)
                    return
                headers = dict(message.get("headers") or [])
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                if streaming:
                    await send(message)
                else:
                    start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            more = message.get("more_body", False)
            if streaming:
                pending += message.get("body", b"")
                events, _, pending = pending.rpartition(b"\n\n")
                out = b"".join(self._event(e) + b"\n\n" for e in events.split(b"\n\n")) if events else b""
                if not more and pending:
                    out, pending = out + pending, b""
                await send({"type": "http.response.body", "body": out, "more_body": more})
                return
            if start is None:  # an error response: untouched
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if more:
                return
            body = self._json(b"".join(chunks))
            start["headers"] = _with_content_length(start.get("headers") or [], len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return wrapped

    # -- one JSON response -----------------------------------------------------------------------------------------
    def _json(self, body: bytes) -> bytes:
        data = _json_or_none(body)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return body
        prompt_ids = data.get("prompt_token_ids") if self.chat else None
        choices = data["choices"]
        for choice in choices:
            tokens = choice.get("token_ids") or []
            prompt = prompt_ids if self.chat else choice.get("prompt_token_ids")
            report = self._report(choice, tokens, prompt)
            if report:
                choice["tts"] = report
        if self.ffs:
            self._rank(choices)
            choices.sort(key=self._order)
        for choice in choices:
            self._hide_token_ids(choice)
        if not self.keep_token_ids and self.chat:
            data.pop("prompt_token_ids", None)
        return json.dumps(data).encode()

    def _rank(self, choices: list[dict]) -> None:
        winners = [c for c in choices if c.get("tts", {}).get(FIRST_FINISH_STATUS) == "winner"]
        winners.sort(key=lambda c: (self._block(c), len(c.get("token_ids") or []), c.get("index", 0)))
        rank: dict[int, int] = {}
        for c in winners:
            block = self._block(c)
            c["tts"]["rank"] = rank.get(block, 0)
            rank[block] = rank.get(block, 0) + 1

    def _order(self, choice: dict) -> tuple:
        rank = choice.get("tts", {}).get("rank")
        return (self._block(choice), rank is None, rank or 0, choice.get("index", 0))

    def _block(self, choice: dict) -> int:
        return 0 if self.chat else int(choice.get("index", 0)) // self.n

    # -- one SSE event ---------------------------------------------------------------------------------------------
    def _event(self, event: bytes) -> bytes:
        prefix = b"data: "
        if not event.startswith(prefix):
            return event  # a keep-alive comment
        data = _json_or_none(event[len(prefix) :])
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return event
        if self.chat and data.get("prompt_token_ids") is not None:
            self._prompt_ids[0] = list(data["prompt_token_ids"])
        for choice in data["choices"]:
            index = int(choice.get("index", 0))
            if not self.chat and choice.get("prompt_token_ids") is not None:
                self._prompt_ids[self._block(choice)] = list(choice["prompt_token_ids"])
            tokens = self._token_ids.setdefault(index, [])
            tokens.extend(choice.get("token_ids") or ())
            if choice.get("finish_reason") is not None:
                report = self._report(choice, tokens, self._prompt_ids.get(self._block(choice)))
                if report.get(FIRST_FINISH_STATUS) == "winner":
                    block = self._block(choice)
                    report["rank"] = self._finished.get(block, 0)  # order of arrival: the first finish is 0
                    self._finished[block] = report["rank"] + 1
                if report:
                    choice["tts"] = report
            self._hide_token_ids(choice)
        if not self.keep_token_ids and self.chat:
            data.pop("prompt_token_ids", None)
        return prefix + json.dumps(data).encode()

    # -- per choice --------------------------------------------------------------------------------------------------
    def _report(self, choice: dict, tokens: list[int], prompt_ids: list[int] | None) -> dict:
        from vllm_ttsplugin.report import report_tokens

        report: dict[str, Any] = {}
        stopped = (
            (self.ffs or self.confidence)
            and self.marker is not None
            and choice.get("finish_reason") == "stop"
            and choice.get("stop_reason") == self.marker
        )
        if self.ffs:
            if stopped:
                report[FIRST_FINISH_STATUS] = "stopped"
                choice["finish_reason"] = STOPPED_FINISH_REASON
                _strip_marker(choice)  # only there with include_stop_str_in_output
            elif choice.get("finish_reason") == "stop":
                report[FIRST_FINISH_STATUS] = "winner"
            else:
                report[FIRST_FINISH_STATUS] = "unfinished"
        if self.confidence:
            # The marker ends samples of either stop; with both controls on, First Finish's report says which
            # samples won, and this one that the sample was stopped early.
            report[CONFIDENCE_STATUS] = "stopped" if stopped else "kept"
            if stopped:
                choice["finish_reason"] = STOPPED_FINISH_REASON
                _strip_marker(choice)
        if self.thinking is not None:
            generated = tokens[:-1] if stopped and tokens and tokens[-1] == self.marker else tokens
            thinking = report_tokens(generated, prompt_ids, self.thinking, self.vocab)
            report["thinking"] = dataclasses.asdict(thinking)
        return report

    def _hide_token_ids(self, choice: dict) -> None:
        if not self.keep_token_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)


def _strip_marker(choice: dict) -> None:
    """Drop the marker character ending a stopped sample's text (completions, chat message or stream delta)."""
    for holder, key in (
        (choice, "text"),
        (choice.get("message"), "content"),
        (choice.get("delta"), "content"),
    ):
        if (
            isinstance(holder, dict)
            and isinstance(holder.get(key), str)
            and holder[key].endswith(FFS_MARKER_TEXT)
        ):
            holder[key] = holder[key][: -len(FFS_MARKER_TEXT)]


# ----------------------------------------------------------------------------------------------------------------
# ASGI helpers
# ----------------------------------------------------------------------------------------------------------------


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the client's disconnect, as Starlette expects

    return replay


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _with_content_length(headers, length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]


async def _send_json(send: Send, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": int(status),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
