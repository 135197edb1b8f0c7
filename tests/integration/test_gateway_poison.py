"""A request that kills its worker reaches at most two workers through the gateway (one resend, and only
after a pooled connection that looked stale), under the real `microkit up` with four workers."""

from __future__ import annotations

import threading
import time

import requests

from microkit.testing import eventually

from support.up import Up, make_project


def _reached(log) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _warm(gateway: str, sessions: list[requests.Session]) -> None:
    """Many keep-alive connections through the gateway, so its pool holds one to every worker."""
    def run(session):
        for _ in range(20):
            assert session.get(f"{gateway}/p/pid", timeout=10).status_code == 200
    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_crash_and_block_requests_reach_at_most_two_workers(tmp_path, monkeypatch):
    log = tmp_path / "poison.log"
    monkeypatch.setenv("POISON_LOG", str(log))
    root = make_project(tmp_path / "proj", {"p": {"app": "services.p.app:app", "route": "/p", "workers": 4,
                                                  "timeout": 3, "route_timeout": 12}},
                        {"p": "poison_app.py"})
    up = Up(root, gateway=True)
    try:
        gateway = up.ready(30)["gateway"]
        sessions = [requests.Session() for _ in range(8)]
        _warm(gateway, sessions)
        status = requests.get(f"{gateway}/p/crash", timeout=20).status_code
        assert status == 502
        assert 1 <= len(_reached(log)) <= 2, _reached(log)

        eventually(lambda: len(up.pids("p")) == 4, 30)
        _warm(gateway, sessions)
        log.unlink()
        status = requests.get(f"{gateway}/p/block", timeout=30).status_code
        assert status in (502, 504)
        time.sleep(0.5)  # a later resend, if there were one, would have had time to land
        assert 1 <= len(_reached(log)) <= 2, _reached(log)

        # a poison request under load: the other requests keep being answered, and the service is whole again soon
        eventually(lambda: len(up.pids("p")) == 4, 15)
        log.unlink()
        stop = threading.Event()
        statuses: list[int] = []

        def load(session):
            while not stop.is_set():
                try:
                    statuses.append(session.get(f"{gateway}/p/pid", timeout=10).status_code)
                except requests.RequestException:
                    statuses.append(0)
        threads = [threading.Thread(target=load, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        eventually(lambda: len(statuses) >= 40, 10, "requests flowing")
        assert requests.get(f"{gateway}/p/crash", timeout=20).status_code == 502
        after = len(statuses)
        eventually(lambda: len(statuses) >= after + 80, 15, "requests after the poison one")
        stop.set()
        for thread in threads:
            thread.join(15)
        assert 1 <= len(_reached(log)) <= 2, _reached(log)
        assert statuses.count(200) >= 0.95 * len(statuses), statuses
        eventually(lambda: len(up.pids("p")) == 4, 10)
    finally:
        up.close()
