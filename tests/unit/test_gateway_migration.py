"""Pure parts of the migration features: comparing answers, ignore rules, buckets, settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microkit.config import parse
from microkit.errors import ConfigError
from microkit.gateway.compare import Answer, BodyCapture, compare, general, rule_pattern
from microkit.gateway.migration import bucket


def answer(body, status=200, kind="application/json", limit=65536, **headers) -> Answer:
    capture = BodyCapture(limit)
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    for start in range(0, len(data), 7):
        capture(data[start:start + 7])
    pairs = [(b"Content-Type", kind.encode())] + [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Answer.of(status, pairs, capture)


def test_equal_answers_have_no_differences():
    assert compare(answer({"a": 1, "b": [1, 2]}), answer({"b": [1, 2], "a": 1}), ["content-type"]) == []


def test_json_differences_are_named_by_path():
    found = compare(answer({"a": {"b": 1}, "items": [{"id": 1}, {"id": 2}]}),
                    answer({"a": {"b": 2}, "items": [{"id": 1}], "extra": True}))
    assert found == [("$.a.b", 1, 2), ("$.extra", None, True), ("$.items[1]", {"id": 2}, None)]


def test_type_changes_count():
    assert compare(answer({"n": 1}), answer({"n": 1.0})) == [("$.n", 1, 1.0)]


def test_ignore_rules_cover_a_field_what_is_below_it_and_list_wildcards():
    left = answer({"created_at": 1, "meta": {"t": 1}, "items": [{"id": 1, "at": 1}, {"id": 2, "at": 2}]}, Date="x")
    right = answer({"created_at": 2, "meta": {"t": 2}, "items": [{"id": 1, "at": 3}, {"id": 2, "at": 4}]}, Date="y")
    assert len(compare(left, right, ["date"])) == 5
    ignore = rule_pattern(["$.created_at", "$.meta", "$.items[*].at", "header:date"])
    assert compare(left, right, ["date"], ignore) == []
    assert rule_pattern(["$.created"]).match("$.created_at") is None


def test_status_headers_and_non_json_bodies():
    found = compare(answer(b"hello", 200, "text/plain"), answer(b"hellO", 500, "text/html"), ["content-type"])
    assert [f for f, _, _ in found] == ["status", "header:content-type", "body"]
    assert found[2][1].startswith("sha256:")


def test_bodies_over_the_limit_are_compared_by_digest():
    big = {"x": "y" * 100}
    assert compare(answer(big, limit=10), answer(big, limit=10)) == []
    found = compare(answer(big, limit=10), answer({"x": "z" * 100}, limit=10))
    assert [f for f, _, _ in found] == ["body"]


def test_noise_is_remembered_with_wildcard_indexes():
    assert general("$.items[3].at[0]") == "$.items[*].at[*]"


def test_buckets_are_stable_and_spread():
    assert bucket(b"user-1") == bucket(b"user-1")
    places = [bucket(f"user-{i}".encode()) for i in range(4000)]
    assert all(0 <= p < 100 for p in places)
    assert 900 < sum(p < 25 for p in places) < 1100


BASE = '[project]\nname = "shop"\n[gateway]\nlegacy = "{legacy}"\n[services.old]\ncommand = "run"\n' \
       '[services.users]\napp = "a:b"\nroute = "/users"\n'


def error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, Path("microkit.toml"))
    return str(caught.value)


def test_migration_settings_parse():
    config = parse(BASE.format(legacy="old") + 'split = 10\nsticky = "cookie:sid"\nfailover = ["connect", 503]\n'
                   'shadow = { percent = 5, methods = ["GET"], ignore = ["$.created_at", "header:date"] }\n',
                   Path("microkit.toml"))
    users = config.services["users"]
    assert (config.gateway.legacy, users.split, users.sticky, users.failover) == ("old", 10.0, "cookie:sid",
                                                                                 ("connect", 503))
    assert users.shadow.percent == 5 and users.shadow.queue == 100 and users.shadow.ignore == ("$.created_at",
                                                                                               "header:date")


@pytest.mark.parametrize("legacy, extra, message", [
    ("nope", "", 'gateway.legacy: "nope" is neither "http://HOST:PORT" nor a service (known: old, users)'),
    ("https://x:1", "", 'gateway.legacy: expected "http://HOST:PORT" or the name of a service, got "https://x:1"'),
    ("users", "", "services.users.route: the legacy service gets every unmatched path; remove its route"),
    ("old", "split = 101\n", "services.users.split: expected a percentage from 0 to 100, got 101"),
    ("old", 'sticky = "session"\n', 'services.users.sticky: expected "client", "cookie:NAME" or "header:NAME", '
                                    'got "session"'),
    ("old", "failover = [404]\n", 'services.users.failover: expected "connect" or statuses from 500 to 599, got 404'),
    ("old", 'shadow = { ignore = ["created_at"] }\n', "services.users.shadow.ignore: expected JSON paths"),
    ("old", "shadow = { precent = 5 }\n", 'services.users.shadow.precent: unknown key; did you mean "percent"?'),
])
def test_bad_migration_settings_name_the_key(legacy, extra, message):
    assert message in error(BASE.format(legacy=legacy) + extra)


def test_split_needs_a_legacy_upstream():
    text = '[project]\nname = "shop"\n[services.users]\napp = "a:b"\nroute = "/users"\nsplit = 10\n'
    assert error(text) == "microkit.toml: services.users.split: needs gateway.legacy (the other side)"


def request(headers=(), peer="10.0.0.1"):
    from microkit.http import Request
    from microkit.http.body import EMPTY
    from microkit.http.wsgi import environ_key
    return Request("GET", b"/users/1", "HTTP/1.1", list(headers), [environ_key(n) for n, _ in headers], {}, None,
                   False, EMPTY, True, {"REMOTE_ADDR": peer}, lambda data: None, lambda: False)


def migration_for(sticky: str, split: float = 50):
    from microkit.gateway.migration import RouteMigration
    text = BASE.format(legacy="old") + f'split = {split}\nsticky = "{sticky}"\n'
    return RouteMigration.of(parse(text, Path("microkit.toml")).services["users"])


def test_sticky_keys_come_from_a_cookie_a_header_or_the_client():
    cookie = migration_for("cookie:sid")
    assert cookie.sticky_value(request([(b"Cookie", b"a=1; sid=xyz")])) == b"xyz"
    assert cookie.sticky_value(request([(b"Cookie", b"a=1")])) is None
    assert cookie.sticky_value(request([(b"Cookie", b'bad"cookie')])) is None
    header = migration_for("header:X-User")
    assert header.sticky_value(request([(b"x-user", b"u1"), (b"Cookie", b"sid=1")])) == b"u1"
    assert header.sticky_value(request()) is None
    assert migration_for("client").sticky_value(request(peer="10.9.8.7")) == b"10.9.8.7"


def test_a_header_with_an_underscore_cannot_be_sticky():
    assert "services.users.sticky: expected" in error(BASE.format(legacy="old") + 'sticky = "header:X_User"\n')


def test_mismatches_waiting_for_the_store_are_bounded(tmp_path):
    from microkit.gateway.app import Gateway
    config = parse(BASE.format(legacy="old") + "shadow = { keep = 3 }\n", tmp_path / "microkit.toml")
    migration = Gateway(config).migration
    for n in range(10):
        migration.remember("users", {"n": n}, 3)
    assert migration.pending["users"] == [{"n": 7}, {"n": 8}, {"n": 9}]


def test_json_nested_too_deep_is_compared_by_digest():
    deep = b"[" * 5000 + b"]" * 5000
    assert compare(answer(deep), answer(deep)) == []
    assert [f for f, _, _ in compare(answer(deep), answer(deep[:-1] + b" ]"))] == ["body"]
