"""Who may use the dashboard: the cluster's token, and no cross-site actions.

Decisions only (no server here), so every rule is tested directly:

- The token is derived from the cluster's signing key (an HMAC of a fixed label), so everyone
  holding the connection file can compute it, the key itself never appears in a URL, and a
  restarted dashboard keeps the same URL. A cluster without a key gets a random token.
- A request is allowed with the token in the query (``?token=``, the URL printed at start, as
  Jupyter does: the page then stores it in a cookie and drops it from the address bar) or in
  the ``corral_dashboard`` cookie. Comparisons take constant time. Anything else: 403, with a
  body that says nothing about the cluster.
- A request whose ``Origin`` header names another site is refused (the WebSocket too).
- Actions (POST) need more: the cookie (``SameSite=Strict``, so no other site's page sends it)
  and the ``X-Corral-CSRF`` header holding a value derived from the token: a cross-site form
  cannot set a custom header, and a cross-site script cannot read the value.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE = "corral_dashboard"
CSRF_HEADER = "X-Corral-CSRF"
_TOKEN_LABEL = b"corral dashboard token v1"
_CSRF_LABEL = b"corral dashboard csrf v1"


def derive_token(key: bytes) -> str:
    """The dashboard token of a cluster with signing key ``key`` (random if it has none)."""
    if not key:
        return secrets.token_hex(16)
    return hmac.new(key, _TOKEN_LABEL, hashlib.sha256).hexdigest()[:32]


def csrf_value(token: str) -> str:
    """The value actions must carry in the ``X-Corral-CSRF`` header."""
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()[:32]


def _same(given: str | None, expected: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


@dataclass(frozen=True)
class Verdict:
    """``allowed``; ``set_cookie`` when the token came in the URL; ``reason`` for the log."""

    allowed: bool
    set_cookie: bool = False
    reason: str = ""


class Gate:
    """Checks every request against one token."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.csrf = csrf_value(token)

    def check(
        self,
        method: str,
        query: Mapping[str, str],
        cookies: Mapping[str, str],
        headers: Mapping[str, str],
        host: str,
    ) -> Verdict:
        """May this request go on? ``host`` is the request's Host header (for Origin)."""
        origin = headers.get("Origin")
        if origin is not None and not same_origin(origin, host):
            return Verdict(False, reason=f"{method} from another origin ({origin})")
        by_cookie = _same(cookies.get(COOKIE), self.token)
        if method in ("GET", "HEAD"):
            if by_cookie:
                return Verdict(True)
            if _same(query.get("token"), self.token):
                return Verdict(True, set_cookie=True)
            return Verdict(False, reason="no valid token")
        if not by_cookie:
            return Verdict(False, reason=f"{method} without the token cookie")
        if not _same(headers.get(CSRF_HEADER), self.csrf):
            return Verdict(False, reason=f"{method} without the {CSRF_HEADER} header")
        return Verdict(True)


def same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names this server (``http://`` + the Host the browser used)."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()
