"""A stand-in supervisor: COUNT real worker processes, one after another, each taking a slot among 4 of the
users service's metrics table under ROOT, counting 3 requests and dying without cleaning up (os._exit, as
a killed worker would). It then says "recycled" and stays alive, as the table's owner, until stdin closes.

    python metrics_recycles.py ROOT COUNT

A small interpreter forks much faster than pytest's own process, which is what makes 1,000 of them cheap.
"""

import os
import sys
from pathlib import Path

from microkit.metrics.workers import WorkerMeter

root, count = Path(sys.argv[1]), int(sys.argv[2])
for n in range(count):
    pid = os.fork()
    if pid == 0:
        try:
            meter = WorkerMeter(root, "users", n % 4 + 1)
            for status in (200, 201, 404):
                meter("GET", "/users/1", status, 2.0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
print("recycled", flush=True)
sys.stdin.read()
