"""Routing: longest prefix on segment boundaries, and paths that must not step out of a prefix."""

import pytest

from microkit.gateway.routing import BadPath, RouteTable, normalize, split_target

TABLE = RouteTable([("/users", "users"), ("/users/admin", "admin"), ("/orders", "orders")])


@pytest.mark.parametrize("path, prefix", [
    ("/users", "/users"), ("/users/", "/users"), ("/users/1", "/users"), ("/users/1/x?y", "/users"),
    ("/users/admin", "/users/admin"), ("/users/admin/2", "/users/admin"), ("/users/adminx", "/users"),
    ("/orders", "/orders"), ("/usersx", None), ("/user", None), ("/", None), ("/Users", None),
])
def test_longest_prefix_on_segment_boundaries(path, prefix):
    match = TABLE.match(path.partition("?")[0])
    assert (match.prefix if match else None) == prefix


def test_catch_all_route_takes_the_rest():
    table = RouteTable([("/", "legacy"), ("/users", "users")])
    assert table.match("/anything/else").target == "legacy"
    assert table.match("/").target == "legacy"
    assert table.match("/users/7").target == "users"


def test_items_are_longest_first_and_duplicates_refused():
    assert [p for p, _ in TABLE.items()] == ["/users/admin", "/orders", "/users"]
    with pytest.raises(ValueError):
        RouteTable([("/a", 1), ("/a", 2)])
    with pytest.raises(ValueError):
        RouteTable([("/a/", 1)])


@pytest.mark.parametrize("raw, normal", [
    (b"/users/1", b"/users/1"),
    (b"/users/../admin", b"/admin"),
    (b"/users/%2e%2e/admin", b"/admin"),
    (b"/users/%2E%2E/%2e%2E/etc", b"/etc"),
    (b"/users/./1", b"/users/1"),
    (b"/users/1/..", b"/users/"),
    (b"/../../x", b"/x"),
    (b"/users/a.b/..c", b"/users/a.b/..c"),
    (b"/users/%41", b"/users/%41"),
])
def test_dot_segments_are_resolved_before_matching(raw, normal):
    assert normalize(raw) == normal


@pytest.mark.parametrize("raw", [b"/users%2F..%2Fadmin", b"/users/..%2fadmin", b"/users%5c..%5cadmin",
                                 b"/users/%00", b"users", b"*"])
def test_encoded_separators_are_refused(raw):
    with pytest.raises(BadPath):
        normalize(raw)


def test_split_target_keeps_the_query_as_is():
    assert split_target(b"/a/b?x=1&y=%2F") == (b"/a/b", b"?x=1&y=%2F")
    assert split_target(b"/a") == (b"/a", b"")
