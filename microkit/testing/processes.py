"""Services and the gateway as the real CLI runs them: `microkit run NAME` and `microkit gateway`, each a
subprocess of the test with its output in a log file under the test's folder."""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from microkit.testing.client import Response
from microkit.testing.servers import START_TIMEOUT, STOP_TIMEOUT, Running, StartError, wait_for

if TYPE_CHECKING:
    from microkit.testing.project import TestProject

LOG_TAIL = 40
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, so no `microkit run` outlives pytest."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def microkit_command() -> list[str]:
    """The installed `microkit` console script of this interpreter, or the same CLI through -m."""
    script = Path(sys.executable).with_name("microkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "microkit.cli"]


class Process:
    """One `microkit` CLI process of a test, its output in a log file under the test's folder."""

    def __init__(self, project: TestProject, args: list[str], label: str) -> None:
        logs = project.own / "logs"
        logs.mkdir(exist_ok=True)
        self.log_path, number = logs / f"{label}.log", 1
        while self.log_path.exists():
            number += 1
            self.log_path = logs / f"{label}-{number}.log"
        self.label = label
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(microkit_command() + args, cwd=project.root, env=project.environ(),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self) -> str:
        lines = self.log().splitlines()[-LOG_TAIL:]
        return "\n".join(f"  | {line}" for line in lines) or "  | (no output)"

    def output(self) -> str:
        """What a failure message shows: where the log is, and its last lines."""
        return f"; its output ({self.log_path}):\n{self.tail()}"

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise StartError(f"`microkit {' '.join(self.proc.args[len(microkit_command()):])}` exited with code "
                             f"{code} before it was ready{self.output()}")

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM: in-flight requests finish, instances deregister)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within STOP_TIMEOUT."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def started(self, condition, timeout: float, what: str):
        """Wait for `condition` as `wait_for` does, failing early if this process exits; a process that never
        gets there is stopped before the failure reaches the test."""
        try:
            return wait_for(condition, timeout, what, self.check_alive, self.output)
        except BaseException:
            self.stop()
            raise


class OwnsProcess:
    """What a fixture that runs one CLI process offers: its log, a graceful stop and a sure stop."""

    process: Process

    def log(self) -> str:
        """Everything the process (and the processes it forked) printed so far."""
        return self.process.log()

    def terminate(self) -> None:
        self.process.terminate()

    def stop(self) -> None:
        self.process.stop()


def consuming(log: str, name: str) -> list[int]:
    """The pids of the consumer processes of service `name` that said they are subscribed."""
    line = re.escape(name) + r"\.events\.\d+\s*\| consuming .* \(pid (\d+)\)"
    return sorted({int(pid) for pid in re.findall(line, log)})


class ProcessService(OwnsProcess, Running):
    """A service run by the real CLI, `microkit run NAME`: its supervisor binds the socket (port 0) and
    forks `workers` gevent workers, which register in the test's registry once healthy, and `consumers`
    consumer processes for its events handlers; the service is ready when all of the workers are listed
    there and every consumer is subscribed (so that nothing published from then on passes it by)."""

    def __init__(self, project: TestProject, name: str, workers: int, consumers: int = 0,
                 timeout: float = START_TIMEOUT) -> None:
        before = {i.instance_id for i in project.registry.instances(name)}
        self.process = Process(project, ["run", name, "-c", str(project.path)], name)
        self.project = project

        def ready() -> list:
            found = [i for i in project.registry.instances(name) if i.instance_id not in before]
            subscribed = len(consuming(self.process.log(), name)) >= consumers
            return found if len(found) >= workers and subscribed else []

        self.instances = self.process.started(ready, timeout, f"service {name} (`microkit run {name}`)")
        first = self.instances[0]
        super().__init__(name, f"http://{first.host}:{first.port}")
        self.pids = sorted({i.pid for i in self.instances})
        self.consumer_pids = consuming(self.process.log(), name)


class ConsumerProcesses(OwnsProcess):
    """A service's consumer processes alone, `microkit run NAME` on a microkit.toml in which the service has
    no HTTP side (a consumers-only service, or one whose app the test serves in-process); ready once every
    consumer is subscribed."""

    def __init__(self, project: TestProject, name: str, consumers: int, config_path: Path,
                 timeout: float = START_TIMEOUT) -> None:
        self.name = name
        self.process = Process(project, ["run", name, "-c", str(config_path)], f"{name}-consumers")

        def subscribed() -> list[int]:
            pids = consuming(self.process.log(), name)
            return pids if len(pids) >= consumers else []

        self.consumer_pids = self.process.started(subscribed, timeout,
                                                  f"the consumers of {name} (`microkit run {name}`)")
        self.pids = self.consumer_pids

    def __repr__(self) -> str:
        return f"<ConsumerProcesses {self.name} {self.pids}>"


READY = re.compile(r"ready: gateway (https?://\S+)")
GATEWAY_HEALTH = "/__microkit/health"


class GatewayProcess(OwnsProcess, Running):
    """The project's own gateway, `microkit gateway`, with every policy of its microkit.toml, routing to
    what the test's registry lists."""

    def __init__(self, project: TestProject, timeout: float = START_TIMEOUT) -> None:
        self.process = Process(project, ["gateway", "-c", str(project.path)], "gateway")
        url = self.process.started(lambda: READY.search(self.process.log()), timeout,
                                   "the gateway (`microkit gateway`)").group(1)
        super().__init__("gateway", url)
        self.project = project

    def routed(self) -> dict[str, int]:
        """Instances the gateway knows per routed service (its health endpoint)."""
        try:
            reply: Response = self.get(GATEWAY_HEALTH, timeout=2.0)
            return reply.json().get("instances", {}) if reply.status == 200 else {}
        except (OSError, AssertionError):
            return {}

    def wait_routed(self, name: str, count: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until the gateway routes to `count` instances of `name` (a service or fake just started)."""
        wait_for(lambda: self.routed().get(name, 0) >= count, timeout,
                 f"the gateway routing to {count} instance(s) of {name}", self.process.check_alive,
                 self.process.output)
