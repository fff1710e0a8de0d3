"""Ray Serve's HTTP proxy, answering its own errors in OpenAI's shape as the replicas answer theirs.

The proxy has errors no replica can answer: a replica that dies mid-request (Ray then ends the exchange with
a bare text 500, or cuts a stream short) and back-pressure (a text 503 when --max-queue requests already
wait). OpenAI clients read {"error": {...}} bodies and, in a stream, an error event; this middleware gives them
that. Ray loads it into its proxy from an import path in the environment of the Ray cluster (PROXY_ENVIRONMENT:
`ray_deploy.start_ray` sets it for a local instance; docs/deploy.md shows it for `ray start`).
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import APIError

PROXY_ENVIRONMENT = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "specqd.server.ray_proxy.middlewares"}
FULL = "every replica is busy and --max-queue requests already wait: retry later, or serve with more replicas"
LOST = ("the replica serving this request stopped before it finished (killed, or out of memory); Ray Serve "
        "replaces it: send the request again")


def middlewares() -> list[Middleware]:
    """The proxy callback Ray calls at start-up (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(OpenAIErrors)]


class OpenAIErrors:
    """ASGI middleware: a response never started becomes a JSON 500, a plain-text error becomes the same
    status in JSON, and a stream cut short ends with an error event and `data: [DONE]`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = WatchedResponse(send)
        await self.app(scope, receive, response.send)
        await response.close()


class WatchedResponse:
    """Passes a response's messages on, noting how far it got; holds a plain-text error to answer it as JSON."""

    def __init__(self, send: Send):
        self.downstream = send
        self.started = False
        self.streaming = False
        self.ended = False
        self.held: Message | None = None   # the start of a plain-text error
        self.held_body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            kind = Headers(raw=message["headers"]).get("content-type", "")
            self.streaming = kind.startswith("text/event-stream")
            if message["status"] >= 400 and not kind.startswith("application/json"):
                self.held = message
                return
        elif message["type"] == "http.response.body":
            self.ended = not message.get("more_body", False)
            if self.held is not None:
                self.held_body += message.get("body", b"")
                if self.ended:
                    text = self.held_body.decode(errors="replace").strip()
                    if self.held["status"] == 503:  # Ray's back-pressure: say which option bounds it
                        text = f"{text} ({FULL})"
                    await self.answer(self.held["status"], text, self.held["headers"])
                return
        await self.downstream(message)

    async def close(self) -> None:
        """After the proxy is done: finish what it left unfinished."""
        if not self.started:
            await self.answer(500, LOST)
        elif self.streaming and not self.ended:
            event = json.dumps(APIError(500, LOST).body())
            await self.downstream({"type": "http.response.body", "body": f"data: {event}\n\ndata: [DONE]\n\n".encode(),
                                   "more_body": False})

    async def answer(self, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps(APIError(status, message or LOST).body()).encode()
        kept = [(name, value) for name, value in headers if name.lower() not in (b"content-type", b"content-length")]
        await self.downstream({"type": "http.response.start", "status": status, "headers": kept + [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await self.downstream({"type": "http.response.body", "body": body, "more_body": False})
