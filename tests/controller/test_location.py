"""The address written into connection files, and when CurveZMQ is on."""

from __future__ import annotations

import pytest

from corral.controller.location import (
    curve_decision,
    is_loopback,
    outside_addresses,
    reachable_address,
)
from corral.errors import CorralError


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.4.5") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("login1")


def test_reachable_address_never_the_wildcard() -> None:
    assert reachable_address("10.1.2.3") == "10.1.2.3"
    assert reachable_address("0.0.0.0", "login1.example") == "login1.example"
    with pytest.raises(CorralError, match="not an address other hosts can reach"):
        reachable_address("0.0.0.0", "0.0.0.0")
    addresses = outside_addresses()
    if addresses:
        assert reachable_address("0.0.0.0") == addresses[0]
        assert reachable_address("*") != "0.0.0.0"
    else:
        with pytest.raises(CorralError, match="--location"):
            reachable_address("0.0.0.0")


def test_curve_is_on_beyond_loopback_unless_refused_loudly() -> None:
    assert curve_decision("127.0.0.1", None, False, False) == (False, "")
    assert curve_decision("127.0.0.1", None, True, False) == (True, "")
    on, why = curve_decision("0.0.0.0", None, False, False)
    assert on and "CurveZMQ is on" in why
    assert curve_decision("127.0.0.1", "login1", False, False)[0]
    off, warning = curve_decision("0.0.0.0", None, False, True)
    assert not off and "NOT encrypted" in warning
    with pytest.raises(CorralError, match="contradict"):
        curve_decision("0.0.0.0", None, True, True)
