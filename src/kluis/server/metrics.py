"""Prometheus metrics of the relay: counts, sizes and latencies, never who.

Every label value comes from a fixed set known when the server starts: frame types from
``kluis.relay.frames.FrameType``, and the ``Literal`` types below. The labelled series are all created
in ``Metrics.__init__`` and looked up in plain dicts afterwards, so

- a value outside the set raises ``KeyError`` at the call (and mypy rejects it before that): no account
  id, key, token, address or envelope id can become a label, and the number of series is bounded;
- the hot path does a dict lookup and an ``inc()``, not prometheus_client's ``labels()`` call.

The metrics live in their own ``CollectorRegistry`` (not the process-global one), so tests and several
apps in one process do not collide. docs/OPERATING.md lists them (a test checks the list).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from kluis.protocol.envelope import ENC_LEN, HEADER_LEN, TAG_LEN
from kluis.protocol.padding import BUCKETS, ENVELOPE_MAX_BUCKET
from kluis.relay.frames import FrameType

_bucket_label: Callable[[float], str] = floatToGoString
"""How prometheus_client writes a bucket's ``le`` ("0.0001", "5e-05", "+Inf"), typed."""

ConnectionKind = Literal["authenticated", "sending"]
"""An account's own connection (receives, uploads keys) or a sealed-send connection (no account)."""
EnvelopeEvent = Literal["accepted", "delivered", "acknowledged", "expired", "duplicate", "unwritten"]
RejectReason = Literal[
    "bad_token",
    "revoked",
    "unknown_recipient",
    "too_large",
    "rate_limited",
    "subscription",
    "malformed",
    "unavailable",
]
RefusedConnection = Literal["idle", "flood", "handshake_timeout", "capacity"]
"""Why the server closed or refused a connection: no frame for idle_timeout_s, more than the send
rate allows, no hello within handshake_timeout_s, or max_connections reached."""
Direction = Literal["received", "sent"]
_FRAME_TYPES = frozenset(FrameType)
_ENVELOPE_EVENTS = frozenset(get_args(EnvelopeEvent))

NAMESPACE: Final = "kluis"

