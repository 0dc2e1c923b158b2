"""A fake FCM that speaks the real protocol, for the tests and `benchmarks/push.py`.

* `POST /token`: Google's OAuth2 token endpoint as the service-account flow calls it (a JWT
  bearer grant, RFC 7523): the assertion's signature is checked against the service account's
  public key, and its `iss`, `aud` (Google's token endpoint, as google-auth addresses it, or
  the fake's own), `scope`, `iat` and `exp`; answers `{"access_token", "expires_in", "token_type"}`
  with a fresh token that lives `token_lifetime` seconds.
* `POST /v1/projects/{project}/messages:send`: checks the project and the bearer token (unknown
  or expired: 401 `UNAUTHENTICATED`, as Google answers), checks the message's shape as FCM does
  (400 `INVALID_ARGUMENT` otherwise), then answers what is scripted for the registration token:
  a list of `Answer`s consumed in order, the last one repeated; unscripted tokens succeed after
  `delay` seconds. Error bodies are FCM's: `{"error": {"code", "message", "status", "details":
  [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}]}}`.

It is served over HTTP/1.1 by aiohttp (`FakeFcmServer`), or over cleartext HTTP/2 with prior
knowledge by a small `h2` server (`serve_h2`, for the benchmark's HTTP/2 side). Run alone:
`python -m tests.push.fake_fcm --port 8099 --delay 0.02 --public-key key.pem [--http2 --token-port 8098]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from google.auth import jwt as google_jwt

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth addresses every grant assertion to Google's token endpoint, whatever token_uri
# the file names (and Google accepts it): the fake accepts that audience or its own URI.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")


@dataclass(frozen=True)
class Answer:
    """One scripted answer: `status` with FCM's error shape for `code` (None: success), an
    optional Retry-After, after `delay` seconds (None: the server's default delay)."""

    status: int = 200
    code: str | None = None
    retry_after: str | None = None
    delay: float | None = None

    @classmethod
    def ok(cls, delay: float | None = None) -> Answer:
        return cls(delay=delay)

    @classmethod
    def unregistered(cls) -> Answer:
        return cls(404, "UNREGISTERED")

    @classmethod
    def invalid_argument(cls) -> Answer:
        return cls(400, "INVALID_ARGUMENT")

    @classmethod
    def sender_id_mismatch(cls) -> Answer:
        return cls(403, "SENDER_ID_MISMATCH")

    @classmethod
    def quota_exceeded(cls, retry_after: str | None = None) -> Answer:
        return cls(429, "QUOTA_EXCEEDED", retry_after)

    @classmethod
    def unavailable(cls, retry_after: str | None = None) -> Answer:
        return cls(503, "UNAVAILABLE", retry_after)

    @classmethod
    def internal(cls) -> Answer:
        return cls(500, "INTERNAL")

    @classmethod
    def slow(cls, seconds: float) -> Answer:
        return cls(delay=seconds)


_STATUS_NAME = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAME.get(status, "UNKNOWN"),
    }
    if code is not None:
        error["details"] = [{"@type": FCM_ERROR, "errorCode": code}]
    return {"error": error}


@dataclass
class Received:
    """A message FCM accepted or refused, as received: the tests read what was sent."""

    registration_token: str
    message: dict[str, Any]
    at: float
    status: int


