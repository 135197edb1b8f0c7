"""The dashboard (issue 14) in headless Chromium, driven by Playwright, against the demo shop under
the real `microkit up`: the login refuses a wrong key, the page lists 3 services, a killed worker shows
as restarting and then healthy, and the numbers move under load. Each test saves a screenshot."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from support.cli import run_cli
from support.servers import server_missing
from support.up import Up, demo_shop, request

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    root = demo_shop(tmp_path_factory.mktemp("dash"))
    admin = run_cli("keys", "create", "ops", "--scope", "microkit:admin", cwd=root)
    user = run_cli("keys", "create", "app", cwd=root)
    assert admin.returncode == 0 and user.returncode == 0, admin.stderr + user.stderr
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(40)["gateway"]
        yield {"up": up, "gateway": gateway, "admin": admin.stdout.strip(), "user": user.stdout.strip()}
    finally:
        up.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = shutil.which("chromium")
    if executable is None:
        server_missing("chromium", FileNotFoundError("chromium is not on PATH (apt-get install chromium)"))
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, running):
    browser.clear_cookies()
    page = browser.new_page()
    yield page
    page.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def log_in(page, running, key: str) -> None:
    page.goto(running["gateway"] + "/__microkit/")
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_a_wrong_key_is_refused(page, running, shots):
    log_in(page, running, "mk_not_a_key")
    assert "not valid" in page.inner_text(".refused")
    assert page.locator("#services").count() == 0
    page.screenshot(path=str(shots / "wrong-key.png"))
    log_in(page, running, running["user"])
    assert "admin scope" in page.inner_text(".refused")
    assert not [c for c in page.context.cookies() if c["name"] == "mk_session"]
    assert request(running["gateway"], "GET", "/__microkit/dashboard.json")[0] == 401


def test_the_page_loads_with_the_shops_services(page, running, shots):
    log_in(page, running, running["admin"])
    page.wait_for_selector('#services tr[data-service="payments"]')
    assert page.locator("#services tbody tr").count() == 4  # users, orders, payments, and notifications (consumers only)
    page.wait_for_function("() => [...document.querySelectorAll('#services td.state')]"
                           ".every(td => td.textContent === 'healthy')", timeout=15000)
    assert page.locator("#instances tbody tr").count() == 3
    [cookie] = [c for c in page.context.cookies() if c["name"] == "mk_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/__microkit/"
    page.screenshot(path=str(shots / "three-services.png"), full_page=True)
    print(f"screenshots in {shots}")


def test_numbers_move_under_load(page, running, shots):
    log_in(page, running, running["admin"])
    page.wait_for_selector('#routes tr[data-route="/users"]')
    before = int(page.inner_text('#routes tr[data-route="/users"] td.requests'))
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            request(running["gateway"], "GET", "/users")
            request(running["gateway"], "GET", "/users/999999")
    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        page.wait_for_function(
            "n => Number(document.querySelector('#routes tr[data-route=\"/users\"] td.requests').textContent) > n + 50"
            " && Number(document.querySelector('#routes tr[data-route=\"/users\"] td.rps').textContent) > 0",
            arg=before, timeout=15000)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    row = page.locator('#routes tr[data-route="/users"] td')
    assert row.nth(5).inner_text() not in ("–", ""), "p50 shown"
    page.screenshot(path=str(shots / "under-load.png"), full_page=True)


def test_a_killed_worker_shows_restarting_then_healthy(page, running, shots):
    log_in(page, running, running["admin"])
    page.wait_for_function("() => document.querySelector('#services tr[data-service=\"orders\"] td.state')"
                           "?.textContent === 'healthy'", timeout=15000)
    up = running["up"]
    [pid] = up.pids("orders")
    os.kill(pid, signal.SIGKILL)
    page.wait_for_function("() => document.querySelector('#services tr[data-service=\"orders\"] td.state')"
                           ".textContent === 'restarting'", timeout=10000)
    page.screenshot(path=str(shots / "restarting.png"), full_page=True)
    page.wait_for_function("() => document.querySelector('#services tr[data-service=\"orders\"] td.state')"
                           ".textContent === 'healthy'", timeout=20000)
    assert page.inner_text('#services tr[data-service="orders"] td:nth-child(6)') == "1"
    assert up.pids("orders") != {pid}
    page.screenshot(path=str(shots / "healthy-again.png"), full_page=True)


def test_gateways_sharing_a_redis_show_on_each_others_dashboard(tmp_path, private_redis):
    """`microkit up` and a second `microkit gateway` of the project, both on one Redis: the dashboard of
    either lists both gateways and adds up their traffic (this is the JSON the page polls)."""
    import http.client
    import json
    import subprocess
    import sys

    from microkit.supervisor import control
    from support.up import make_project
    from microkit.testing import eventually

    root = make_project(tmp_path / "proj", {"users": {"app": "services.users.app:app", "route": "/users"},
                                            "limited": {"app": "services.limited.app:app", "route": "/limited",
                                                        "rate_limit": "1/min"}},
                        {"users": "routed_app.py", "limited": "routed_app.py"})
    (root / "microkit.toml").write_text((root / "microkit.toml").read_text()
                                        + f'\n[registry]\nurl = "{private_redis.url}"\n')
    admin = run_cli("keys", "create", "ops", "--scope", "microkit:admin", cwd=root).stdout.strip()
    up = Up(root, gateway=True)
    second = subprocess.Popen([sys.executable, "-m", "microkit.cli", "gateway"], cwd=root, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first = up.ready(30)["gateway"]

        def second_port():
            try:
                group = control.request(root, {"command": "status"}, name=f"gateway-{second.pid}")["services"][0]
            except Exception:
                return None
            ready = [i for i in group["instances"] if i["state"] == "ready"]
            return ready and ready[0]["port"]
        other = f"http://127.0.0.1:{eventually(second_port, 20, 'the second gateway')}"
        host, port = first.split("//")[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", "/__microkit/login", body=f"key={admin}",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        reply = connection.getresponse()
        reply.read()
        assert reply.status == 303
        cookie = reply.getheader("Set-Cookie").split(";")[0]
        eventually(lambda: request(other, "GET", "/users/pid")[0] == 200, 20, "the second gateway routes")
        for _ in range(30):
            assert request(other, "GET", "/users/pid")[0] == 200
        def knows_limited():
            status, _, body = request(other, "GET", "/__microkit/instances", {"X-API-Key": admin})
            return status == 200 and json.loads(body)["services"]["limited"]
        eventually(knows_limited, 20, "the second gateway knows the limited route's instance")
        assert request(other, "GET", "/limited/pid")[0] == 200
        status, headers, _ = request(other, "GET", "/limited/pid")
        assert status == 429
        refused_id = headers["x-request-id"]

        def seen():
            status, _, body = request(first, "GET", "/__microkit/dashboard.json", {"Cookie": cookie})
            assert status == 200
            data = json.loads(body)
            users = [r for r in data["routes"] if r["route"] == "/users"]
            pids = {g["pid"] for g in data["gateways"]}
            refused = [r for r in data["recent"] if r["request_id"] == refused_id]
            return len(pids) == 2 and users and users[0]["requests"] >= 31 and refused and data
        data = eventually(seen, 20, "both gateways, their traffic and the refusal")
        assert [s["name"] for s in data["services"]] == ["users", "limited"]
        [refused] = [r for r in data["recent"] if r["request_id"] == refused_id]
        assert refused["status"] == 429 and refused["route"] == "/limited" and len(refused["trace_id"]) == 32
        assert data["refusals"]["ratelimit"] == 1
        import redis
        client = redis.Redis.from_url(private_redis.url)
        assert len(list(client.scan_iter(match="microkit:suptest:dashboard:*"))) == 2, "each gateway on the board"
        client.close()
        assert not (root / ".microkit" / "board").exists()
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(5)
        up.close()


def test_login_attempts_are_limited_per_address(running):
    """Like POST /auth/token (20/min, burst 10 by default): the eleventh guess at once is refused."""
    host, port = running["gateway"].split("//")[1].split(":")
    statuses = []
    for _ in range(11):
        import http.client
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("POST", "/__microkit/login", body="key=mk_guess",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        reply = connection.getresponse()
        statuses.append((reply.status, "Too many attempts" in reply.read().decode()))
        connection.close()
    assert statuses[-1] == (429, True) and (401, False) in statuses, statuses
