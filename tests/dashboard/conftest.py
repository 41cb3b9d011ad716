"""A cluster with its dashboard, shared by a test module, and polling helpers."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import running_cluster
from tests.polling import until

T = TypeVar("T")


@pytest.fixture(scope="module")
def dashboard_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A controller, 4 engines and ``corral dashboard`` beside them (stopped at the end)."""
    with running_cluster(tmp_path_factory.mktemp("dashboard"), 4, dashboard=True) as cluster:
        assert cluster.dashboard_url is not None
        yield cluster


def wait_until(check: Callable[[], T], timeout: float, what: str, period: float = 0.1) -> T:
    """:func:`tests.polling.until` at a page's pace (a page or a server: no event to await)."""
    return until(check, timeout, what, interval=period)


def base_url(cluster: Any) -> str:
    return str(cluster.dashboard_url).split("/?", 1)[0]


def token(cluster: Any) -> str:
    return str(cluster.dashboard_url).split("token=", 1)[1]


def http(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A request without following redirects: status, headers and body, errors included."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