@dataclass
class FakeFcm:
    """The protocol, independent of the HTTP version that carries it."""

    project_id: str
    client_email: str
    public_key_pem: str
    token_uri: str = ""  # the `aud` a grant must name (set once the server knows its address)
    delay: float = 0.0
    token_lifetime: int = 3600
    record: bool = True
    scripts: dict[str, list[Answer]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    token_grants: int = 0
    sends: int = 0
    _tokens: dict[str, float] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def script(self, registration_token: str, *answers: Answer) -> None:
        self.scripts[registration_token] = list(answers)

    def expire_tokens(self) -> None:
        """Every issued access token expires now (as if an hour passed)."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != JWT_GRANT or "assertion" not in form:
            return 400, {"error": "unsupported_grant_type"}
        try:
            claims = google_jwt.decode(
                form["assertion"],
                certs=self.public_key_pem,
                audience=[self.token_uri, GOOGLE_TOKEN_AUDIENCE],
                clock_skew_in_seconds=30,
            )
        except (ValueError, google_jwt.exceptions.GoogleAuthError) as exc:
            return 400, {"error": "invalid_grant", "error_description": str(exc)}
        if claims.get("iss") != self.client_email or FCM_SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_grant", "error_description": "iss or scope"}
        self.token_grants += 1
        token = f"ya29.fake-{self.token_grants}-{secrets.token_urlsafe(16)}"
        self._tokens[token] = time.monotonic() + self.token_lifetime
        return 200, {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}

    def send(
        self, project: str, authorization: str | None, body: bytes
    ) -> tuple[int, dict[str, str], Any, float]:
        """(status, headers, JSON answer, seconds to wait before answering)."""
        self.sends += 1
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        if token is None or self._tokens.get(token, 0.0) <= time.monotonic():
            return 401, {}, error_body(401, "Request had invalid authentication credentials.", None), 0.0
        if project != self.project_id:
            return 404, {}, error_body(404, f"Project {project} not found", None), 0.0
        message = self._message(body)
        if isinstance(message, str):
            return 400, {}, error_body(400, message, "INVALID_ARGUMENT"), 0.0
        registration_token = message["token"]
        self.attempts[registration_token] += 1
        script = self.scripts.get(registration_token)
        answer = (script.pop(0) if len(script) > 1 else script[0]) if script else Answer()
        if self.record:
            self.received.append(Received(registration_token, message, time.monotonic(), answer.status))
        delay = self.delay if answer.delay is None else answer.delay
        if answer.status == 200:
            return 200, {}, {"name": f"projects/{self.project_id}/messages/0:{next(self._ids)}%fake"}, delay
        headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else {}
        return answer.status, headers, error_body(answer.status, "scripted", answer.code), delay

    @staticmethod
    def _message(body: bytes) -> dict[str, Any] | str:
        """The message, or what FCM would call invalid about it."""
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            return "Invalid JSON payload received."
        if not isinstance(message, dict) or not isinstance(message.get("token"), str):
            return "The registration token is not a valid FCM registration token"
        data = message.get("data", {})
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return "Invalid value at 'message.data' (TYPE_STRING)"
        android = message.get("android", {})
        if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
            return "Invalid value at 'message.android.priority'"
        if "ttl" in android and not _TTL.match(str(android["ttl"])):
            return "Invalid value at 'message.android.ttl' (google.protobuf.Duration)"
        return message


class FakeFcmServer:
    """`FakeFcm` over HTTP/1.1 (aiohttp) on 127.0.0.1, started and stopped by the test."""

    def __init__(self, fcm: FakeFcm) -> None:
        self.fcm = fcm
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> FakeFcmServer:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        self.fcm.token_uri = f"{self.url}/token"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        status, answer = self.fcm.grant(form)
        return web.json_response(answer, status=status)

    async def _send(self, request: web.Request) -> web.Response:
        status, headers, answer, delay = self.fcm.send(
            request.match_info["project"], request.headers.get("Authorization"), await request.read()
        )
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(answer, status=status, headers=headers)


async def serve_h2(fcm: FakeFcm, port: int) -> asyncio.Server:
    """`FakeFcm` over cleartext HTTP/2 with prior knowledge (what `httpx` with `http1=False`
    speaks): one `h2` connection state machine per TCP connection, each stream answered on its
    own after its delay."""
    import h2.config
    import h2.connection
    import h2.events

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def respond(stream_id: int, headers: dict[str, str], body: bytes) -> None:
            path = headers.get(":path", "")
            if path == "/token":
                status, answer = fcm.grant({k: v[0] for k, v in parse_qs(body.decode()).items()})
                extra: dict[str, str] = {}
                delay = 0.0
            else:
                match = re.fullmatch(r"/v1/projects/([^/]+)/messages:send", path)
                project = match.group(1) if match else ""
                status, extra, answer, delay = fcm.send(project, headers.get("authorization"), body)
            if delay:
                await asyncio.sleep(delay)
            payload = json.dumps(answer).encode()
            response = [
                (":status", str(status)),
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
            ]
            response += [(k.lower(), v) for k, v in extra.items()]
            try:
                conn.send_headers(stream_id, response)
                conn.send_data(stream_id, payload, end_stream=True)
                writer.write(conn.data_to_send())
            except Exception:  # the client reset the stream or went away: nothing to answer
                pass

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = (dict(event.headers), bytearray())
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        task = asyncio.create_task(respond(event.stream_id, headers, bytes(body)))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(connection, "127.0.0.1", port)


def main() -> None:
    p = argparse.ArgumentParser(description="A fake FCM (token endpoint and messages:send)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.02)
    p.add_argument("--project", default="fake-project")
    p.add_argument("--client-email", default="push@fake-project.iam.gserviceaccount.com")
    p.add_argument("--public-key", type=Path, required=True)
    p.add_argument("--http2", action="store_true", help="cleartext HTTP/2 (prior knowledge)")
    p.add_argument("--token-port", type=int, help="with --http2: the token endpoint's HTTP/1.1 port")
    args = p.parse_args()
    fcm = FakeFcm(
        args.project, args.client_email, args.public_key.read_text(), delay=args.delay, record=False
    )
    fcm.token_uri = f"http://127.0.0.1:{args.token_port or args.port}/token"

    async def run() -> None:
        if args.http2:
            # google-auth mints tokens over HTTP/1.1 (urllib3): the token endpoint is served
            # there too, from the same state, so the tokens it issues are the ones h2 checks.
            if args.token_port:
                await FakeFcmServer(fcm).start(args.token_port)
                fcm.token_uri = f"http://127.0.0.1:{args.token_port}/token"
            server = await serve_h2(fcm, args.port)
            print("ready", flush=True)
            await server.serve_forever()
        else:
            await FakeFcmServer(fcm).start(args.port)
            print("ready", flush=True)
            await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
