"""The relay's HTTP routes: registration, extension, bundle fetch, revocation, health, metrics, and
the WebSocket stream's upgrade. JSON in and out; byte strings are standard base64 (OpenAPI
``format: byte``). Errors become ``{"error": message, "code": code}`` with the status of their
RelayError class (errors.py), mapped here at the route boundary only (STYLE.md §4).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from kluis.server.errors import BadRequest, RelayError, Revoked, TooLarge, Unavailable
from kluis.server.openapi import OPENAPI
from kluis.server.relay import Relay
from kluis.server.storage.base import AccountId, StorageError

MAX_BODY = 16 * 1024
"""Every HTTP body is small: the largest (registration) is under 1 KB."""
MAX_CODE_LEN = 64

RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _b64(value: object, field: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or len(value) > 4 * MAX_BODY:
        raise BadRequest(f"{field} must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} must be a base64 string") from None
    if length is not None and len(data) != length:
        raise BadRequest(f"{field} must be {length} bytes")
    return data


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _code(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CODE_LEN:
        raise BadRequest("code must be a string of 1..64 characters")
    return value


async def _body(request: web.Request, fields: set[str]) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise TooLarge()
    # read(n) returns what has arrived (one chunk of a chunked body), not n bytes: read to the end.
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY + 1 - size):
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge()
    raw = b"".join(parts)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict) or set(body) != fields:
        raise BadRequest(f"body must be an object with exactly: {', '.join(sorted(fields))}")
    return body


def _error(error: RelayError) -> web.Response:
    payload: dict[str, Any] = {"error": str(error), "code": error.code}
    if isinstance(error, Revoked) and error.statement is not None:
        payload["revocation"] = _enc(error.statement)
    return web.json_response(payload, status=error.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RelayError as error:
        return _error(error)
    except StorageError:
        return _error(Unavailable())
    except web.HTTPException as error:
        if error.status < 400:
            raise
        # aiohttp's own refusals (unknown route, wrong method, failed upgrade) in the same JSON shape.
        code = error.reason.lower().replace(" ", "_").replace("-", "_")
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        payload = {"error": error.reason.lower(), "code": code}
        return web.json_response(payload, status=error.status, headers=headers)


async def register(request: web.Request) -> web.Response:
    body = await _body(request, {"code", "identity", "token_hash"})
    account, expires = await request.app[RELAY].register(
        _code(body["code"]),
        _b64(body["identity"], "identity", 129),
        _b64(body["token_hash"], "token_hash", 32),
    )
    return web.json_response({"account": _enc(account), "expires_day": expires}, status=201)


async def extend(request: web.Request) -> web.Response:
    body = await _body(request, {"account", "code"})
    account = AccountId(_b64(body["account"], "account", 16))
    expires = await request.app[RELAY].extend(account, _code(body["code"]))
    return web.json_response({"expires_day": expires})


async def bundle(request: web.Request) -> web.Response:
    body = await _body(request, {"account", "token"})
    account = AccountId(_b64(body["account"], "account", 16))
    data = await request.app[RELAY].bundle(account, _b64(body["token"], "token", 32))
    return web.json_response({"bundle": _enc(data)})


async def revoke(request: web.Request) -> web.Response:
    body = await _body(request, {"statement"})
    await request.app[RELAY].revoke(_b64(body["statement"], "statement"))
    return web.json_response({"revoked": True})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[RELAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/accounts", register)
    app.router.add_post("/v1/accounts/extend", extend)
    app.router.add_post("/v1/bundle", bundle)
    app.router.add_post("/v1/revoke", revoke)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)


__all__ = ["MAX_BODY", "RELAY", "add_routes", "errors_middleware"]
