"""How long microkit.testing's fixtures take to start things, against the demo shop.

Runs pytest (in a subprocess, the plugin through its entry point) on generated tests that time each
start with perf_counter and report them; prints the median, min and max per kind of start, and the
wall time of the same tests with and without pytest-xdist (-n 2).

    python benchmarks/bench_testing.py [--repeat 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TESTS = '''
import json, os, time
import pytest

def record(kind, seconds):
    with open(os.environ["BENCH_OUT"], "a") as out:
        out.write(json.dumps({"kind": kind, "seconds": seconds}) + "\\n")

@pytest.mark.parametrize("n", range(REPEAT))
def test_inprocess(n, service):
    start = time.perf_counter()
    service("users")
    record("service, in-process", time.perf_counter() - start)

@pytest.mark.parametrize("n", range(REPEAT))
def test_process(n, service):
    start = time.perf_counter()
    service("users", mode="process")
    record("service, mode=process (1 worker)", time.perf_counter() - start)

@pytest.mark.parametrize("n", range(REPEAT))
def test_gateway(n, microkit_test):
    start = time.perf_counter()
    microkit_test.start_gateway()
    record("gateway", time.perf_counter() - start)
'''


def run(folder: Path, out: Path, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROKIT_") and k != "DATABASE_URL"}
    env["BENCH_OUT"] = str(out)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--microkit-config",
                             str(REPO / "microkit.toml"), *args, str(folder / "test_bench.py")],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8, help="starts of each kind (default 8)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "test_bench.py").write_text(TESTS.replace("REPEAT", str(options.repeat)))
        out = folder / "starts.jsonl"
        serial = run(folder, out)
        parallel = run(folder, folder / "parallel.jsonl", "-n", "2")
        starts: dict[str, list[float]] = {}
        for line in out.read_text().splitlines():
            fact = json.loads(line)
            starts.setdefault(fact["kind"], []).append(fact["seconds"])
    for kind, seconds in starts.items():
        print(f"{kind:36} median {statistics.median(seconds) * 1000:7.0f} ms   "
              f"min {min(seconds) * 1000:6.0f}   max {max(seconds) * 1000:6.0f}   (n={len(seconds)})")
    print(f"{3 * options.repeat} tests, wall time: {serial:.1f} s serial, {parallel:.1f} s with -n 2")


if __name__ == "__main__":
    main()
