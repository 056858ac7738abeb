"""The one binary codec every Kluis structure uses: big-endian integers and length-prefixed bytes.

Every variable-length field has an explicit bound, so a parser never allocates more than its caller
allowed. A reader that is not consumed exactly raises ``DecodeError(TRAILING_BYTES)``.
"""

from __future__ import annotations

import struct

from kluis.protocol.errors import DecodeError, DecodeReason, UnsupportedVersion

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Writer:
    """Builds a structure; ``getvalue()`` returns the bytes."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(bytes((value,)))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def raw(self, data: bytes) -> Writer:
        """Fixed-size field: the reader must know the length."""
        self._parts.append(data)
        return self

    def var16(self, data: bytes) -> Writer:
        """Field of up to 65,535 bytes, with a 2-byte length."""
        self._parts.append(_U16.pack(len(data)))
        self._parts.append(data)
        return self

    def var32(self, data: bytes) -> Writer:
        """Field with a 4-byte length."""
        self._parts.append(_U32.pack(len(data)))
        self._parts.append(data)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Parses a structure named ``what`` (used in errors) from ``data``."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.what = what

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(self.what, DecodeReason.TRUNCATED)
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self._take(1)[0]

    def expect_version(self, expected: int) -> None:
        """Reads the version byte every structure starts with; raises UnsupportedVersion otherwise."""
        version = self._take(1)[0]
        if version != expected:
            raise UnsupportedVersion(self.what, version)

    def u16(self) -> int:
        value: int = _U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def var16(self, max_len: int = 0xFFFF) -> bytes:
        n = self.u16()
        if n > max_len:
            raise DecodeError(self.what, DecodeReason.TOO_LONG)
        return bytes(self._take(n))

    def var32(self, max_len: int) -> bytes:
        n = self.u32()
        if n > max_len:
            raise DecodeError(self.what, DecodeReason.TOO_LONG)
        return bytes(self._take(n))

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def rest(self) -> bytes:
        return bytes(self._take(self.remaining()))

    def done(self) -> None:
        """Asserts the whole input was consumed."""
        if self._pos != len(self._data):
            raise DecodeError(self.what, DecodeReason.TRAILING_BYTES)
