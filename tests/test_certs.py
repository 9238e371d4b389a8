"""The webhook's CA and serving certificate (pure: time is passed in)."""

from __future__ import annotations

import datetime

from meshlet.inject.certs import SERVING_LIFETIME, issue_serving, make_ca, serving_is_good

NOW = datetime.datetime(2026, 12, 2, tzinfo=datetime.UTC)
HOSTS = ("meshlet.meshlet-system.svc", "meshlet.meshlet-system.svc.cluster.local", "127.0.0.1")


def test_a_fresh_certificate_is_good_until_two_thirds_of_its_life() -> None:
    ca = make_ca(NOW)
    serving = issue_serving(ca, HOSTS, NOW)
    assert serving_is_good(serving, ca, HOSTS, NOW)
    assert serving_is_good(serving, ca, HOSTS, NOW + SERVING_LIFETIME * 0.6)
    assert not serving_is_good(serving, ca, HOSTS, NOW + SERVING_LIFETIME * 0.7)


def test_a_certificate_for_other_names_or_from_another_ca_is_not() -> None:
    ca = make_ca(NOW)
    serving = issue_serving(ca, HOSTS[:2], NOW)
    assert not serving_is_good(serving, ca, HOSTS, NOW)  # 127.0.0.1 is missing
    assert not serving_is_good(issue_serving(make_ca(NOW), HOSTS, NOW), ca, HOSTS, NOW)
    garbage = type(serving)(b"not a certificate", serving.key)
    assert not serving_is_good(garbage, ca, HOSTS, NOW)
