"""Timer durations as typed and shown (kluis.client.durations)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kluis.client.content import MAX_TIMER, MIN_TIMER
from kluis.client.durations import DEFAULT_TIMER, format_timer, parse_timer


class TestParse:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            ("off", 0),
            (" OFF ", 0),
            ("Off", 0),
            ("0", 0),
            ("0s", 0),
            ("30s", 30),
            ("30", 30),
            ("5", 5),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86400),
            ("4w", MAX_TIMER),
            ("28d", MAX_TIMER),
            ("1h30m", 5400),
            ("1H30M", 5400),
            ("1h 30m", 5400),
            ("1w2d3h4m5s", 7 * 86400 + 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
            ("\t90s\n", 90),
        ],
    )
    def test_accepted(self, text: str, seconds: int) -> None:
        assert parse_timer(text) == seconds

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "  ",
            "abc",
            "on",
            "5x",
            "m",
            "1.5h",
            "-5",
            "+5",
            "1m1h",
            "1h1h",
            "1_0",
            "٣٠",
            "0x10",
            "5 minutes",
        ],
    )
    def test_unparseable(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"cannot read the timer: .*5s to 4w"):
            parse_timer(text)

    @pytest.mark.parametrize("text", ["4", "4s", "1", "29d", "5w", "4w1s", "2419201", "99999999999999999999"])
    def test_out_of_range(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"out of range: .*5s to 4w"):
            parse_timer(text)

    def test_long_input_is_refused_before_int(self) -> None:
        with pytest.raises(ValueError, match="cannot read"):
            parse_timer("1" * 5000)


class TestFormat:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "off"),
            (5, "5s"),
            (30, "30s"),
            (60, "1m"),
            (90, "1m30s"),
            (300, "5m"),
            (5400, "1h30m"),
            (86400, "1d"),
            (86401, "1d1s"),
            (7 * 86400, "1w"),
            (MAX_TIMER, "4w"),
        ],
    )
    def test_forms(self, seconds: int, text: str) -> None:
        assert format_timer(seconds) == text

    def test_negative(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            format_timer(-1)

    @given(st.one_of(st.just(0), st.integers(MIN_TIMER, MAX_TIMER)))
    def test_round_trip(self, seconds: int) -> None:
        assert parse_timer(format_timer(seconds)) == seconds
        assert parse_timer(format_timer(seconds).upper()) == seconds


def test_default_is_a_valid_timer() -> None:
    assert DEFAULT_TIMER == 30
    assert parse_timer(format_timer(DEFAULT_TIMER)) == DEFAULT_TIMER
    assert MIN_TIMER <= DEFAULT_TIMER <= MAX_TIMER
