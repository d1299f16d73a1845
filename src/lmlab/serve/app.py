"""The HTTP face of the engine: OpenAI's `/v1/chat/completions`, `/v1/completions` and `/v1/models`, `/health`, and
the chat page at `/`.

Handlers turn a request into token ids and a `Job` (all refusals happen here, before the model sees anything), then
relay the job's events as one JSON answer or as server-sent events ending with `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

import lmlab.serve.protocol as wire
from lmlab.data.conversations import Message
from lmlab.errors import LmlabError
from lmlab.generation.chat import ending_turns, prompt_ids
from lmlab.generation.processors import build_processors
from lmlab.generation.sampling import SamplingOptions
from lmlab.generation.text import GenerationConfig, encode_prompt
from lmlab.serve.engine import Engine, Event, Finish, Job, QueueFull
from lmlab.tokenizers.templates import has_chat_template

T = TypeVar("T", bound=BaseModel)


@dataclass
class ServeSettings:
    """What the server promises its clients."""

    model_name: str
    """The id `/v1/models` lists; requests naming another model get 404."""
    context: int
    """Tokens a prompt may take (a reply may run past them: the model then sees its last `block_size` tokens)."""
    max_tokens: int = 256
    """The reply budget of a request that gives no `max_tokens`."""
    max_tokens_limit: int = 4096
    """The largest `max_tokens` a request may ask for (a bound on one request's work)."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413 before they are read whole."""
    api_key: str | None = None
    """When set, `/v1/*` needs `Authorization: Bearer <api_key>`."""
    system: str | None = None
    """System prompt put before a conversation that has none."""


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """The FastAPI app; the engine's worker runs while the app does (its lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="lmlab serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.settings = engine, settings  # (for tests and tools)
    _add_error_handlers(app)
    api = _Api(engine, settings)
    app.add_api_route("/", api.page, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/health", api.health, methods=["GET"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", api.model, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal in OpenAI's `{"error": {...}}` shape."""

    async def api_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, wire.ApiError)
        return JSONResponse(err.body(), status_code=err.status)

    async def http_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, HTTPException)
        return JSONResponse(
            wire.ApiError(err.status_code, str(err.detail), code=str(err.status_code)).body(),
            status_code=err.status_code,
        )

    async def bug(_: Request, err: Exception) -> Response:  # logged with its traceback by uvicorn; the client gets JSON
        message = f"the server failed on this request ({type(err).__name__}); see the server's log"
        return JSONResponse(wire.ApiError(500, message, type_="server_error").body(), status_code=500)

    app.add_exception_handler(wire.ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, bug)


