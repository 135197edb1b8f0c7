"""Checks of microkit.supervisor.sleep in a monkey-patched process of its own; prints one JSON object.

    python sleep_checks.py
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from microkit.supervisor import sleep  # noqa: E402

sleep.install()
facts: dict = {"installed": time.sleep is sleep.precise_sleep}

# never early, whatever the mix of deadlines and greenlets
early = []


def sleeper(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        seconds = rng.uniform(0.0001, 0.003)
        began = time.monotonic()
        time.sleep(seconds)
        if time.monotonic() - began < seconds:
            early.append(seconds)


gevent.joinall([gevent.spawn(sleeper, n) for n in range(20)])
facts["early"] = len(early)

# woken in deadline order
order: list[int] = []
gevent.joinall([gevent.spawn(lambda n=n: (time.sleep(n / 1000), order.append(n))) for n in (3, 1, 2)])
facts["order"] = order

# a killed sleeper and one interrupted by a Timeout leave nothing behind
victim = gevent.spawn(time.sleep, 30)
gevent.sleep(0.01)
victim.kill()
try:
    with gevent.Timeout(0.01):
        time.sleep(30)
    facts["timeout"] = "not raised"
except gevent.Timeout:
    facts["timeout"] = "raised"
state = sleep._state["sleeper"]
facts["left_sleeping"] = sum(1 for entry in state.heap if entry[3])
facts["holds_loop"] = state.watcher.ref
began = time.monotonic()
gevent.wait(timeout=5)  # the loop ends at once: the timer watcher no longer holds it
facts["loop_ended_s"] = round(time.monotonic() - began, 3)

# what a timerfd cannot take goes to gevent's sleep, and leaves nothing behind
odd = gevent.spawn(time.sleep, float("inf"))
gevent.sleep(0.01)
odd.kill()
time.sleep(0)
facts["odd_left"] = sum(1 for entry in state.heap if entry[3])

# sleeps in a real thread are gevent's (the thread has a hub of its own)
pool = gevent.get_hub().threadpool
facts["thread"] = pool.spawn(lambda: (time.sleep(0.002), "slept")[1]).get(timeout=5)

# a forked child makes its own timer and its sleeps work; the parent's still do
parent_fd = state.timer.fd
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    time.sleep(0.002)
    child = sleep._state["sleeper"]
    os.write(write, json.dumps({"own": child is not state and child.timer.fd is not None}).encode())
    os._exit(0)
os.close(write)
facts["child"] = json.loads(os.read(read, 1000))
os.waitpid(pid, 0)
time.sleep(0.002)
facts["parent_same_timer"] = sleep._state["sleeper"] is state and state.timer.fd == parent_fd
print(json.dumps(facts))
