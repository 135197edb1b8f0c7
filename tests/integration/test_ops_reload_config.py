"""Issue 10, item 3: `microkit reload` re-reads microkit.toml and applies it, or refuses it and keeps running."""

from __future__ import annotations

import http.client
import json
import re
import signal
import threading


from microkit.testing import eventually

from support.cli import run_cli
from support.up import Up, get


def edit(root, old: str, new: str) -> None:
    toml = root / "microkit.toml"
    text = toml.read_text()
    assert old in text, text
    toml.write_text(text.replace(old, new))


def groups(up: Up) -> dict:
    return {g["name"]: g for g in up.status()["supervisor"]["services"]}


def test_reload_after_fixing_a_fatal_services_app_loads_the_new_one(start):
    running = start({"plain": {"app": "services.plain.app:app"}, "broken": {"app": "services.broken.app:app"}},
                 {"plain": "plain_app.py", "broken": "broken_app.py"})
    running.wait_for(r"^broken +\| FATAL: gave up after 3 failed boots")
    edit(running.root, 'app = "services.broken.app:app"', 'app = "services.plain.app:app"')
    result = run_cli("reload", "broken", timeout=30, cwd=running.root)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"reloaded broken: 1 worker, pid \d+\n", result.stdout), result.stdout
    running.wait_for(r"^microkit +\| microkit\.toml re-read: changed broken$")
    url = groups(running)["broken"]["urls"][0]
    assert get(url + "/version") == (200, "v1")


def test_reload_adds_and_removes_services_and_changes_workers(start):
    running = start({"plain": {"app": "services.plain.app:app"}, "old": {"app": "services.old.app:app"}},
                 {"plain": "plain_app.py", "old": "plain_app.py", "web": "bottle_app.py"})
    running.ready()
    plain = running.pids("plain")
    old = running.pids("old")
    toml = running.root / "microkit.toml"
    text = toml.read_text().split("[services.old]")[0]
    toml.write_text(text.replace('app = "services.plain.app:app"', 'app = "services.plain.app:app"\nworkers = 2')
                    + '[services.web]\napp = "services.web.app:app"\n')
    result = run_cli("reload", timeout=30, cwd=running.root)
    assert result.returncode == 0, result.stderr
    assert "reloaded web: 1 worker" in result.stdout and "reloaded plain: 2 workers" in result.stdout
    running.wait_for(r"microkit\.toml re-read: added web; removed old$")
    eventually(lambda: "old" not in groups(running), 10)
    assert not old & {i["pid"] for g in groups(running).values() for i in g["instances"]}
    now = groups(running)
    assert get(now["web"]["urls"][0] + "/hello/ada") == (200, '{"hello": "ada"}')
    assert len(now["plain"]["instances"]) == 2 and not plain & running.pids("plain")


def test_an_invalid_file_is_refused_and_the_old_config_keeps_running(start):
    running = start({"plain": {"app": "services.plain.app:app"}}, {"plain": "plain_app.py"})
    urls = running.ready()
    pids = running.pids("plain")
    edit(running.root, 'app = "services.plain.app:app"', 'app = "services.plain.app:app"\nworkers = 0')
    result = run_cli("reload", timeout=30, cwd=running.root)
    assert result.returncode == 2
    assert result.stderr.strip() == ("microkit: error: microkit.toml: services.plain.workers: expected an integer "
                                     ">= 1, got 0 (not applied: the running config is kept)")
    assert get(urls["plain"] + "/version") == (200, "v1")
    running.signal(signal.SIGHUP)
    running.wait_for(r"^microkit +\| reload refused: microkit\.toml: services\.plain\.workers")
    edit(running.root, "workers = 0", "workers = 1")
    assert running.pids("plain") == pids, "nothing was restarted"


def test_settings_that_need_a_restart_are_named(start):
    running = start({"plain": {"app": "services.plain.app:app", "route": "/plain"}}, {"plain": "plain_app.py"},
                 gateway=True)
    running.ready()
    pids = running.pids("plain")
    edit(running.root, 'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:1"')
    (running.root / "microkit.toml").write_text((running.root / "microkit.toml").read_text()
                                                + '\n[registry]\nurl = "redis://127.0.0.1:1/0"\n')
    result = run_cli("reload", timeout=30, cwd=running.root)
    assert result.returncode == 1
    assert result.stderr.strip() == ("microkit: error: microkit.toml: registry.url, gateway.listen changed, which "
                                     "needs a restart of `microkit up` (not applied: the running config is kept)")
    assert running.pids("plain") == pids


class Hammer(threading.Thread):
    """GETs in a loop on fresh connections; counts answers by status and connection failures."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.statuses, self.failures, self.done = url, {}, [], threading.Event()

    def run(self) -> None:
        host, port = self.url.split("//")[1].split("/")[0].rsplit(":", 1)
        path = "/" + self.url.split("//")[1].partition("/")[2]
        while not self.done.is_set():
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                connection.request("GET", path)
                status = connection.getresponse().status
                self.statuses[status] = self.statuses.get(status, 0) + 1
            except OSError as exc:
                self.failures.append(exc)
            finally:
                connection.close()


def test_routes_policies_and_gateway_settings_are_applied_with_no_refused_request(start):
    running = start({"plain": {"app": "services.plain.app:app", "route": "/plain"},
                  "web": {"app": "services.web.app:app", "route": "/web"}},
                 {"plain": "routed_app.py", "web": "routed_app.py"}, gateway=True)
    gateway = running.ready()["gateway"]
    status, body = get(gateway + "/other/pid")
    assert status == 404 and json.loads(body)["status"] == 404, "no route yet: the gateway's own 404"
    hammer = Hammer(gateway + "/web/pid")
    hammer.start()
    try:
        eventually(lambda: hammer.statuses.get(200, 0) > 10, 5)
        edit(running.root, 'route = "/plain"', 'route = "/other"')
        edit(running.root, 'route = "/web"', 'route = "/web"\nauth = "apikey"')
        edit(running.root, 'listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nworkers = 2')
        result = run_cli("reload", "--timeout", "60", timeout=70, cwd=running.root)
        assert result.returncode == 0, result.stderr
        assert re.search(r"^reloaded gateway: 2 workers, pids \d+, \d+$", result.stdout, re.M), result.stdout
    finally:
        hammer.done.set()
        hammer.join(10)
    assert hammer.failures == [] and set(hammer.statuses) <= {200, 401}, (hammer.failures, hammer.statuses)
    assert get(gateway + "/other/pid")[0] == 200
    assert get(gateway + "/web/pid")[0] == 401
    assert get(gateway + "/plain/pid")[0] == 404
