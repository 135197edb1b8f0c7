"""The WSGI glue's caches stay bounded and never change what an app sees."""

from microkit.http import wsgi


def environ_of(target: bytes) -> dict:
    env: dict = {}
    wsgi.set_target(env, target)
    return env


def test_repeated_and_varied_targets_give_the_same_environ_as_a_fresh_split():
    for target in (b"/", b"/a%20b?x=1", b"/p#frag?q", b"http://host/abs?y=2", b"*", b"/x?" + b"q" * 300) * 2:
        env = environ_of(target)
        raw, path, query = wsgi.split_target(target)
        assert (env["RAW_URI"], env["REQUEST_URI"], env["PATH_INFO"], env["QUERY_STRING"]) == (raw, raw, path, query)
    assert environ_of(b"/a%20b?x=1")["PATH_INFO"] == "/a b"
    assert environ_of(b"http://host/abs?y=2")["PATH_INFO"] == "/abs"


def test_the_target_cache_is_bounded_in_entries_and_in_target_length():
    for i in range(wsgi.TARGET_CACHE_SIZE * 3):
        environ_of(b"/items/%d" % i)
    assert len(wsgi._TARGETS) <= wsgi.TARGET_CACHE_SIZE
    environ_of(b"/" + b"x" * (wsgi.TARGET_CACHE_LENGTH + 1))
    assert all(len(target) <= wsgi.TARGET_CACHE_LENGTH for target in wsgi._TARGETS)


def test_an_invalid_status_is_refused_every_time_and_valid_ones_are_remembered():
    response = wsgi.Response(lambda data: None, lambda: False, False, False, True)
    for status in ("200", "abc OK", 200):
        for _ in range(2):
            try:
                wsgi.Response(lambda data: None, lambda: False, False, False, True).start_response(status, [])
            except ValueError:
                continue
            raise AssertionError(f"{status!r} was accepted")
    response.start_response("299 Custom", [])
    assert wsgi._STATUS_CODES["299 Custom"] == 299


def head(headers: list, body: bytes = b"x") -> bytes:
    sent: list[bytes] = []
    response = wsgi.Response(sent.append, lambda: False, False, False, True)
    response.start_response("200 OK", headers)
    response.finish([body])
    return b"".join(sent)


def test_content_length_values_are_checked_every_time_and_header_names_cached_within_bounds():
    for bad in ("+1", " 1", "1_0", "١", 1):
        for _ in range(2):
            try:
                head([("Content-Length", bad)])
            except ValueError:
                continue
            raise AssertionError(f"Content-Length {bad!r} was accepted")
    assert head([("Content-Length", "1")]).endswith(b"\r\n\r\nx")
    assert wsgi._LENGTHS["1"] == 1
    for i in range(600):
        head([(f"X-Name-{i}", "v")])
    assert len(wsgi._LOWER) <= 512
    assert b"\r\nX-Name-599: v\r\n" in head([("X-Name-599", "v")])
    assert b"Connection: close" in head([("CONNECTION", "close")])
