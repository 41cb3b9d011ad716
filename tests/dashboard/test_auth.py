"""The dashboard's gate: the token, the cookie, and no cross-site actions."""

from __future__ import annotations

from corral.dashboard.auth import COOKIE, CSRF_HEADER, Gate, csrf_value, derive_token, same_origin

HOST = "127.0.0.1:8123"


def gate() -> Gate:
    return Gate(derive_token(b"cluster-key"))


def test_the_token_is_derived_from_the_key_and_is_not_the_key() -> None:
    token = derive_token(b"cluster-key")
    assert token == derive_token(b"cluster-key")
    assert token != derive_token(b"other-key")
    assert "cluster-key" not in token and len(token) == 32


def test_a_cluster_without_a_key_gets_a_random_token() -> None:
    assert derive_token(b"") != derive_token(b"")


def test_get_needs_the_token_in_the_query_or_the_cookie() -> None:
    g = gate()
    assert not g.check("GET", {}, {}, {}, HOST).allowed
    assert not g.check("GET", {"token": "wrong"}, {}, {}, HOST).allowed
    assert not g.check("GET", {}, {COOKIE: "wrong"}, {}, HOST).allowed
    by_url = g.check("GET", {"token": g.token}, {}, {}, HOST)
    assert by_url.allowed and by_url.set_cookie
    by_cookie = g.check("GET", {}, {COOKIE: g.token}, {}, HOST)
    assert by_cookie.allowed and not by_cookie.set_cookie


def test_a_token_that_differs_only_in_length_or_case_is_refused() -> None:
    g = gate()
    for token in (g.token[:-1], g.token + "0", g.token.upper(), ""):
        assert not g.check("GET", {"token": token}, {}, {}, HOST).allowed


def test_post_needs_cookie_and_csrf_header() -> None:
    g = gate()
    cookie = {COOKIE: g.token}
    header = {CSRF_HEADER: csrf_value(g.token)}
    assert g.check("POST", {}, cookie, header, HOST).allowed
    assert not g.check("POST", {}, cookie, {}, HOST).allowed
    assert not g.check("POST", {}, {}, header, HOST).allowed
    # the token in the URL is not enough for an action: a link could carry it
    assert not g.check("POST", {"token": g.token}, {}, header, HOST).allowed
    assert not g.check("POST", {}, cookie, {CSRF_HEADER: g.token}, HOST).allowed


def test_another_origin_is_refused_even_with_the_token() -> None:
    g = gate()
    cookie = {COOKIE: g.token}
    header = {CSRF_HEADER: csrf_value(g.token)}
    evil = {"Origin": "http://evil.example", **header}
    assert not g.check("POST", {}, cookie, evil, HOST).allowed
    assert not g.check(
        "GET", {"token": g.token}, {}, {"Origin": "http://evil.example"}, HOST
    ).allowed
    same = {"Origin": f"http://{HOST}", **header}
    assert g.check("POST", {}, cookie, same, HOST).allowed


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:8123", "127.0.0.1:8123")
    assert not same_origin("http://127.0.0.1:8124", "127.0.0.1:8123")
    assert not same_origin("null", "127.0.0.1:8123")
    assert not same_origin("file://127.0.0.1:8123", "127.0.0.1:8123")
