"""The seam between views and the client: views use the Submitter protocol only."""

from __future__ import annotations

import re
from pathlib import Path

import corral.client

CLIENT = Path(corral.client.__file__).parent
# modules on the view side of the seam (the client's own modules, its mixins and its shell may
# use its internals)
VIEW_SIDE = [
    "view.py",
    "balanced.py",
    "broadcast.py",
    "dataview.py",
    "deferred.py",
    "executor.py",
    "joblib_backend.py",
    "lazymap.py",
    "magics.py",
    "remotefunction.py",
    "asyncresult.py",
    "asyncmapresult.py",
    "resultinfo.py",
]


def test_no_view_reaches_into_client_internals() -> None:
    private = re.compile(r"client\._[a-z]")
    found = {
        name: private.findall((CLIENT / name).read_text(encoding="utf-8")) for name in VIEW_SIDE
    }
    assert {name: hits for name, hits in found.items() if hits} == {}
