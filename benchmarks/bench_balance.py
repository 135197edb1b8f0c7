"""How evenly the gateway spreads load over a service's workers (issue 9, item 3).

Run from the repository root: `python benchmarks/bench_balance.py [--duration 5] [--workers 4] [--balance round_robin]`.
It starts the real `microkit up` (gateway included) on a temporary project with one service of `--workers`
workers, drives the gateway with `wrk -t1 -c50`, and prints each worker's share of the requests (counted
by the workers themselves) and of the CPU time they used (from /proc), where workers sharing one socket
behind the gateway's keep-alive pool got 10%, 18%, 31% and 40% of the CPU.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

APP = '''
import os

count = 0


def app(environ, start_response):
    global count
    if environ["PATH_INFO"].endswith("/count"):
        body = str(count).encode()
    else:
        count += environ["PATH_INFO"] == "/bal/x"
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--balance", default="round_robin", choices=["round_robin", "least_outstanding"])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    project = Path(tempfile.mkdtemp(prefix="microkit-balance-"))
    (project / "bal").mkdir()
    (project / "bal" / "__init__.py").write_text("")
    (project / "bal" / "app.py").write_text(APP)
    (project / "microkit.toml").write_text(
        f'[project]\nname = "balbench"\n\n[gateway]\nlisten = "127.0.0.1:0"\naccess_log = false\n\n'
        f'[services.bal]\napp = "bal.app:app"\nroute = "/bal"\nworkers = {args.workers}\n'
        f'balance = "{args.balance}"\naccess_log = false\n')
    up = subprocess.Popen([sys.executable, "-m", "microkit.cli", "up"], cwd=project, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        gateway = None
        for line in up.stdout:
            match = re.match(r"ready: gateway (http://\S+)", line)
            if match:
                gateway = match.group(1)
                break
        if gateway is None:
            raise SystemExit("microkit up did not get ready")
        status = json.loads(subprocess.run([sys.executable, "-m", "microkit.cli", "status", "--json"], cwd=project,
                                           capture_output=True, text=True, timeout=10).stdout)
        workers = next(s for s in status["supervisor"]["services"] if s["name"] == "bal")["instances"]
        before = {w["pid"]: cpu_seconds(w["pid"]) for w in workers}
        out = subprocess.run(["wrk", "-t1", "-c50", f"-d{args.duration:g}s", gateway + "/bal/x"],
                             capture_output=True, text=True, timeout=args.duration + 30).stdout
        cpu = {pid: cpu_seconds(pid) - start for pid, start in before.items()}
        counts = {w["pid"]: int(urllib.request.urlopen(f"http://127.0.0.1:{w['port']}/bal/count", timeout=5).read())
                  for w in workers}
        rate = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)
        total, cpu_total = sum(counts.values()), sum(cpu.values()) or 1
        print(f"{args.workers} workers, {args.balance}, wrk -t1 -c50 -d{args.duration:g}s through the gateway: "
              f"{float(rate):.0f} req/s")
        print("| worker | requests | share | CPU share |")
        print("| --- | --- | --- | --- |")
        for pid in sorted(counts):
            print(f"| {pid} | {counts[pid]} | {counts[pid] / total:.1%} | {cpu[pid] / cpu_total:.1%} |")
    finally:
        try:
            os.killpg(up.pid, signal.SIGTERM)
            up.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(up.pid, signal.SIGKILL)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
