"""How loudly the sidecar says its xDS stream failed again (meshlet/sidecar/xds_outage.py):
one WARNING per run of failures and per error, a repeat at most every 5 minutes, and
one line with how long it was down when the stream is back."""

from __future__ import annotations

import logging

from meshlet.sidecar.xds_outage import Outage, OutageLog, Verdict

GONE = (
    "UNAVAILABLE: DNS resolution failed for meshlet.meshlet-system.svc:15010: Domain name not found"
)
REFUSED = "UNAVAILABLE: failed to connect to all addresses; Connection refused"


def levels(log: OutageLog, failures: list[tuple[float, str]]) -> list[int]:
    return [log.failed(now, error).level for now, error in failures]


def test_only_the_first_failure_of_a_run_is_a_warning() -> None:
    log = OutageLog(every=300)
    # Retried every few seconds for a minute: one WARNING, the rest at DEBUG.
    got = levels(log, [(t, GONE) for t in range(0, 60, 5)])
    assert got == [logging.WARNING] + [logging.DEBUG] * 11


def test_the_same_error_is_a_warning_again_every_5_minutes_saying_how_many_were_not() -> None:
    log = OutageLog(every=300)
    assert log.failed(0, GONE) == Verdict(logging.WARNING, 0)
    for now in range(15, 300, 15):  # 19 repeats inside the 5 minutes
        assert log.failed(now, GONE).level == logging.DEBUG
    again = log.failed(300, GONE)
    assert again == Verdict(logging.WARNING, 19)
    assert again.note() == " (19 more like it since the last warning, logged at debug)"
    # The count starts over from that WARNING.
    assert log.failed(310, GONE).level == logging.DEBUG
    assert log.failed(600, GONE) == Verdict(logging.WARNING, 1)


def test_another_error_is_news() -> None:
    log = OutageLog(every=300)
    assert levels(log, [(0, GONE), (5, GONE), (10, REFUSED), (15, REFUSED), (20, GONE)]) == [
        logging.WARNING,
        logging.DEBUG,
        logging.WARNING,  # the Service is back but nothing listens: worth saying
        logging.DEBUG,
        logging.DEBUG,  # flapping between two errors is not a WARNING each time
    ]


def test_a_debug_line_and_a_first_warning_add_nothing() -> None:
    assert Verdict(logging.DEBUG, 0).note() == ""
    assert Verdict(logging.WARNING, 0).note() == ""


def test_the_stream_up_again_tells_how_long_and_how_many_reconnects() -> None:
    log = OutageLog(every=300)
    assert log.up(0) is None  # up with no failure before: nothing to tell
    for now in (100.0, 103.0, 110.0):
        log.failed(now, GONE)
    outage = log.up(112.5)
    assert outage == Outage(seconds=12.5, reconnects=3)
    assert outage.note() == ": down 12.5s, 3 reconnect attempts"
    assert log.up(113) is None  # told once
    # The next run of failures is news again, from its own start.
    assert log.failed(200, GONE) == Verdict(logging.WARNING, 0)
    assert log.up(201) == Outage(seconds=1, reconnects=1)


def test_errors_that_never_repeat_do_not_grow_it_without_bound() -> None:
    log = OutageLog(every=300)
    for n in range(1000):  # an address or a port in every message
        assert log.failed(n, f"UNAVAILABLE: 10.0.{n // 256}.{n % 256}: refused").level == (
            logging.WARNING
        )
    assert len(log._errors) <= 16