# Envelopes come in exactly these sizes (a padding bucket plus header, encapsulation and tag), so a
# bucket per size shows the size distribution exactly; anything else lands in +Inf.
ENVELOPE_SIZE_BUCKETS: Final = tuple(
    HEADER_LEN + ENC_LEN + b + TAG_LEN for b in BUCKETS if b <= ENVELOPE_MAX_BUCKET
)
# From 50 microseconds (a batched SQLite commit on a fast disk) to 10 seconds (something is wrong).
LATENCY_BUCKETS: Final = (
    50e-6, 100e-6, 250e-6, 500e-6,
    1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
COMMIT_BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram(Collector):
    """A Prometheus histogram without prometheus_client's lock and per-bucket walk on every
    observation (one per accepted envelope). Exposed through the collector interface in the same
    text form as prometheus_client's Histogram: ``_bucket{le=..}`` (cumulative), ``_sum``, ``_count``.
    Observed from the event loop only; a scrape reads it on the same loop."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry
    ) -> None:
        self._name = f"{NAMESPACE}_{name}"
        self._documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # le: the first bound >= value
        self._sum += value

    def observe_many(self, values: list[int] | list[float]) -> None:
        """:meth:`observe` for each value (one call for a batch: a busy relay observes every
        envelope's size)."""
        counts, bounds = self._counts, self._bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1
        self._sum += sum(values)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            cumulative += n
            buckets.append((_bucket_label(bound), cumulative))
        yield HistogramMetricFamily(self._name, self._documentation, buckets=buckets, sum_value=self._sum)


class Metrics:
    """The relay's metrics over a private registry. One instance per app.

    Args:
        process: also export the standard ``process_*`` metrics (CPU, memory, open files).
    """

    def __init__(self, *, process: bool = True) -> None:
        self._envelope_counts: dict[EnvelopeEvent, int] = {}
        self._frame_bytes_pending = [0, 0]
        self._received_types: dict[int, int] = {}
        self._sent_types: dict[int, int] = {}
        """Frames received (by FrameType) and sent (by type byte), not yet applied."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            ProcessCollector(registry=r)

        connections = Gauge(
            "connections", "Open WebSocket connections by kind.", ["kind"], namespace=NAMESPACE, registry=r
        )
        self._connections = {k: connections.labels(k) for k in get_args(ConnectionKind)}
        refused = Counter(
            "connections_refused",
            "Connections closed or refused by the server, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self._refused = {k: refused.labels(k) for k in get_args(RefusedConnection)}

        frames = Counter(
            "frames",
            "Relay frames by direction and type.",
            ["direction", "type"],
            namespace=NAMESPACE,
            registry=r,
        )
        self._frames = {
            (d, t): frames.labels(d, t.name.lower()) for d in get_args(Direction) for t in FrameType
        }
        self._frame_bytes = {
            d: Counter(f"frame_bytes_{d}", f"Bytes of relay frames {d}.", namespace=NAMESPACE, registry=r)
            for d in get_args(Direction)
        }

        envelopes = Counter(
            "envelopes", "Envelopes by what happened to them.", ["event"], namespace=NAMESPACE, registry=r
        )
        self._envelopes = {e: envelopes.labels(e) for e in get_args(EnvelopeEvent)}
        rejections = Counter(
            "send_rejections",
            "Envelopes refused at send, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self._rejections = {k: rejections.labels(k) for k in get_args(RejectReason)}
        self.envelope_size = Histogram(
            "envelope_size_bytes", "Size of accepted envelopes.", ENVELOPE_SIZE_BUCKETS, r
        )

        self.commit_latency = Histogram(
            "store_commit_seconds", "Time to commit one batch of writes to storage.", LATENCY_BUCKETS, r
        )
        self.commit_batch = Histogram(
            "store_commit_batch_envelopes", "Envelopes written per storage commit.", COMMIT_BATCH_BUCKETS, r
        )
        self.send_to_ack_latency = Histogram(
            "send_ack_seconds",
            "From a send frame's arrival to its acknowledgement being written (envelopes durable).",
            LATENCY_BUCKETS,
            r,
        )

        self.accounts_registered = Counter(
            "accounts_registered",
            "Accounts created by redeeming an activation code.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.accounts_revoked = Counter(
            "accounts_revoked",
            "Accounts revoked (panic or by the operator).",
            namespace=NAMESPACE,
            registry=r,
        )
        self.bundles_fetched = Counter(
            "bundles_fetched", "Prekey bundles handed out.", namespace=NAMESPACE, registry=r
        )
        self.prekeys_low = Counter(
            "prekey_stock_low",
            "Times an account's one-time prekey stock fell below the watermark.",
            namespace=NAMESPACE,
            registry=r,
        )

        self.fanout_degraded = Gauge(
            "fanout_degraded",
            "1 while this node cannot reach Redis and its connections poll their mailboxes.",
            namespace=NAMESPACE,
            registry=r,
        )
        notices = Counter(
            "fanout_notices",
            "Notices exchanged with other relay nodes through Redis, by direction.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self._notices = {d: notices.labels(d) for d in get_args(Direction)}

    # Connections -------------------------------------------------------------------------------------

    def connection_opened(self, kind: ConnectionKind) -> None:
        self._connections[kind].inc()

    def connection_closed(self, kind: ConnectionKind) -> None:
        self._connections[kind].dec()

    def connection_refused(self, reason: RefusedConnection) -> None:
        self._refused[reason].inc()

    # Frames and envelopes ----------------------------------------------------------------------------
    #
    # These run for every frame and envelope. prometheus_client takes a lock per update, which cost
    # about 6% of a busy relay's CPU, so the hot counters and observations are collected in plain
    # Python structures and applied to the registry in :meth:`apply` (on every scrape); histograms
    # are this module's own (:class:`Histogram`), a bisect and two additions per observation.

    def frame_received(self, frame_type: FrameType, size: int) -> None:
        if frame_type not in _FRAME_TYPES:  # refused now, as a labelled child would be
            raise KeyError(frame_type)
        self._received_types[frame_type] = self._received_types.get(frame_type, 0) + 1
        self._frame_bytes_pending[0] += size

    def frames_sent(self, frames: list[bytes]) -> None:
        """Counts the serialized frames of one write (a frame's type is its second byte): one call
        per write, not per frame."""
        counts = self._sent_types
        size = 0
        for frame in frames:
            kind = frame[1]
            counts[kind] = counts.get(kind, 0) + 1
            size += len(frame)
        self._frame_bytes_pending[1] += size

    def envelopes(self, event: EnvelopeEvent, count: int = 1) -> None:
        """Count ``count`` envelopes that were accepted, delivered, acknowledged, expired, duplicates,
        or receipted while held (unwritten)."""
        if event not in _ENVELOPE_EVENTS:
            raise KeyError(event)
        self._envelope_counts[event] = self._envelope_counts.get(event, 0) + count

    def envelopes_accepted(self, sizes: list[int]) -> None:
        """Envelopes stored for delivery: counted and their sizes observed."""
        self._envelope_counts["accepted"] = self._envelope_counts.get("accepted", 0) + len(sizes)
        self.envelope_size.observe_many(sizes)

    def send_rejected(self, reason: RejectReason, count: int = 1) -> None:
        self._rejections[reason].inc(count)

    def fanout_notices(self, direction: Direction, count: int) -> None:
        """Notices (new envelopes, prekey stock, close) sent to or received from other nodes."""
        self._notices[direction].inc(count)

    # Latencies ---------------------------------------------------------------------------------------

    def commit(self, seconds: float, envelopes: int) -> None:
        """One storage commit: its duration and how many envelopes it wrote."""
        self.commit_latency.observe(seconds)
        self.commit_batch.observe(envelopes)

    def send_acknowledged(self, seconds: float) -> None:
        self.send_to_ack_latency.observe(seconds)

    def apply(self) -> None:
        """Moves the collected counts and observations into the Prometheus registry."""
        received_types, self._received_types = self._received_types, {}
        sent_types, self._sent_types = self._sent_types, {}
        for direction, types in (("received", received_types), ("sent", sent_types)):
            for kind, n in types.items():
                self._frames[direction, FrameType(kind)].inc(n)
        envelope_counts, self._envelope_counts = self._envelope_counts, {}
        for event, n in envelope_counts.items():
            self._envelopes[event].inc(n)
        received, sent = self._frame_bytes_pending
        self._frame_bytes_pending = [0, 0]
        if received:
            self._frame_bytes["received"].inc(received)
        if sent:
            self._frame_bytes["sent"].inc(sent)

    # Exposition --------------------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The body and Content-Type of a ``/metrics`` response (Prometheus text format).

        The content type carries a charset, which aiohttp's ``content_type=`` refuses; send it as a
        header: ``web.Response(body=body, headers={"Content-Type": content_type})``.
        """
        self.apply()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
