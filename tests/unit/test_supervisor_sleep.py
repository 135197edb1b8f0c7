"""microkit.supervisor.sleep: the workers' `time.sleep` on a timerfd, checked in a monkey-patched process
of its own (tests/programs/sleep_checks.py), so this process stays unpatched."""

from __future__ import annotations

import json
import subprocess
import sys

from support.cli import PROGRAMS


def test_sleeps_wake_in_order_never_early_and_leave_nothing_behind():
    run = subprocess.run([sys.executable, str(PROGRAMS / "sleep_checks.py")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert facts["installed"] is True
    assert facts["early"] == 0, "no sleep returns before its time"
    assert facts["order"] == [1, 2, 3], "woken in deadline order"
    assert facts["timeout"] == "raised", "a gevent.Timeout interrupts a sleep"
    assert facts["left_sleeping"] == 0 and facts["holds_loop"] is False, "killed and interrupted sleeps are forgotten"
    assert facts["loop_ended_s"] < 1, "with nobody asleep the timer does not hold the loop open"
    assert facts["odd_left"] == 0, "an infinite sleep is gevent's, and a kill ends it"
    assert facts["thread"] == "slept", "a real thread sleeps with gevent's sleep"
    assert facts["child"] == {"own": True} and facts["parent_same_timer"] is True, "a forked child makes its own timer"
