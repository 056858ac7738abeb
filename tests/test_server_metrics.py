"""Relay metrics: the names exist, and no label value outside the fixed sets can be made."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.parser import text_string_to_metric_families

from kluis.relay.frames import FrameType
from kluis.server.metrics import (
    LATENCY_BUCKETS,
    ConnectionKind,
    Direction,
    EnvelopeEvent,
    Histogram,
    Metrics,
    RefusedConnection,
    RejectReason,
)

NAMES = {
    "kluis_connections",
    "kluis_connections_refused",
    "kluis_frames",
    "kluis_frame_bytes_received",
    "kluis_frame_bytes_sent",
    "kluis_envelopes",
    "kluis_send_rejections",
    "kluis_envelope_size_bytes",
    "kluis_store_commit_seconds",
    "kluis_store_commit_batch_envelopes",
    "kluis_send_ack_seconds",
    "kluis_accounts_registered",
    "kluis_accounts_revoked",
    "kluis_bundles_fetched",
    "kluis_prekey_stock_low",
}
ALLOWED_LABELS: dict[str, set[str]] = {
    "kind": set(get_args(ConnectionKind)),
    "reason": set(get_args(RejectReason)) | set(get_args(RefusedConnection)),
    "event": set(get_args(EnvelopeEvent)),
    "direction": set(get_args(Direction)),
    "type": {t.name.lower() for t in FrameType},
}


def families(metrics: Metrics) -> dict[str, Any]:
    body, _ = metrics.render()
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def exercise(m: Metrics) -> None:
    m.connection_opened("authenticated")
    m.connection_opened("sending")
    m.connection_closed("sending")
    m.connection_refused("idle")
    m.frame_received(FrameType.SEND, 4000)
    m.frames_sent([bytes((1, FrameType.SEND_RESULT)) + bytes(38)])
    m.envelopes_accepted([132_213])
    m.envelopes("delivered", 3)
    m.send_rejected("rate_limited")
    m.commit(0.00007, 12)
    m.send_acknowledged(0.0004)
    m.accounts_registered.inc()
    m.accounts_revoked.inc()
    m.bundles_fetched.inc()
    m.prekeys_low.inc()


def test_render_names_every_metric_with_the_prometheus_content_type() -> None:
    m = Metrics()
    exercise(m)
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert set(families(m)) >= NAMES
    assert b"process_cpu_seconds_total" in body


def test_values_are_counted() -> None:
    m = Metrics(process=False)
    exercise(m)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families(m).values() for s in f.samples
    }
    assert samples["kluis_connections", (("kind", "authenticated"),)] == 1
    assert samples["kluis_connections", (("kind", "sending"),)] == 0
    assert samples["kluis_envelopes_total", (("event", "accepted"),)] == 1
    assert samples["kluis_envelopes_total", (("event", "delivered"),)] == 3
    assert samples["kluis_frames_total", (("direction", "received"), ("type", "send"))] == 1
    assert samples["kluis_frame_bytes_received_total", ()] == 4000
    assert samples["kluis_frames_total", (("direction", "sent"), ("type", "send_result"))] == 1
    assert samples["kluis_frame_bytes_sent_total", ()] == 40
    assert samples["kluis_send_rejections_total", (("reason", "rate_limited"),)] == 1
    # The lowest latency bucket is 50 microseconds; envelope sizes have a bucket per padding size.
    assert samples["kluis_store_commit_seconds_bucket", (("le", "5e-05"),)] == 0
    assert samples["kluis_store_commit_seconds_bucket", (("le", "0.0001"),)] == 1
    assert samples["kluis_envelope_size_bytes_bucket", (("le", "132213.0"),)] == 1
    assert samples["kluis_envelope_size_bytes_bucket", (("le", "66677.0"),)] == 0


def test_every_label_value_comes_from_a_fixed_set() -> None:
    m = Metrics(process=False)
    exercise(m)
    for family in families(m).values():
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label == "le":
                    continue
                assert value in ALLOWED_LABELS[label], (family.name, label, value)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.send_rejected("0123456789abcdef"),
        lambda m: m.connection_opened("127.0.0.1"),
        lambda m: m.connection_refused("account"),
        lambda m: m.envelopes("lost"),
        lambda m: m.frame_received(0x42, 1),
    ],
)
def test_a_value_outside_the_set_is_refused(call: Any) -> None:
    m = Metrics(process=False)
    with pytest.raises(KeyError):
        call(m)
    assert "0123456789abcdef" not in m.render()[0].decode()


def test_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.accounts_registered.inc()
    assert b"kluis_accounts_registered_total 0.0" in b.render()[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False) | st.sampled_from(LATENCY_BUCKETS)))
def test_the_histogram_exposes_what_prometheus_clients_own_would(values: list[float]) -> None:
    """metrics.Histogram (no lock per observation; observe and observe_many) against
    prometheus_client's Histogram, bucket bounds included (le is "less than or equal")."""
    ours_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    ours = Histogram("h_seconds", "A latency.", LATENCY_BUCKETS, ours_registry)
    reference = ReferenceHistogram(
        "h_seconds", "A latency.", buckets=LATENCY_BUCKETS, namespace="kluis", registry=reference_registry
    )
    for value in values:
        reference.observe(value)
    half = len(values) // 2
    for value in values[:half]:
        ours.observe(value)
    ours.observe_many(values[half:])  # the batch form counts the same

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        text = generate_latest(registry).decode()
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        }

    theirs = samples(reference_registry)
    assert samples(ours_registry).keys() == theirs.keys()
    for key, value in samples(ours_registry).items():
        assert value == pytest.approx(theirs[key]), key
