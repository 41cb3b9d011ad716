"""A live web dashboard over a cluster and its task history (``corral dashboard``).

:mod:`.server` (aiohttp: HTTP and WebSocket) serves the page and its API; :mod:`.link` is its
connection to the Hub; :mod:`.model` the sans-I/O picture of the cluster; :mod:`.auth` the
token and cross-site rules; :mod:`.details` turns stored records into rows and task pages;
``static/`` holds the page, its script and its charts, written for corral (no third-party
script, nothing fetched from the internet).

aiohttp comes with the ``dashboard`` extra (``pip install 'corral[dashboard]'``); without it
the rest of corral works and ``corral start`` says how to get the dashboard.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "the dashboard needs aiohttp: pip install 'corral[dashboard]'"


def available() -> bool:
    """Whether the dashboard's web stack is installed."""
    return importlib.util.find_spec("aiohttp") is not None
