"""The OpenAPI 3.0 description of the relay's HTTP API, served at /openapi.json and fuzzed with
schemathesis (tests/test_server_http_fuzz.py). The WebSocket stream is specified in
docs/PROTOCOL.md §9, not here."""

from __future__ import annotations

from typing import Any

_B64 = {"type": "string", "format": "byte"}


def _b64_of(length: int) -> dict[str, Any]:
    """Standard base64 of exactly ``length`` bytes (what the server checks before anything else)."""
    chars = 4 * -(-length // 3)
    pad = chars - -(-4 * length // 3)
    pattern = f"^[A-Za-z0-9+/]{{{chars - pad}}}{'=' * pad}$"
    return {**_B64, "minLength": chars, "maxLength": chars, "pattern": pattern}


_ACCOUNT = _b64_of(16)
_TOKEN = _b64_of(32)
_IDENTITY = _b64_of(129)
_STATEMENT = _b64_of(81)  # revocation statement: version, account id, Ed25519 signature


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "revocation": _B64,
                    },
                }
            }
        },
    }


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _request(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": sorted(properties),
                    "additionalProperties": False,
                    "properties": properties,
                }
            }
        },
    }


_CODE = {"type": "string", "minLength": 1, "maxLength": 64}
_COMMON_ERRORS = {
    "400": _error("malformed request"),
    "413": _error("body over 16 KiB"),
    "503": _error("storage unavailable"),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Kluis relay", "version": "1"},
    "paths": {
        "/v1/accounts": {
            "post": {
                "summary": "Register an account with an activation code",
                "requestBody": _request({"code": _CODE, "identity": _IDENTITY, "token_hash": _TOKEN}),
                "responses": {
                    "201": _json(
                        {
                            "type": "object",
                            "required": ["account", "expires_day"],
                            "properties": {"account": _ACCOUNT, "expires_day": {"type": "integer"}},
                        },
                        "account created",
                    ),
                    "403": _error("code unknown or used"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/v1/accounts/extend": {
            "post": {
                "summary": "Extend a subscription with another activation code",
                "requestBody": _request({"account": _ACCOUNT, "code": _CODE}),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["expires_day"],
                            "properties": {"expires_day": {"type": "integer"}},
                        }
                    ),
                    "403": _error("unknown account or code"),
                    "410": _error("account revoked"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/v1/bundle": {
            "post": {
                "summary": "Fetch a prekey bundle (consumes one one-time prekey of each kind)",
                "requestBody": _request({"account": _ACCOUNT, "token": _TOKEN}),
                "responses": {
                    "200": _json({"type": "object", "required": ["bundle"], "properties": {"bundle": _B64}}),
                    "403": _error("unknown account or wrong delivery token"),
                    "404": _error("no keys published yet"),
                    "410": _error("account revoked; the signed statement is included"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/v1/revoke": {
            "post": {
                "summary": "Revoke an account with a statement signed by its identity key",
                "requestBody": _request({"statement": _STATEMENT}),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["revoked"],
                            "properties": {"revoked": {"type": "boolean"}},
                        }
                    ),
                    "401": _error("signature does not verify"),
                    "403": _error("unknown account"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": _json({"type": "object", "properties": {"status": {"type": "string"}}})},
            }
        },
    },
}
