"""The engine's compiled hot path (microkit/http/_speedups.c) and its pure-Python fallback: built where a
compiler is, optional where none is, the same answers on both paths, and no leaks."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cli import REPO
from support.http import Reader, ServerThread, connect
from microkit.http import HTTPError, Limits, connection, wsgi
from microkit.http.native import speedups

ENGINE_TESTS = ["tests/integration/test_http_engine.py", "tests/integration/test_http_strict.py",
                "tests/unit/test_http_wsgi.py", __file__]
PURE = os.environ.get("MICROKIT_PURE_PYTHON") == "1"
needs_speedups = pytest.mark.skipif(speedups is None, reason="the compiled hot path is not in use")


def test_the_extension_is_built_where_a_compiler_is():
    """CI and this machine have gcc: a broken build must fail here rather than fall back unnoticed."""
    if PURE or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("pure-Python run, or no C compiler")
    assert speedups is not None


@pytest.mark.skipif(PURE, reason="this is the pure-Python run")
def test_the_engine_tests_pass_on_the_pure_python_path():
    """The engine's tests, this file included, again with MICROKIT_PURE_PYTHON=1 in a subprocess."""
    env = {**os.environ, "MICROKIT_PURE_PYTHON": "1"}
    check = subprocess.run([sys.executable, "-c", "from microkit.http.native import speedups; print(speedups)"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() == "None", check.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *ENGINE_TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout


@pytest.mark.skipif(PURE, reason="this is the pure-Python run")
def test_the_build_succeeds_without_a_compiler_and_leaves_the_extension_out(tmp_path):
    """The extension is optional: with a compiler that fails, setup.py still builds microkit, pure Python."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy2(REPO / "setup.py", source / "setup.py")
    shutil.copy2(REPO / "README.md", source / "README.md")
    shutil.copytree(REPO / "microkit", source / "microkit", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (source / "templates").mkdir()
    build = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build")],
                           cwd=source, env={**os.environ, "CC": "false"}, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    assert "building extension" in build.stderr and "failed" in build.stderr
    lib = next((tmp_path / "build").glob("lib*"))
    assert (lib / "microkit" / "http" / "native.py").exists()
    assert not list(lib.glob("microkit/http/_speedups*.so"))


@pytest.fixture(params=["compiled", "pure"])
def path(request, monkeypatch):
    """Run a test once on each path in this process: the compiled functions, or None in their place."""
    if request.param == "compiled" and speedups is None:
        pytest.skip("the compiled hot path is not in use")
    if request.param == "pure":
        monkeypatch.setattr(connection, "_parse_head", None)
        monkeypatch.setattr(wsgi, "_add_headers", None)
        monkeypatch.setattr(wsgi, "_response_head", None)
    return request.param


def summary(environ, start_response):
    """Answer with what the app saw of the request: method, target, protocol and the HTTP_ keys."""
    keys = sorted(f"{k}={v}" for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_")))
    body = "\n".join([environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"],
                      environ["SERVER_PROTOCOL"], *keys, environ["wsgi.input"].read().decode("latin-1")])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode("latin-1")]


HEADS = [
    b"GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nX-A:  spaced \t\r\nX-A: again\r\nX_Dropped: 1\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  /two-spaces  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://h/abs?q HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive , x\r\n\r\n",
    b"GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nProxy-Connection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: a\r\nConnection: b\r\n\r\n",
    b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"QUERY / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \xff\x80 obs\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX!#$%&'*+.^`|~A: 1\r\n\r\n",
    b"GET /?a=\"<>\\^`{|} HTTP/1.1\r\nHost: x\r\n\r\n",
    # refused
    b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/3.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/0.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/11\r\nHost: x\r\n\r\n",
    b"GET / http/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"GET \r\n\r\n",
    b"GET / HTTP/1.1\rHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\rX",
    b"GET / HTTP/1.1\r\n:a\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\x80st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(25)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 5000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
]


def exchange(port: int, data: bytes, pieces: int = 1, expect: int = 1) -> list:
    """Send `data` (in `pieces` sends) and return the responses, up to `expect` or the server's close."""
    answers = []
    with connect(port) as sock:
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):
            sock.sendall(data[i:i + step])
        reader = Reader(sock)
        while len(answers) < expect:
            try:
                status, headers, body = reader.response()
            except (OSError, AssertionError, ValueError):
                break
            answers.append((status, headers.get("connection"), body if status == 200 else b""))
            if headers.get("connection") == "close":
                break
    return answers


def test_both_paths_give_the_same_answers():
    """Each head, whole and in 7 pieces, and two pipelined: the same app view and statuses on both paths."""
    limits = Limits(max_request_line=1024, max_header_bytes=4096, max_headers=20)
    results = {}
    for name in ("compiled", "pure") if speedups is not None else ("pure",):
        mp = pytest.MonkeyPatch()
        if name == "pure":
            mp.setattr(connection, "_parse_head", None)
            mp.setattr(wsgi, "_add_headers", None)
        try:
            with ServerThread(summary, limits=limits) as st:
                results[name] = [(exchange(st.port, head), exchange(st.port, head, 7),
                                  exchange(st.port, head * 2, expect=2)) for head in HEADS]
        finally:
            mp.undo()
    if len(results) == 2:
        for head, compiled, pure in zip(HEADS, results["compiled"], results["pure"]):
            assert compiled == pure, head
    statuses = [answers[0][0][0] if answers[0] else None for answers in results["pure"]]
    assert statuses[:21] == [200] * 21 and None not in statuses
    assert all(status >= 400 for status in statuses[21:])


def test_a_trickled_head_that_can_no_longer_be_valid_is_refused_at_once():
    """A bare CR arriving in a later piece ends the head: 400 now, not a wait for a blank line that the
    compiled path's deferred re-parse would otherwise sit out until the header timeout."""
    with ServerThread(summary) as st, connect(st.port, timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        reader = Reader(sock)
        time.sleep(0.2)  # pieces that arrive apart (the behaviour under test), each read on its own
        sock.sendall(b"X-A: aaaaaaaaaa\r\n")  # less than doubles the head: no parse yet
        time.sleep(0.2)
        sock.sendall(b"\rX")
        status, headers, _ = reader.response()
    assert status == 400 and headers.get("connection") == "close"


@needs_speedups
def test_parse_head_waits_for_a_whole_head_and_counts_what_it_consumed():
    head = b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    for cut in range(len(head)):
        assert speedups.parse_head(head[:cut], 8190, 32768, 100) is None
    parsed = speedups.parse_head(head + b"GET /next", 8190, 32768, 100)
    assert parsed == (len(head), "GET", b"/x", "HTTP/1.1", [(b"Host", b"h"), (b"Connection", b"close")],
                      ["HTTP_HOST", "HTTP_CONNECTION"], {"HTTP_HOST": b"h", "HTTP_CONNECTION": b"close"}, False)
    assert speedups.parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n", 8190, 32768, 100) is True
    with pytest.raises(HTTPError, match="431"):
        speedups.parse_head(b"GET / HTTP/1.1\r\nX: " + b"v" * 200, 8190, 100, 100)
    with pytest.raises(HTTPError, match="400"):
        speedups.parse_head(b"\x16\x03\x01", 8190, 32768, 100)


RESPONSES = [
    ("200 OK", [("Content-Type", "text/plain")], 5, False, False, True),
    ("200 OK", [("Content-Length", "3"), ("Date", "then")], None, False, False, True),
    ("200 OK", [("X-A", "1")], None, False, False, True),
    ("200 OK", [("X-A", "1")], None, False, True, True),
    ("200 OK", [("X-A", "1")], 2, False, True, True),
    ("200 OK", [("Connection", "Keep-Alive, CLOSE")], 0, False, False, True),
    ("204 No Content", [], None, False, False, True),
    ("304 Not Modified", [("ETag", "x")], 0, False, False, False),
    ("200 OK", [("Content-Length", "10")], 0, True, False, True),
    ("404 Not Found", [("X-Latin", "caf\xe9")], 3, False, False, True),
]
BAD_RESPONSES = [
    ("200 OK", [("Transfer-Encoding", "chunked")]),
    ("200 OK", [("X-A", "a\r\nX-B: b")]),
    ("200 OK", [("X-A", "\u0100")]),
    ("200 OK", [("Content-Length", "+1")]),
    ("200 OK", [("Content-Length", 1)]),
    ("200 OK", [("X-A", 1)]),
    ("200 OK", [("X-A",)]),
]


def response_head(status, headers, body_len, head_only, http10, keep_alive):
    response = wsgi.Response(lambda data: None, lambda: False, head_only, http10, keep_alive)
    response.start_response(status, headers)
    head = response._head(body_len)
    state = (response.code, response.keep_alive, response._length, response._chunked, response._bodyless)
    return re.sub(rb"\r\nDate: [^\r]+GMT\r\n", b"\r\nDate: *\r\n", head), state


@pytest.mark.parametrize("case", RESPONSES, ids=[f"{c[0][:3]}-{i}" for i, c in enumerate(RESPONSES)])
def test_response_heads_are_the_same_on_both_paths(monkeypatch, case):
    compiled = response_head(*case)
    monkeypatch.setattr(wsgi, "_response_head", None)
    assert compiled == response_head(*case)


@pytest.mark.parametrize("status,headers", BAD_RESPONSES, ids=[str(h) for _, h in BAD_RESPONSES])
def test_bad_response_headers_are_refused_on_both_paths(path, status, headers):
    with pytest.raises((ValueError, TypeError)):
        response_head(status, headers, 0, False, False, True)


def rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@needs_speedups
def test_no_memory_growth_over_many_calls_including_refusals():
    """Reference counting: 100,000 rounds of every function, errors included, must not grow the process."""
    good = b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: a\r\nConnection: b\r\nX_Y: 1\r\nX-A: 1\r\n\r\n"
    bad = [b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"GET / HTTP/1.1\r\nX-A: \x01\r\n\r\n",
           b"FOO / HTTP/1.1\r\n"]
    headers = [("Content-Type", "text/plain"), ("Content-Length", "2"), ("Connection", "close")]

    def rounds(n: int) -> None:
        for _ in range(n):
            parsed = speedups.parse_head(good, 8190, 32768, 100)
            speedups.add_headers({"HTTP_X_A": "0"}, parsed[5], parsed[4])
            speedups.response_head("200 OK", headers, None, False, False, True)
            for data in bad:
                try:
                    speedups.parse_head(data, 8190, 32768, 100)
                except HTTPError:
                    pass
            try:
                speedups.response_head("200 OK", [("X", "a\nb")], 0, False, False, True)
            except ValueError:
                pass

    rounds(20_000)
    before = rss_kb()
    rounds(100_000)
    assert rss_kb() - before < 1024


def test_the_keepalive_wait_counts_from_its_start_after_a_busy_loop():
    """A request that holds the loop longer than keepalive_timeout: the next request on that connection,
    sent at once, is still answered (the idle timer must not start from the loop's stale time)."""
    import time

    def slow(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            time.sleep(0.8)  # not monkey-patched here: this blocks the server's whole loop
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    with ServerThread(slow, limits=Limits(keepalive_timeout=0.5)) as st, connect(st.port) as sock:
        reader = Reader(sock)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[0] == 200
        sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.response()[0] == 200


def test_every_keepalive_wait_gets_the_whole_timeout():
    """Requests 0.25 s apart with keepalive_timeout 0.6: the idle timer is re-armed in full each time."""
    import time

    with ServerThread(summary, limits=Limits(keepalive_timeout=0.6)) as st, connect(st.port) as sock:
        reader = Reader(sock)
        for _ in range(5):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.response()[0] == 200
            time.sleep(0.25)


def test_a_raw_handler_renders_refusals_with_their_method_and_target(path):
    """The `refused` hook (the gateway's JSON errors and access lines) sees what the refused head began with."""
    seen = []

    class Handler:
        def __call__(self, request):
            return None

        def refused(self, status, message, request, method, target):
            seen.append((status, method, target))
            return b"HTTP/1.1 %d No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status

    limits = Limits(max_header_bytes=1024)
    with ServerThread(summary, limits=limits, raw_handler=Handler()) as st:
        for data in (b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n",
                     b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
            with connect(st.port) as sock:
                sock.sendall(data)
                Reader(sock).response()
    assert seen == [(431, "GET", b"/big"), (400, "GET", b"/two")]


@needs_speedups
def test_a_head_trickled_in_tiny_pieces_is_not_parsed_again_for_each(monkeypatch):
    """The compiled parser reads a head from its start: pieces without a blank line do not each cost a
    parse (a slowloris client must not turn 32 KB of header into 32,000 parses of it)."""
    import time

    calls = []

    def counting(*args):
        calls.append(len(args[0]))
        return speedups.parse_head(*args)

    monkeypatch.setattr(connection, "_parse_head", counting)
    with ServerThread(summary) as st, connect(st.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ")
        for _ in range(600):
            sock.sendall(b"v")
            time.sleep(0.0005)
        sock.sendall(b"\r\n\r\n")
        assert Reader(sock).response()[0] == 200
    assert len(calls) < 20
