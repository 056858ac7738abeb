"""The aiohttp application factory: HTTP routes and the WebSocket stream on one port."""

from __future__ import annotations

import asyncio

from aiohttp import web

from kluis.relay.websocket import HandshakeError, accept_handshake
from kluis.server.config import ServerConfig
from kluis.server.http import MAX_BODY, RELAY, add_routes, errors_middleware
from kluis.server.relay import Relay
from kluis.server.ws import Connection, StreamSettings

CONNECTIONS: web.AppKey[set[Connection]] = web.AppKey("connections", set)
SETTINGS: web.AppKey[StreamSettings] = web.AppKey("settings", StreamSettings)
CONFIG: web.AppKey[ServerConfig] = web.AppKey("config", ServerConfig)


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/stream: the WebSocket of relay frames (docs/PROTOCOL.md §9)."""
    config = request.app[CONFIG]
    connections = request.app[CONNECTIONS]
    if len(connections) >= config.max_connections:
        raise web.HTTPServiceUnavailable(text="too many connections")
    # The opening handshake (RFC 6455 section 4) through a plain 101 response: aiohttp's
    # WebSocketResponse would also build a reader, a queue and a writer per connection that the
    # stream does not use (about 2 KiB each of 10,000 idle connections, issue 3's W4).
    try:
        upgrade = accept_handshake(request.headers)
    except HandshakeError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    response = web.StreamResponse(status=101, headers=upgrade)
    # The connection is the stream's now, never another HTTP request: no keep-alive (and aiohttp's
    # keep-alive timer, armed for every new connection, goes).
    response.force_close()
    request.protocol.keep_alive(False)
    await response.prepare(request)
    transport = request.transport
    if transport is None or transport.is_closing():
        return response  # the client went away during the handshake
    connection = Connection(
        transport,
        request.app[RELAY],
        request.app[SETTINGS],
        max_message=config.max_frame_bytes,
        http_protocol=request.protocol,
    )
    transport.set_protocol(connection)
    connections.add(connection)
    try:
        await connection.run()
    finally:
        connections.discard(connection)
    return response


async def _close_connections(app: web.Application) -> None:
    """Graceful shutdown: every connection finishes the frame it is handling, flushes what it owes
    (acknowledgements of stored envelopes) and closes with SHUTTING_DOWN."""
    live: set[Connection] = app[CONNECTIONS]
    connections = list(live)
    grace = app[CONFIG].shutdown_grace_s
    await asyncio.gather(*(c.shutdown(grace) for c in connections), return_exceptions=True)


def make_app(relay: Relay, config: ServerConfig) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[RELAY] = relay
    app[CONFIG] = config
    app[CONNECTIONS] = set()
    app[SETTINGS] = StreamSettings(
        handshake_timeout=config.handshake_timeout_s,
        idle_timeout=config.idle_timeout_s,
        send_rate=config.send_rate_per_s,
        send_burst=config.send_burst,
        max_in_flight=config.max_in_flight,
        write_timeout=config.write_timeout_s,
        heartbeat=config.heartbeat_s,
        max_unstored_bytes=config.max_unstored_mib * 1024 * 1024,
    )
    add_routes(app)
    app.router.add_get("/v1/stream", stream)
    app.on_shutdown.append(_close_connections)
    return app


__all__ = ["make_app"]