class _Api:
    """The route handlers, sharing the engine and settings."""

    def __init__(self, engine: Engine, settings: ServeSettings) -> None:
        self.engine, self.settings = engine, settings
        self.chat_ok = has_chat_template(engine.tokenizer) or _has_role_tokens(engine.tokenizer)

    async def page(self) -> HTMLResponse:
        return HTMLResponse(files("lmlab.serve").joinpath("chat.html").read_text(encoding="utf-8"))

    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.settings.model_name,
            "chat": self.chat_ok,
            "queued": self.engine.queued,
            "batches": self.engine.batches,
            "largest_batch": self.engine.largest_batch,
            "auth": self.settings.api_key is not None,
        }

    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._check_model(model_id)
        return self._model_card()

    async def chat(self, request: Request) -> Response:
        self._authorize(request)
        req = _parse(wire.ChatRequest, await _read_json(request, self.settings.max_body_bytes))
        self._check_model(req.model)
        messages = [Message("system" if m.role == "developer" else m.role, m.text) for m in req.messages]
        if self.settings.system and not any(m.role == "system" for m in messages):
            messages.insert(0, Message("system", self.settings.system))
        if not self.chat_ok:
            raise wire.ApiError(
                400,
                f"model {self.settings.model_name} has no chat template; use /v1/completions, "
                "or serve a chat model (task=sft or an instruct model)",
                param="messages",
            )
        try:
            ids = prompt_ids(self.engine.tokenizer, messages)
        except LmlabError as err:
            raise wire.ApiError(400, str(err), param="messages") from err
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        config = ending_turns(self.engine.tokenizer, self._config(req, ids, limit))
        id_ = wire.new_id("chatcmpl")
        name = self.settings.model_name
        if not req.stream:
            text, finish = await self._run(config, ids)
            usage = wire.usage(len(ids), finish.completion_tokens)
            return JSONResponse(wire.chat_response(id_, name, text.lstrip(), finish.reason, usage))

        def chunk(piece: str | None, finish: Finish | None) -> dict[str, Any]:
            delta = {} if piece is None else {"content": piece}
            return wire.chat_chunk(id_, name, delta, finish.reason if finish else None)

        opening = wire.chat_chunk(id_, name, {"role": "assistant", "content": ""}, None)
        return await self._stream(config, ids, req, chunk, opening, lstrip=True)

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = _parse(wire.CompletionRequest, await _read_json(request, self.settings.max_body_bytes))
        self._check_model(req.model)
        try:
            ids = encode_prompt(self.engine.tokenizer, req.text)
        except LmlabError as err:
            raise wire.ApiError(400, str(err), param="prompt") from err
        config = self._config(req, ids, req.max_tokens)
        id_, name = wire.new_id("cmpl"), self.settings.model_name
        echo = req.text if req.echo else ""
        if not req.stream:
            text, finish = await self._run(config, ids)
            body = wire.completion_response(id_, name, echo + text, finish.reason)
            return JSONResponse(body | {"usage": wire.usage(len(ids), finish.completion_tokens)})

        def chunk(piece: str | None, finish: Finish | None) -> dict[str, Any]:
            return wire.completion_response(id_, name, piece or "", finish.reason if finish else None)

        opening = wire.completion_response(id_, name, echo, None) if echo else None
        return await self._stream(config, ids, req, chunk, opening)

    # --- helpers -------------------------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), key.encode()):
            raise wire.ApiError(
                401,
                "invalid or missing API key; send the header 'Authorization: Bearer <key>' "
                "with the key the server was started with",
                code="invalid_api_key",
            )

    def _check_model(self, model: str) -> None:
        if model != self.settings.model_name:
            raise wire.ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {self.settings.model_name!r} (see /v1/models)",
                param="model",
                code="model_not_found",
            )

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.settings.model_name, "object": "model", "created": 0, "owned_by": "lmlab"}

    def _config(self, req: wire.Sampling, ids: list[int], max_tokens: int | None) -> GenerationConfig:
        """The request's decoding settings; a prompt the context cannot hold, or a budget over the limit, is refused.

        A reply may run past the context: the model then sees its last `block_size` tokens, as `lmlab generate` does.
        """
        context, limit = self.settings.context, self.settings.max_tokens_limit
        if len(ids) > context:
            raise wire.ApiError(
                400,
                f"the prompt takes {len(ids)} tokens, more than this model's context of {context}; shorten it",
                param="messages" if isinstance(req, wire.ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        max_tokens = self.settings.max_tokens if max_tokens is None else max_tokens
        if max_tokens > limit:
            message = (
                f"max_tokens={max_tokens} is over this server's limit of {limit} (its max_tokens_limit); ask for fewer"
            )
            raise wire.ApiError(400, message, param="max_tokens", code="invalid_value")
        try:
            sampling = SamplingOptions(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)
            config = GenerationConfig(
                max_tokens,
                sampling,
                req.stops,
                seed=req.seed if req.seed is not None else secrets.randbits(31),
                processors=req.processors,
            )
            build_processors(config.processors, self.engine.tokenizer)  # bad words etc. fail here, not in the worker
        except LmlabError as err:
            raise wire.ApiError(400, str(err), code="invalid_value") from err
        return config

    def _submit(self, config: GenerationConfig, ids: list[int]) -> tuple[Job, asyncio.Queue[Event]]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: Event) -> None:  # called by the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(
            ids,
            config.max_new_tokens,
            emit,
            config.sampling,
            list(config.processors),
            config.stop,
            config.seed,
        )
        try:
            self.engine.submit(job)
        except QueueFull as err:
            raise wire.ApiError(429, str(err), type_="rate_limit_error", code="rate_limit_exceeded") from err
        return job, events

    async def _run(self, config: GenerationConfig, ids: list[int]) -> tuple[str, Finish]:
        job, events = self._submit(config, ids)
        pieces: list[str] = []
        try:
            while True:
                kind, value = await events.get()
                if kind == "text":
                    pieces.append(value)
                elif kind == "done":
                    return "".join(pieces), value
                else:
                    raise wire.ApiError(500, value, type_="server_error")
        finally:
            job.cancelled.set()  # the client left (or the job ended): its row stops

    async def _stream(
        self,
        config: GenerationConfig,
        ids: list[int],
        req: wire.Sampling,
        chunk: Callable[[str | None, Finish | None], dict[str, Any]],
        opening: dict[str, Any] | None,
        lstrip: bool = False,
    ) -> StreamingResponse:
        job, events = self._submit(config, ids)

        async def sse() -> AsyncIterator[str]:
            started = not lstrip
            try:
                if opening is not None:
                    yield _event(opening)
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        value = value if started else value.lstrip()  # a reply may open with a space
                        if value:
                            started = True
                            yield _event(chunk(value, None))
                    elif kind == "done":
                        yield _event(chunk(None, value))
                        if req.include_usage:
                            usage = wire.usage(len(ids), value.completion_tokens)
                            yield _event(chunk(None, None) | {"choices": [], "usage": usage})
                        break
                    else:
                        yield _event(wire.ApiError(500, value, type_="server_error").body())
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancelled.set()

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _has_role_tokens(tokenizer: object) -> bool:
    """lmlab's own role markers (char/BPE tokenizers of task=sft) make a chat template too."""
    from lmlab.tokenizers.templates import template_token_ids

    try:
        template_token_ids(tokenizer)  # type: ignore[arg-type]
    except LmlabError:
        return False
    return True


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; larger than `limit` bytes: 413, before reading it all."""
    declared = request.headers.get("content-length", "")
    too_big = wire.ApiError(
        413,
        f"the request body exceeds {limit} bytes; send a shorter prompt (the server's max_body_bytes sets the limit)",
        code="request_too_large",
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(body)
    except ValueError as err:
        raise wire.ApiError(
            400, f"the request body is not valid JSON ({err}); send a JSON object", code="invalid_json"
        ) from err
    if not isinstance(data, dict):
        raise wire.ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def _parse(model: type[T], data: dict[str, Any]) -> T:
    """The body as `model`; the first invalid field: 400."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise wire.invalid_body(err) from err
