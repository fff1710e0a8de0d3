"""The HTTP layer: one handler per endpoint, turning OpenAI requests into engine work and events into responses."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message as ASGIMessage, Receive, Scope, Send

from ..runtime.generation import GenerationError, check_chain
from ..runtime.manifest import ManifestError
from ..runtime.sampling import Sampling
from ..runtime.speculative import DraftControls
from .engine import Engine, Event, QueueFull, TooLong, Work
from .protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest, GenerationRequest,
                       Message, TokenizeRequest)

COMPLETION_DEFAULT_TOKENS = 16   # OpenAI's default max_tokens for completions; chat runs to the context's end
MOST_DRAFT_TOKENS = 32


@dataclass
class Settings:
    model_name: str
    api_key: str | None = None
    per_request_metrics: bool = False   # add vLLM's metrics.speculative_decoding (and every level) to responses
    # Scale-out (ray_deploy.py): the replica's name, answered as x-specqd-replica on every response, and the
    # /metrics text of every replica, so that a scrape does not depend on which replica the proxy picked.
    replica: str | None = None
    metrics: Callable[[], Awaitable[bytes]] | None = None


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    app = FastAPI(title="specqd", description="OpenAI-compatible server for ML-SpecQD speculative decoding")
    folder = engine.folder
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        location = [str(part) for part in first["loc"] if part != "body"]
        param = ".".join(location) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown field {param}: this server does not support it"
        elif first["type"] == "json_invalid":
            message, param = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
        return JSONResponse(APIError(400, f"{param}: {message}" if param else message, param).body(), 400)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(error.status_code, str(error.detail)).body(), error.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(APIError(500, f"internal error: {type(error).__name__}: {error}").body(), 500)

    def authorized(request: Request) -> None:
        if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{settings.model_name}`",
                           "model", "model_not_found")

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.alive:
            return JSONResponse(APIError(503, "the engine stopped; see the server log").body(), 503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        text = await settings.metrics() if settings.metrics else engine.metrics.render(engine)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": created,
                                            "owned_by": "specqd", "max_model_len": folder.context}]}

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model)
        text = body.prompt if body.messages is None else chat_prompt(body.messages)
        tokens = folder.encode(text) if text else []
        return {"count": len(tokens), "max_model_len": folder.context, "tokens": tokens}

    @app.post("/detokenize", dependencies=[Depends(authorized)])
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model)
        check_token_ids(body.tokens, "tokens")
        return {"prompt": folder.decode(body.tokens)}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model)
        prompts = prompt_ids(body.prompt)
        return await respond(request, body, prompts, "text_completion", COMPLETION_DEFAULT_TOKENS)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model)
        if body.max_completion_tokens is not None:
            body.max_tokens = body.max_completion_tokens
        prompts = [folder.encode(chat_prompt(body.messages))]
        return await respond(request, body, prompts, "chat.completion", None)

    def chat_prompt(messages: list[Message]) -> str:
        try:
            return folder.apply_chat_template([{"role": m.role, "content": m.text} for m in messages])
        except GenerationError as error:
            raise APIError(400, str(error), "messages") from None

    def prompt_ids(prompt: str | list) -> list[list[int]]:
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is empty", "prompt")
        prompts = []
        for item in prompt:
            ids = folder.encode(item) if isinstance(item, str) else item
            check_token_ids(ids, "prompt")
            if not ids:
                raise APIError(400, "prompt is empty", "prompt")
            prompts.append(ids)
        return prompts

    def check_token_ids(ids: list[int], param: str) -> None:
        vocabulary = folder.vocabulary_size
        if any(not 0 <= token < vocabulary for token in ids):
            raise APIError(400, f"{param}: token ids must be in [0, {vocabulary})", param)

    async def respond(request: Request, body: GenerationRequest, prompts: list[list[int]], kind: str,
                      default_tokens: int | None):
        chain, controls = speculation(body)
        sampling = Sampling(temperature=body.temperature, top_k=body.top_k, top_p=body.top_p, seed=body.seed)
        if any(not stop for stop in body.stops):
            raise APIError(400, "stop strings must be non-empty", "stop")
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        works = []
        for index, ids in enumerate(prompts):
            max_tokens = body.max_tokens or default_tokens or folder.context - len(ids)
            if len(ids) + max_tokens > folder.context:
                raise APIError(400, f"This model's maximum context length is {folder.context} tokens. However, you "
                                    f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
                                    f"{max_tokens} in the completion). Please reduce the length of the prompt or "
                                    "max_tokens.", "max_tokens", "context_length_exceeded")
            emit = (lambda i: lambda event: loop.call_soon_threadsafe(events.put_nowait, (i, event)))(index)
            works.append(Work(ids, max_tokens, sampling, body.stops, chain, controls, emit))
        try:
            for work in works:
                engine.submit(work)
        except (QueueFull, TooLong) as error:
            for work in works:
                work.cancelled = True
            raise APIError(429 if isinstance(error, QueueFull) else 400, str(error)) from None
        answer = Answer(kind, settings, works, events, f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-"
                        f"{uuid.uuid4().hex}", engine)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(answer.stream(include_usage), media_type="text/event-stream")
        return await answer.whole(request)

    def speculation(body: GenerationRequest) -> tuple[tuple[str, ...], dict[str, DraftControls]]:
        """The request's chain and each draft level's controls: the body's, else what `specqd tune` stored."""
        wanted = body.speculative.chain if body.speculative else None
        names = tuple(wanted.split(",") if isinstance(wanted, str) else wanted or engine.config.chain)
        try:
            check_chain(folder.manifest, list(names))
        except (GenerationError, ManifestError) as error:  # unknown level, lookup on top, mixed tokenizers ...
            raise APIError(400, f"speculative.chain: {error}", "speculative.chain") from None
        controls = folder.default_controls(list(names))
        k = dict(body.speculative.k) if body.speculative else {}
        confidence = dict(body.speculative.confidence) if body.speculative else {}
        if len(names) > 1 and body.num_assistant_tokens is not None:
            k.setdefault(names[1], body.num_assistant_tokens)
        if len(names) > 1 and body.assistant_confidence_threshold is not None:
            confidence.setdefault(names[1], body.assistant_confidence_threshold)
        for param, values in (("speculative.k", k), ("speculative.confidence", confidence)):
            unknown = set(values) - set(names[1:])
            if unknown:
                raise APIError(400, f"{param}: {', '.join(sorted(unknown))} is not a draft level of the chain "
                                    f"{','.join(names)}", param)
        for name, value in k.items():
            if not 0 <= value <= MOST_DRAFT_TOKENS:
                raise APIError(400, f"speculative.k.{name}={value}: must be in [0, {MOST_DRAFT_TOKENS}]", "speculative.k")
        for name, value in confidence.items():
            if not 0 <= value < 1:
                raise APIError(400, f"speculative.confidence.{name}={value}: must be in [0, 1)",
                               "speculative.confidence")
        not_drafting = [names.index(name) for name, value in k.items() if value == 0]
        if not_drafting:  # k 0 turns a level's drafting off, and with it every level below
            names = names[:min(not_drafting)]
        return names, {name: replace(controls[name], k=k.get(name, controls[name].k),
                                     confidence=confidence.get(name, controls[name].confidence))
                       for name in names[1:]}

    if settings.replica:
        app.add_middleware(ReplicaHeader, replica=settings.replica)
    return app


