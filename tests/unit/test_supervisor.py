"""The supervisor's logic with fakes (a fake clock, fake instances), and what must hold without processes."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from microkit.supervisor.group import ABORT_GRACE, FATAL, RELOADING, RUNNING, Backoff, Group
from microkit.supervisor.printer import Printer
from microkit.supervisor.reloader import Reloader, app_scope
from microkit.supervisor.worker import with_health

PIDS = itertools.count(1000)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeInstance:
    notify_fd = -1
    output_fd = -1

    def __init__(self, clock: Clock, slot: int, generation: int):
        self.clock, self.slot, self.generation = clock, slot, generation
        self.pid = next(PIDS)
        self.ready = self.retiring = self.aborted = False
        self.routable = True
        self.kill_at = None
        self.error = None
        self.port = 8000
        self.beat_interval = 0.5
        self.signals: list[int] = []
        self.name = f"svc.{slot}"

    def spawn(self) -> None:
        self.started_at = self.last_beat = self.clock()

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def on_notify(self, line: str) -> None:
        pass

    def reaped(self, status: int) -> None:
        pass


class FakeGroup(Group):
    def __init__(self, workers: int = 1, timeout: float = 30.0):
        self.out = io.StringIO()
        self.clock_ = Clock()
        self.exits: dict[int, int] = {}
        super().__init__("svc", workers, timeout, 10.0, Printer(self.out, colour=False),
                         lambda fd, callback: None, self.clock_)

    def new_instance(self, slot: int) -> FakeInstance:
        return FakeInstance(self.clock_, slot, self.generation)

    def urls(self) -> list[str]:
        return []

    def waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        return (pid, self.exits.pop(pid)) if pid in self.exits else (0, 0)

    def exit(self, instance: FakeInstance, code: int = 1, signum: int = 0) -> None:
        self.exits[instance.pid] = signum if signum else code << 8

    def boot(self) -> None:
        """Tick, then mark every instance ready, then tick again."""
        self.tick()
        for instance in self.instances:
            instance.ready = True
        self.tick()


def test_backoff_is_immediate_then_doubles_to_a_cap_and_resets_after_stable_uptime():
    backoff = Backoff(base=0.5, cap=4.0, stable=10.0)
    assert [backoff.crashed(1.0) for _ in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.crashed(10.0) == 0.0
    assert backoff.crashed(0.1) == 0.5


def test_crashed_instance_is_replaced_at_once_in_its_slot_then_with_backoff():
    group = FakeGroup(workers=2)
    group.boot()
    assert group.state == RUNNING and [i.slot for i in group.instances] == [1, 2]
    first = group.instances[0]
    group.exit(first, signum=signal.SIGKILL)
    group.tick()
    replacement = next(i for i in group.instances if i.slot == 1)
    assert replacement is not first and group.restarts == {1: 1}
    assert "svc.1 (pid %d) killed by SIGKILL; restarting" % first.pid in group.out.getvalue()
    replacement.ready = True
    group.exit(replacement)
    group.tick()
    assert len(group.instances) == 1, "a second quick crash waits for the backoff"
    assert "exited with code 1; restarting in 0.5s" in group.out.getvalue()
    group.clock_.now += 0.5
    group.tick()
    assert len(group.instances) == 2 and group.restarts == {1: 2}


def test_rolling_reload_waits_until_the_new_instance_is_registered_or_timeout_has_passed():
    group = FakeGroup(workers=1, timeout=5.0)
    group.boot()
    (old,) = group.instances
    group.reload()
    group.tick()
    (new,) = [i for i in group.instances if i.generation == 1]
    new.ready, new.routable = True, False
    group.tick()
    assert not old.retiring, "ready but not yet registered: gateways cannot find it, the old one keeps serving"
    new.routable = True
    group.tick()
    assert old.retiring
    group.reload()
    group.tick()
    (newer,) = [i for i in group.instances if i.generation == 2]
    newer.ready, newer.routable = True, False
    group.tick()
    assert not new.retiring
    group.clock_.now += 5.1
    group.tick()
    assert new.retiring, "a successor that never registers holds the roll up for `timeout` at most"


def test_boot_failures_make_the_group_fatal_and_show_the_error_once():
    group = FakeGroup()
    for attempt in range(3):
        group.tick()
        (instance,) = group.instances
        instance.error = "cannot load svc:app:\nImportError: nope"
        group.exit(instance, code=3)
        group.tick()
        group.clock_.now += 2
    assert group.state == FATAL and group.instances == []
    out = group.out.getvalue()
    assert out.count("ImportError: nope") == 1 and "FATAL: gave up after 3 failed boots" in out
    group.clock_.now += 60
    group.tick()
    assert group.instances == [], "FATAL stays down"
    group.reload()
    group.tick()
    assert len(group.instances) == 1, "a reload tries again"


def test_rolling_reload_retires_an_old_instance_only_once_a_new_one_is_ready():
    group = FakeGroup(workers=2)
    group.boot()
    old = list(group.instances)
    group.reload()
    assert group.state == RELOADING
    group.tick()
    new = [i for i in group.instances if i.generation == 1]
    assert len(new) == 1 and not any(i.retiring for i in old)
    group.tick()
    assert not any(i.retiring for i in old), "nothing is retired while the new instance boots"
    new[0].ready = True
    group.tick()
    assert [i.retiring for i in old] == [True, False] and old[0].signals == [signal.SIGTERM]
    group.tick()
    new = [i for i in group.instances if i.generation == 1]
    assert len(new) == 2
    new[1].ready = True
    group.tick()
    assert old[1].retiring
    for instance in old:
        group.exit(instance, code=0)
    group.tick()
    assert group.state == RUNNING and "reloaded" in group.out.getvalue()
    assert all(i.generation == 1 for i in group.instances) and len(group.instances) == 2


def test_reload_whose_new_code_does_not_boot_keeps_the_old_instances():
    group = FakeGroup(workers=1)
    group.boot()
    (old,) = group.instances
    group.reload()
    group.tick()
    new = next(i for i in group.instances if i is not old)
    new.error = "cannot load svc:app:\nSyntaxError: bad"
    group.exit(new, code=3)
    group.tick()
    assert group.instances == [old] and not old.retiring and group.state == RUNNING
    assert "reload failed" in group.out.getvalue()


def test_scaling_up_code_that_no_longer_boots_keeps_the_running_instances():
    group = FakeGroup(workers=1)
    group.boot()
    (running,) = group.instances
    group.scale(2)
    for attempt in range(3):
        group.clock_.now += 2
        group.tick()
        new = next(i for i in group.instances if i is not running)
        new.error = "cannot load svc:app:\nImportError: gone"
        group.exit(new, code=3)
        group.tick()
    assert group.instances == [running] and group.desired == 1 and group.state != FATAL
    assert "keeping the 1 that run" in group.out.getvalue()
    assert group.out.getvalue().count("ImportError: gone") == 1


def test_silent_instance_gets_sigabrt_after_timeout_then_sigkill():
    group = FakeGroup(timeout=5.0)
    group.boot()
    (instance,) = group.instances
    group.clock_.now += 5.4  # the loop may have blocked just before a beat was due: not yet 5 s blocked
    group.tick()
    assert instance.signals == []
    assert group.next_deadline() == instance.last_beat + 5.5
    group.clock_.now += 0.2
    group.tick()
    assert instance.signals == [signal.SIGABRT]
    assert group.next_deadline() == instance.kill_at
    group.clock_.now += ABORT_GRACE
    group.tick()
    assert instance.signals == [signal.SIGABRT, signal.SIGKILL]
    group.exit(instance, signum=signal.SIGKILL)
    group.tick()
    assert "blocked for more than 5s, so it was killed by SIGKILL; restarting" in group.out.getvalue()
    assert len(group.instances) == 1 and group.instances[0] is not instance


def test_scale_down_retires_extra_instances_and_stop_retires_all():
    group = FakeGroup(workers=3)
    group.boot()
    group.scale(1)
    group.tick()
    assert sum(i.retiring for i in group.instances) == 2
    group.stop()
    assert all(i.retiring for i in group.instances)
    for instance in list(group.instances):
        group.exit(instance, code=0)
    group.tick()
    assert group.done


def test_printer_aligns_prefixes_and_colours_only_when_asked():
    out = io.StringIO()
    printer = Printer(out, colour=False, clock=lambda: 1764577201.25)
    printer.line("users.1", "hello")
    printer.say("ready")
    printer.plain("ready: users http://127.0.0.1:1")
    at = time.strftime("%H:%M:%S", time.localtime(1764577201.25))
    assert out.getvalue().splitlines() == [f"{at} users.1  | hello", f"{at} microkit | ready",
                                           "ready: users http://127.0.0.1:1"]
    coloured = io.StringIO()
    Printer(coloured, colour=True).line("users.1", "hello")
    assert "\033[" in coloured.getvalue()


def test_reloader_debounces_and_maps_files_to_services(tmp_path: Path):
    for path in ("services/a/app.py", "services/b/app.py", "common.py", ".venv/lib/x.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x = 1\n")
    clock = Clock()
    scopes = {"a": app_scope(tmp_path, "services.a.app:app"), "b": app_scope(tmp_path, "services.b.app:app")}
    reloader = Reloader(tmp_path, scopes, interval=0.5, debounce=0.3, clock=clock)

    def touch(path: str) -> None:
        target = tmp_path / path
        stat = target.stat()
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    touch("services/a/app.py")
    touch(".venv/lib/x.py")
    clock.now += 0.5
    assert reloader.poll() == ([], [])
    clock.now += 0.4
    assert reloader.poll() == ([tmp_path / "services/a/app.py"], ["a"])
    touch("common.py")
    clock.now += 0.5
    reloader.poll()
    clock.now += 0.5
    assert reloader.poll()[1] == ["a", "b"]


def test_health_path_is_answered_by_the_worker_only_when_the_app_does_not_route_it():
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/own":
            start_response("503 Service Unavailable", [])
            return [b"down"]
        start_response("404 Not Found", [])
        return [b"nope"]

    def call(wrapped, path):
        seen = []
        body = b"".join(wrapped({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h, e=None: seen.append(s)))
        return seen[0], body

    assert call(with_health(app, "/healthz"), "/healthz") == ("200 OK", b'{"status": "ok"}')
    assert call(with_health(app, "/own"), "/own") == ("503 Service Unavailable", b"down")
    assert call(with_health(app, "/healthz"), "/other") == ("404 Not Found", b"nope")


def test_importing_the_supervisor_does_not_import_gevent_or_patch_anything():
    code = ("import sys, socket, time; import microkit.cli, microkit.supervisor.arbiter; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'gevent'], 'gevent imported'; "
            "assert socket.socket.__module__ == 'socket' and time.sleep.__module__ == 'time'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_control_socket_falls_back_to_a_short_path_for_deep_projects(tmp_path: Path):
    from microkit.supervisor import control
    assert control.socket_path(tmp_path) == tmp_path / ".microkit" / "supervisor.sock"
    deep = tmp_path / ("x" * 120)
    path = control.socket_path(deep)
    assert len(str(path)) <= control.MAX_SOCKET_PATH and path == control.socket_path(deep)


def test_printer_json_lines_levels_and_quiet_health_paths():
    out = io.StringIO()
    printer = Printer(out, log_format="json", level="info", quiet_paths={"/healthz"}, clock=lambda: 1764577201.25)
    printer.line("gateway.1", "GET /users/1?x=1 200 1.5ms -> 127.0.0.1:4001 id=abc trace=" + "4b" * 16)
    printer.line("users.2", "GET /healthz 200 0.1ms")
    printer.line("users.2", "debug detail", "debug")
    printer.line("users", "users.2 (pid 7) killed by SIGKILL; restarting", "warning")
    printer.plain("ready: gateway http://127.0.0.1:8000")
    access, warning, ready = map(json.loads, out.getvalue().splitlines())
    assert access == {"time": "2025-12-01T08:20:01.250Z", "service": "gateway", "worker": "gateway.1",
                      "level": "info", "message": "GET /users/1?x=1 200 1.5ms -> 127.0.0.1:4001 id=abc trace=" + "4b" * 16,
                      "method": "GET", "path": "/users/1?x=1", "status": 200, "ms": 1.5, "request_id": "abc",
                      "upstream": "127.0.0.1:4001", "trace_id": "4b" * 16}
    assert warning["level"] == "warning" and warning["worker"] is None and warning["service"] == "users"
    assert ready["message"] == "ready: gateway http://127.0.0.1:8000" and ready["service"] == "microkit"
    quiet = io.StringIO()
    Printer(quiet, level="warning").line("users.1", "GET /x 200 1.0ms")
    assert quiet.getvalue() == ""
