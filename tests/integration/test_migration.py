"""The path out of a monolith, with real processes: `microkit up` runs a legacy app (a command service
or a URL) beside a new `users` service, and the gateway falls back, splits, fails over and shadows."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from support.cli import CLI, PROGRAMS, run_cli
from support.servers import free_port
from support.up import Up, make_project
from microkit.testing import eventually

MB = 1024 * 1024


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def project(tmp_path, users: dict | None = None, legacy: str = "legacy", registry: str | None = None,
            env: dict | None = None, gateway: str = ""):
    """A project with the legacy app as a command service and `users` as a microkit service."""
    services = {"legacy": {"command": f"{sys.executable} services/legacy/legacy_server.py"},
                "users": {"app": "services.users.app:app", "route": "/users", **(users or {})}}
    root = make_project(tmp_path / f"proj{uuid.uuid4().hex[:6]}", {},
                        {"legacy": "legacy_server.py", "users": "users_app.py"})
    lines = (root / "microkit.toml").read_text().replace(
        'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:0"\nlegacy = "{legacy}"\n{gateway}')
    lines = lines.replace('name = "suptest"', f'name = "mig{uuid.uuid4().hex[:8]}"')
    if registry:
        lines += f'\n[registry]\nurl = "{registry}"\n'
    for name, settings in services.items():
        if name == "legacy" and legacy != "legacy":
            continue
        lines += f"\n[services.{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items())
        if env:
            lines += f"env = {toml_value(env)}\n"
    (root / "microkit.toml").write_text(lines)
    return root


def start(root, *args) -> tuple[Up, str]:
    up = Up(root, *args, gateway=True)
    try:
        gateway = up.ready(40)["gateway"]
        eventually(lambda: requests.get(f"{gateway}/hello", timeout=5).status_code == 200, 20)
    except BaseException:
        print(up.output)
        up.close()
        raise
    return up, gateway


def sides(session, url: str, count: int, **kwargs) -> list[str]:
    return [session.get(url, timeout=10, **kwargs).headers["X-Side"] for _ in range(count)]


def within_binomial(hits: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def diff_report(root, route="users") -> dict:
    result = run_cli("diff", route, "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[route]


def gateway_pid(root) -> int:
    result = run_cli("status", "--json", cwd=root)
    groups = json.loads(result.stdout)["supervisor"]["services"]
    return next(g for g in groups if g["name"] == "gateway")["instances"][0]["pid"]


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))


def test_unmatched_paths_go_to_a_legacy_command_service_streaming_100mb_in_bounded_memory(tmp_path):
    root = project(tmp_path)
    up, gateway = start(root)
    try:
        echo = requests.get(f"{gateway}/echo?x=1", headers={"X-Request-Id": "abc-123", "Connection": "keep-alive, X-Drop",
                                                           "X-Drop": "hop", "X-Forwarded-For": "6.6.6.6",
                                                           "X-Microkit-Shadow": "1"}, timeout=10)
        assert echo.status_code == 200 and echo.headers["X-Request-Id"] == "abc-123"
        seen = {k.lower(): v for k, v in echo.json()["headers"].items()}
        assert echo.json()["path"] == "/echo?x=1"
        assert seen["x-request-id"] == "abc-123" and seen["x-forwarded-for"] == "127.0.0.1"
        assert "x-drop" not in seen and "x-forwarded-host" in seen and "x-microkit-shadow" not in seen
        assert requests.get(f"{gateway}/users/3", timeout=10).headers["X-Side"] == "service"
        pid = gateway_pid(root)
        before = peak_rss(pid)
        size, got = 100 * MB, 0
        with requests.get(f"{gateway}/big?n={size}", stream=True, timeout=30) as response:
            assert response.status_code == 200 and response.headers["Content-Length"] == str(size)
            for chunk in response.iter_content(256 * 1024):
                got += len(chunk)
        assert got == size
        assert peak_rss(pid) - before < 30 * MB, "the gateway buffered the download"
        up.wait_for(r"GET /big\?n=\d+ 200 .* -> 127\.0\.0\.1:\d+ id=", 10)
    finally:
        up.close()


def test_a_legacy_url_gets_unmatched_paths(tmp_path):
    port = free_port()
    legacy = subprocess.Popen([sys.executable, str(PROGRAMS / "legacy_server.py"), str(port)], stdout=subprocess.PIPE)
    try:
        assert legacy.stdout.readline().startswith(b"legacy server")
        root = project(tmp_path, legacy=f"http://127.0.0.1:{port}", gateway="timeout = 1")
        up, gateway = start(root)
        try:
            assert requests.get(f"{gateway}/orders/1", timeout=10).json() == {"side": "legacy", "path": "/orders/1"}
            began = time.monotonic()
            late = requests.get(f"{gateway}/hang", timeout=10)
            assert late.status_code == 504 and late.json()["error"] == "legacy did not answer within 1 s"
            assert time.monotonic() - began < 5
            up.wait_for(r"GET /hang 504 ", 10)
        finally:
            up.close()
    finally:
        legacy.kill()
        legacy.wait()


def test_split_ratio_is_within_binomial_bounds_over_2000_requests(tmp_path):
    root = project(tmp_path, {"split": 25})
    up, gateway = start(root)
    try:
        with requests.Session() as session:
            seen = sides(session, f"{gateway}/users/1", 2000)
        hits = seen.count("service")
        assert seen.count("legacy") + hits == 2000
        assert within_binomial(hits, 2000, 0.25), hits
    finally:
        up.close()


def test_sticky_cookie_keeps_each_user_on_one_side(tmp_path):
    root = project(tmp_path, {"split": 50, "sticky": "cookie:uid"})
    up, gateway = start(root)
    try:
        per_user = {}
        with requests.Session() as session:
            for user in range(300):
                per_user[user] = set(sides(session, f"{gateway}/users/1", 3, cookies={"uid": f"u{user}"}))
        assert all(len(found) == 1 for found in per_user.values())
        assert within_binomial(sum("service" in found for found in per_user.values()), 300, 0.5)
    finally:
        up.close()


def test_failover_to_legacy_for_idempotent_requests_only_when_asked(tmp_path):
    root = project(tmp_path, {"failover": ["connect", 503]})
    up, gateway = start(root)
    try:
        answer = requests.get(f"{gateway}/users/unavailable", timeout=10)
        assert (answer.status_code, answer.headers["X-Side"]) == (200, "legacy")
        assert requests.post(f"{gateway}/users/unavailable", data=b"x", timeout=10).status_code == 503
    finally:
        up.close()
    root = project(tmp_path, {"failover": ["connect"]})
    up = Up(root, "legacy", gateway=True)  # users is not running: nothing to connect to
    try:
        gateway = up.ready(40)["gateway"]
        eventually(lambda: requests.get(f"{gateway}/hello", timeout=5).status_code == 200, 20)
        answer = requests.get(f"{gateway}/users/1", timeout=10)
        assert (answer.status_code, answer.headers["X-Side"]) == (200, "legacy")
        assert requests.post(f"{gateway}/users/1", data=b"x", timeout=10).status_code == 503
    finally:
        up.close()


def test_failover_is_off_by_default(tmp_path):
    root = project(tmp_path)
    up, gateway = start(root)
    try:
        assert requests.get(f"{gateway}/users/unavailable", timeout=10).status_code == 503
    finally:
        up.close()


def gateway_alone(root) -> tuple[subprocess.Popen, str | None]:
    """`microkit gateway` in a process group of its own, and its URL once ready."""
    process = subprocess.Popen([*CLI, "gateway"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    for line in process.stdout:
        if line.startswith("ready: gateway"):
            return process, line.split()[2]
    return process, None


def test_a_live_split_change_reaches_two_gateways_on_one_redis(tmp_path, private_redis):
    root = project(tmp_path, {"split": 0}, registry=private_redis.url)
    up, first = start(root)
    second_gateway, second = gateway_alone(root)
    third_gateway = None
    try:
        assert second is not None
        with requests.Session() as session:
            for gateway in (first, second):
                eventually(lambda: set(sides(session, f"{gateway}/users/1", 20)) == {"legacy"}, 20)
            result = run_cli("route", "users", "--split", "100", cwd=root)
            assert result.returncode == 0, result.stderr
            assert "split 100% to users" in result.stdout
            for gateway in (first, second):
                eventually(lambda: set(sides(session, f"{gateway}/users/1", 20)) == {"service"}, 10)
        assert "route users: split 0% -> 100% to the service (from microkit route)" in up.output
        assert "live" in run_cli("route", "users", cwd=root).stdout
        assert "100% (live)" in run_cli("routes", cwd=root).stdout
        os.killpg(second_gateway.pid, signal.SIGKILL)  # one `microkit gateway` per project folder at a time
        second_gateway.wait(5)
        third_gateway, third = gateway_alone(root)  # started after the change: the store still has it
        assert third is not None
        with requests.Session() as session:
            eventually(lambda: set(sides(session, f"{third}/users/1", 20)) == {"service"}, 10)
    finally:
        for process in (second_gateway, third_gateway):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        up.close()


def test_route_refuses_unknown_names_and_splits_without_legacy(tmp_path):
    root = project(tmp_path)
    result = run_cli("route", "nobody", "--split", "5", cwd=root)
    assert result.returncode == 2 and "not a routed service" in result.stderr
    result = run_cli("route", "users", "--split", "150", cwd=root)
    assert result.returncode == 2 and "--split" in result.stderr
    result = run_cli("diff", "orders", cwd=root)
    assert result.returncode == 2 and "'orders' is not a routed service" in result.stderr
    result = run_cli("route", "/users", cwd=root)
    assert result.returncode == 0 and result.stdout.startswith("users: route /users, split none")
    result = run_cli("route", "users", "--split", "5", "--reset", cwd=root)
    assert result.returncode == 2 and "exclude each other" in result.stderr
    result = run_cli("up", "--monolith", cwd=root)
    assert result.returncode == 2 and "gateway.legacy (and its splits, shadows and failover) needs the gateway" in result.stderr
    config = root / "microkit.toml"
    config.write_text(config.read_text().replace('legacy = "legacy"', ""))
    result = run_cli("route", "users", "--split", "5", cwd=root)
    assert result.returncode == 2 and "a split needs gateway.legacy" in result.stderr


SHADOW = {"percent": 100, "methods": ["GET"], "timeout": 1}


@pytest.mark.parametrize("ignore", [[], ["$.created_at"]])
def test_shadow_mismatches_are_found_with_and_without_ignore_rules(tmp_path, ignore):
    root = project(tmp_path, {"shadow": {**SHADOW, "ignore": ignore}}, env={"BUGGY_SIDE": "legacy"})
    up, gateway = start(root)
    try:
        with requests.Session() as session:
            for ident in range(1, 11):
                answer = session.get(f"{gateway}/users/{ident}", timeout=10)
                assert answer.headers["X-Side"] == "service" and answer.json()["name"] == f"user{ident}"
        report = eventually(lambda: (r := diff_report(root))["counts"]["compared"] == 10 and r, 10)
        fields = {d[0] for m in report["mismatches"] for d in m["differences"]}
        if ignore:
            assert report["counts"]["mismatched"] == 1 and fields == {"$.name"}
            record = report["mismatches"][0]
            assert record["target"] == "/users/7" and record["primary"]["side"] == "users"
            assert json.loads(record["shadow"]["body"])["name"] == "User 7"
        else:
            assert report["counts"]["mismatched"] == 10 and "$.created_at" in fields
        text = run_cli("diff", "users", "--last", "10", cwd=root).stdout  # kept in the order comparisons ended
        assert "10 compared" in text and '$.name: users="user7" legacy="User 7"' in text
    finally:
        up.close()


def test_noise_learned_from_a_second_primary_call_is_kept_out(tmp_path):
    root = project(tmp_path, {"shadow": {**SHADOW, "noise": True}}, env={"BUGGY_SIDE": "legacy"})
    up, gateway = start(root)
    try:
        with requests.Session() as session:
            for ident in range(1, 11):
                session.get(f"{gateway}/users/{ident}", timeout=10)
        report = eventually(lambda: (r := diff_report(root))["counts"]["compared"] == 10 and r, 10)
        assert report["noise"] == ["$.created_at"]
        assert report["counts"]["mismatched"] == 1
    finally:
        up.close()


def test_a_shadow_target_that_hangs_or_dies_changes_nothing_and_stays_bounded(tmp_path):
    root = project(tmp_path, {"shadow": {**SHADOW, "timeout": 3, "queue": 2}})
    up, gateway = start(root)
    try:
        with requests.Session() as session:
            began = time.monotonic()
            answers = [session.get(f"{gateway}/users/hang", timeout=10) for _ in range(6)]
            # well within the copies' timeout: the first two still hang, so the other four find the queue full
            assert time.monotonic() - began < 2.5, "the hanging copies delayed the answers"
            assert {(a.status_code, a.headers["X-Side"], a.json()["name"]) for a in answers} == {
                (200, "service", "userhang")}
            report = eventually(lambda: (r := diff_report(root))["counts"]["failed"] == 2 and r, 10)
            assert report["counts"]["dropped"] == 4 and report["counts"]["compared"] == 0
            answer = session.get(f"{gateway}/users/drop", timeout=10)
            assert (answer.status_code, answer.json()["name"]) == (200, "userdrop")
            eventually(lambda: diff_report(root)["counts"]["failed"] == 3, 10)
    finally:
        up.close()


def test_a_dead_shadow_target_changes_nothing(tmp_path):
    root = project(tmp_path, {"shadow": SHADOW}, legacy=f"http://127.0.0.1:{free_port()}")
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(40)["gateway"]
        with requests.Session() as session:
            for _ in range(3):
                answer = session.get(f"{gateway}/users/5", timeout=10)
                assert (answer.status_code, answer.json()["name"]) == (200, "user5")
        eventually(lambda: diff_report(root)["counts"]["failed"] == 3, 10)
        assert requests.get(f"{gateway}/other", timeout=10).status_code == 503
    finally:
        up.close()


def test_request_bodies_up_to_the_limit_are_mirrored(tmp_path):
    root = project(tmp_path, {"shadow": {**SHADOW, "methods": ["POST"], "max_body": 600}})
    up, gateway = start(root)
    try:
        answer = requests.post(f"{gateway}/users/", data=b"a" * 500, timeout=10)
        assert answer.json() == {"side": "service", "body": "a" * 500}
        report = eventually(lambda: (r := diff_report(root))["counts"]["compared"] == 1 and r, 10)
        record = report["mismatches"][0]
        assert json.loads(record["shadow"]["body"])["body"] == "a" * 500
        assert {d[0] for d in record["differences"]} == {"status", "$.side", "$.path", "$.shadow"}
        assert json.loads(record["shadow"]["body"])["shadow"] == "1"  # the copy says it is one
        assert requests.post(f"{gateway}/users/", data=b"b" * 601, timeout=10).json()["body"] == "b" * 601
        requests.post(f"{gateway}/users/", data=b"c", timeout=10)
        eventually(lambda: diff_report(root)["counts"]["compared"] == 2, 10)
        assert diff_report(root)["counts"]["compared"] == 2
    finally:
        up.close()