class ReplicaHeader:
    """ASGI middleware adding x-specqd-replica to every response, streamed ones included (it only touches the
    response's start message, so streaming and disconnects work as without it)."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("x-specqd-replica", self.replica)
            await send(message)
        await self.app(scope, receive, send_with_header if scope["type"] == "http" else send)


class Answer:
    """The events of one HTTP request's works, as a whole JSON response or as Server-Sent Events."""

    def __init__(self, kind: str, settings: Settings, works: list[Work], events: asyncio.Queue, answer_id: str,
                 engine: Engine):
        self.kind = kind
        self.chat = kind == "chat.completion"
        self.settings = settings
        self.works = works
        self.events = events
        self.id = answer_id
        self.created = int(time.time())
        self.engine = engine

    async def whole(self, request: Request) -> JSONResponse:
        texts = [""] * len(self.works)
        finished = 0
        try:
            while finished < len(self.works):
                try:
                    index, event = await asyncio.wait_for(self.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, 499)
                    continue
                if event.error:
                    raise APIError(500, event.error)
                texts[index] += event.text
                finished += event.finished
        finally:
            self.cancel()
        choices = [self.choice(index, text) for index, text in enumerate(texts)]
        return JSONResponse(self.envelope(self.kind, choices) | {"usage": self.usage()} | self.per_request_metrics())

    async def stream(self, include_usage: bool) -> AsyncIterator[str]:
        finished = 0
        try:
            if self.chat:
                for index in range(len(self.works)):
                    yield self.sse([{"index": index, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}])
            while finished < len(self.works):
                index, event = await self.events.get()
                if event.error:
                    yield f"data: {json.dumps(APIError(500, event.error).body())}\n\n"
                    break
                if event.text:
                    yield self.sse([self.delta(index, event.text, None)])
                if event.finished:
                    finished += 1
                    reason = self.works[index].generation.finish_reason
                    yield self.sse([self.delta(index, "", reason)])
            else:
                if include_usage:
                    yield self.sse([], {"usage": self.usage()} | self.per_request_metrics())
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # the client went away, or all is sent: either way nothing more is needed

    def cancel(self) -> None:
        for work in self.works:
            work.cancelled = True

    def sse(self, choices: list[dict], extra: dict | None = None) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return f"data: {json.dumps(self.envelope(kind, choices) | (extra or {}))}\n\n"

    def envelope(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.settings.model_name,
                "choices": choices}

    def choice(self, index: int, text: str) -> dict:
        reason = self.works[index].generation.finish_reason
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

    def delta(self, index: int, text: str, reason: str | None) -> dict:
        if self.chat:
            return {"index": index, "delta": {"content": text} if text else {}, "finish_reason": reason}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": reason}

    def usage(self) -> dict:
        prompt = sum(len(work.prompt_ids) for work in self.works)
        completion = sum(len(work.generation.generated) for work in self.works)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def per_request_metrics(self) -> dict:
        """vLLM's per-request `metrics.speculative_decoding` (what aiperf reads), plus every level's stats."""
        if not self.settings.per_request_metrics:
            return {}
        work = self.works[0]
        chain = self.engine.chain(work.chain)
        if chain is None:  # openvino-genai's engine (genai_engine.py) has no levels; it reports what genai tells
            return {"metrics": work.generation.metrics()}
        stats = work.generation.stats(chain)
        top = work.generation.job.stats[work.chain[1]] if len(work.chain) > 1 else None
        speculative = {}
        if top is not None:
            speculative = {
                "num_spec_steps": top.drafts,
                "num_draft_tokens": top.drafted,
                "num_accepted_draft_tokens": top.accepted,
                "draft_acceptance_rate": round(top.accepted / top.drafted, 4) if top.drafted else None,
                "mean_acceptance_length": round(1 + top.accepted / top.drafts, 4) if top.drafts else None,
                "acceptance_by_position": [round(a / d, 4) for a, d in zip(top.accepted_at, top.drafted_at)],
            }
        return {"metrics": {"speculative_decoding": speculative, "chain": list(work.chain),
                            "time_to_first_token_ms": round(stats["time_to_first_token"] * 1000, 1),
                            "tokens_per_second": stats["tokens_per_second"], "levels": stats["levels"]}}
