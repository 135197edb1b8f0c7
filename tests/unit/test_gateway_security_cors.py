"""CORS per the Fetch standard: preflights allowed and refused (refusals carry no CORS headers and the
same 204), actual responses, credentials, wildcards, Vary."""

from __future__ import annotations

import pytest

from microkit.gateway.security.cors import CorsPolicy, normalise_origin
from microkit.gateway.security.request import RequestInfo

APP = "https://app.example.com"
PREFLIGHT_VARY = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def req(method: str = "OPTIONS", origin: str | list[str] | None = APP, request_method: str | None = "PUT",
        request_headers: str | None = None) -> RequestInfo:
    headers: dict[str, list[str]] = {}
    if origin is not None:
        headers["origin"] = origin if isinstance(origin, list) else [origin]
    if request_method is not None:
        headers["access-control-request-method"] = [request_method]
    if request_headers is not None:
        headers["access-control-request-headers"] = [request_headers]
    return RequestInfo(method, "/orders", headers, "127.0.0.1")


@pytest.fixture
def policy() -> CorsPolicy:
    return CorsPolicy([APP, "http://localhost:3000"], methods=["GET", "POST", "PUT", "DELETE"],
                      headers=["Content-Type", "X-Request-Id", "Authorization"], expose_headers=["X-Request-Id"],
                      credentials=True, max_age=600)


def refused(result) -> None:
    """A refusal looks like any preflight answer, minus every Access-Control-* header."""
    assert result == (204, [PREFLIGHT_VARY])


# --- preflight -------------------------------------------------------------------------------------------

def test_allowed_preflight(policy):
    status, headers = policy.preflight(req(request_headers="content-type, x-request-id"))
    assert status == 204
    assert headers == [
        PREFLIGHT_VARY,
        ("Access-Control-Allow-Origin", APP),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE"),
        ("Access-Control-Allow-Headers", "content-type, x-request-id"),
        ("Access-Control-Max-Age", "600"),
    ]


def test_preflight_allows_only_the_requested_headers_case_insensitively(policy):
    _, headers = policy.preflight(req(request_headers="X-REQUEST-ID"))
    assert dict(headers)["Access-Control-Allow-Headers"] == "x-request-id"
    _, headers = policy.preflight(req())
    assert "Access-Control-Allow-Headers" not in dict(headers)


def test_preflight_from_a_disallowed_origin_gets_no_cors_headers(policy):
    refused(policy.preflight(req(origin="https://evil.example")))
    refused(policy.preflight(req(origin="https://app.example.com.evil.example")))
    refused(policy.preflight(req(origin="http://app.example.com")))
    refused(policy.preflight(req(origin="null")))


def test_preflight_for_a_disallowed_method_gets_no_cors_headers(policy):
    refused(policy.preflight(req(request_method="PATCH")))
    refused(policy.preflight(req(request_method="put")))  # methods are case-sensitive in Fetch


def test_preflight_for_a_disallowed_header_gets_no_cors_headers(policy):
    refused(policy.preflight(req(request_headers="content-type, x-secret")))


def test_preflight_with_two_origins_gets_no_cors_headers(policy):
    refused(policy.preflight(req(origin=[APP, "https://evil.example"])))


def test_requests_that_are_not_preflights(policy):
    assert policy.preflight(req(method="GET")) is None
    assert policy.preflight(req(origin=None)) is None
    assert policy.preflight(req(request_method=None)) is None


def test_any_origin_without_credentials_answers_star():
    policy = CorsPolicy("*", methods=["GET", "POST"])
    _, headers = policy.preflight(req(origin="https://anyone.example", request_method="POST",
                                      request_headers="Content-Type"))
    assert dict(headers)["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in dict(headers)


def test_any_origin_with_credentials_is_refused_at_configuration():
    with pytest.raises(ValueError, match="list the origins instead"):
        CorsPolicy("*", credentials=True)


def test_credentials_never_answer_star(policy):
    for result in (policy.preflight(req()), (204, policy.response_headers(req(method="GET")))):
        headers = dict(result[1])
        assert headers["Access-Control-Allow-Origin"] == APP
        assert headers["Access-Control-Allow-Credentials"] == "true"


def test_header_wildcard_allows_any_header_but_authorization():
    policy = CorsPolicy([APP], methods=["PUT"], headers="*")
    _, headers = policy.preflight(req(request_headers="x-anything, content-type"))
    assert dict(headers)["Access-Control-Allow-Headers"] == "x-anything, content-type"
    refused(policy.preflight(req(request_headers="x-anything, authorization")))
    policy = CorsPolicy([APP], methods=["PUT"], headers=["*", "Authorization"])
    assert "authorization" in dict(policy.preflight(req(request_headers="authorization"))[1])[
        "Access-Control-Allow-Headers"]


def test_subdomain_wildcard_origins():
    policy = CorsPolicy(["https://*.example.com"], methods=["PUT"])
    assert policy.origin_allowed("https://app.example.com")
    assert policy.origin_allowed("https://a.b.example.com")
    assert not policy.origin_allowed("https://example.com")
    assert not policy.origin_allowed("http://app.example.com")
    assert not policy.origin_allowed("https://app.example.com.evil.net")
    assert not policy.origin_allowed("https://evilexample.com")
    assert not policy.origin_allowed("https://app.example.com:8443")


# --- actual requests -------------------------------------------------------------------------------------

def test_actual_request_from_an_allowed_origin(policy):
    assert policy.response_headers(req(method="GET", request_method=None)) == [
        ("Vary", "Origin"),
        ("Access-Control-Allow-Origin", APP),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Request-Id"),
    ]


def test_actual_request_from_another_origin_gets_only_vary(policy):
    assert policy.response_headers(req(method="GET", origin="https://evil.example")) == [("Vary", "Origin")]
    assert policy.response_headers(req(method="GET", origin=None)) == [("Vary", "Origin")]


# --- configuration ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [
    ("https://App.Example.com", "https://app.example.com"), ("https://app.example.com/", "https://app.example.com"),
    ("https://app.example.com:443", "https://app.example.com"), ("http://localhost:80", "http://localhost"),
    ("http://localhost:3000", "http://localhost:3000"), ("http://[::1]:8080", "http://[::1]:8080"),
    ("null", "null"),
])
def test_configured_origins_are_normalised_like_browsers_send_them(given, expected):
    assert normalise_origin(given) == expected


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/path", "https://x?y=1",
                                 "https://user@x", "https://x:notaport"])
def test_bad_origins_are_refused_at_configuration(bad):
    with pytest.raises(ValueError, match="write scheme://host"):
        CorsPolicy([bad])


def test_bad_methods_headers_and_max_age_are_refused():
    with pytest.raises(ValueError, match="not a valid token"):
        CorsPolicy([APP], methods=["GET PUT"])
    with pytest.raises(ValueError, match="not a valid token"):
        CorsPolicy([APP], headers=["X:Y"])
    with pytest.raises(ValueError, match="max_age"):
        CorsPolicy([APP], max_age=-1)
