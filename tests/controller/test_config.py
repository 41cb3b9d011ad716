"""What a controller is told (corral/controller/config.py): refused when wrong, before any
process starts, and the fast-path settings derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.controller.config import ControllerConfig, shm_settings
from corral.controller.packing import MAX_BURST_PACKING
from corral.controller.scheduling_state import MAX_BURST_PREFETCH
from corral.sharedmem import cluster_prefix, host_identity


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("burst_prefetch", 0, "from 1"),
        ("burst_prefetch", MAX_BURST_PREFETCH + 1, "from 1"),
        ("burst_prefetch", 2.0, "whole number"),
        ("burst_prefetch", True, "whole number"),
        ("burst_packing", -1, "from 0"),
        ("burst_packing", MAX_BURST_PACKING + 1, "from 0"),
        ("burst_packing", 1.5, "whole number"),
        ("max_outstanding", 0, ">= 1"),
    ],
)
def test_a_bad_scheduler_setting_is_refused_by_the_config(
    tmp_path: Path, field: str, value: object, why: str
) -> None:
    """Refused before a scheduler process starts (which would only fail once running)."""
    with pytest.raises(ValueError, match=why):
        ControllerConfig(cluster_path=tmp_path, **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["lone_hub_link_grace", "reregistration_grace"])
@pytest.mark.parametrize("grace", [-1.0, float("nan"), float("inf")])
def test_a_grace_that_is_no_duration_is_refused(tmp_path: Path, field: str, grace: float) -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        ControllerConfig(cluster_path=tmp_path, **{field: grace})  # type: ignore[arg-type]


def test_the_same_host_fast_path_is_off_unless_signed_and_wanted(tmp_path: Path) -> None:
    """A segment reference must come with a signature, and a threshold of 0 turns it off."""
    assert shm_settings(ControllerConfig(cluster_path=tmp_path)) is None  # no key
    assert shm_settings(ControllerConfig(cluster_path=tmp_path, key=b"k", shm_threshold=0)) is None
    settings = shm_settings(ControllerConfig(cluster_path=tmp_path, key=b"k", shm_threshold=512))
    if host_identity() is None:  # no usable /dev/shm here
        assert settings is None
        return
    assert settings is not None
    assert (settings.prefix, settings.threshold) == (cluster_prefix(tmp_path), 512)
