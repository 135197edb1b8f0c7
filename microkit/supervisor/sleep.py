"""`time.sleep` for workers, woken on time.

gevent's default libev backend waits with `epoll_wait`, whose timeout is whole milliseconds: libev
rounds every timer wait up to the next one, and waits at least 1 ms when a timer is due sooner. So
under monkey-patching `time.sleep(0.005)` returns 5-6 ms later, and since every timer due within
the same millisecond fires in the same loop turn, the requests they wake are then served one after
the other: a route that sleeps 5 ms answered at 8.1 ms at the median under `wrk -c50`. Waits on
sockets are not affected (epoll returns as soon as one is ready); timers are.

Here every sleep of a worker's main thread goes through one `timerfd` (`CLOCK_MONOTONIC`, absolute
deadlines, nanoseconds), armed for the earliest deadline and watched by one hub watcher: epoll
returns as that timer expires, and the greenlets whose deadlines have passed are switched to in
deadline order. A sleep that becomes the earliest re-arms the timer (one `timerfd_settime`); the
others cost a heap push. libev's io_uring backend has exact timeouts too, but with it as the
default, timeouts of the gateway and the supervisor failed to fire in microkit's own tests.

A sleep of zero or less (or NaN, or over 1e9 s), sleeps in other threads, and kernels without timerfd keep
gevent's sleep.
`install()` replaces `time.sleep` (which monkey-patching made gevent's); `gevent.sleep` stays as it is.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import time

import gevent
from gevent import get_hub, monkey
from greenlet import getcurrent

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
_EV_READ = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols hold libc's
    libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                     ctypes.POINTER(_Itimerspec)]
    return libc


class Timerfd:
    """A non-blocking CLOCK_MONOTONIC timerfd, set to absolute deadlines in `time.monotonic()` seconds."""

    def __init__(self) -> None:
        self._libc = _libc()
        self.fd = self._libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def set(self, deadline: float) -> None:
        """Expire at `deadline`, a monotonic time after the boot (a past one expires at once)."""
        value = self._spec.it_value
        seconds = int(deadline)
        value.tv_sec, value.tv_nsec = seconds, int((deadline - seconds) * 1e9)
        if self._libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None) < 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        """Consume an expiry, if one is pending."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class Sleeper:
    """The sleeps of one hub (the main thread's): a heap of [deadline, order, greenlet, waiting] entries,
    one timerfd armed for the earliest, one read watcher on it. The watcher holds the loop open only while
    a greenlet sleeps, as gevent's own timers do."""

    def __init__(self, hub) -> None:
        self.hub = hub
        self.timer = Timerfd()
        self.heap: list[list] = []
        self.order = itertools.count()
        self.armed = float("inf")
        self.watcher = hub.loop.io(self.timer.fd, _EV_READ, ref=False)
        self.watcher.start(self._expired)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        entry = [deadline, next(self.order), getcurrent(), True]
        heapq.heappush(self.heap, entry)
        if deadline < self.armed:
            self.timer.set(deadline)
            self.armed = deadline
        if not self.watcher.ref:
            self.watcher.ref = True
        try:
            self.hub.switch()
        finally:
            if entry[3]:  # woken by something else (a kill, a gevent.Timeout): forget the entry
                entry[3] = False
                self._settle()

    def _expired(self) -> None:
        self.timer.clear()
        self.armed = float("inf")
        heap = self.heap
        now = time.monotonic()  # only what was due on waking: later ones wait a loop turn, after the sockets
        while heap:
            entry = heap[0]
            if entry[3] and entry[0] > now:
                break
            heapq.heappop(heap)
            if entry[3]:
                entry[3] = False
                entry[2].switch()
        self._settle()

    def _settle(self) -> None:
        """Drop forgotten entries at the top, re-arm for the earliest left (if sooner than armed), and let the
        loop end once nobody sleeps."""
        heap = self.heap
        while heap and not heap[0][3]:
            heapq.heappop(heap)
        if heap:
            if heap[0][0] < self.armed:
                self.timer.set(heap[0][0])
                self.armed = heap[0][0]
        elif self.watcher.ref:
            self.watcher.ref = False

    def close(self) -> None:
        self.watcher.stop()
        self.timer.close()


_state: dict = {"sleeper": None}  # the main thread's Sleeper once made (False: no timerfd); None again after a fork
_gevent_sleep = gevent.sleep
_thread_ident = monkey.get_original("_thread", "get_ident")  # the OS thread's (patched, it is the greenlet's)
_MAIN = _thread_ident()
_LONGEST = 1e9  # seconds; longer ones (inf included) are gevent's, as are zero, negative and NaN ones


def precise_sleep(seconds: float) -> None:
    """`time.sleep(seconds)`: the main thread's sleeps wake on a timerfd; anything else is gevent's sleep."""
    if 0 < seconds < _LONGEST and _thread_ident() == _MAIN:
        sleeper = _state["sleeper"]
        if sleeper is None:
            sleeper = _start()
        if sleeper is not False and getcurrent() is not sleeper.hub:  # the hub itself cannot wait: gevent says so
            return sleeper.sleep(seconds)
    return _gevent_sleep(seconds)


def _start():
    """The main thread's Sleeper (made again in a forked child: the parent's timerfd is shared); False where
    timerfd is missing."""
    try:
        sleeper = Sleeper(get_hub())
    except (OSError, AttributeError):
        sleeper = False
    _state["sleeper"] = sleeper
    return sleeper


def _forget_in_child() -> None:
    """A forked child closes its copy of the parent's timerfd (reading it would take the parent's
    expiries) and makes its own at its first sleep."""
    sleeper = _state["sleeper"]
    _state["sleeper"] = None
    if sleeper:
        try:
            sleeper.close()
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_in_child)


def install() -> None:
    """Make `time.sleep` the precise one (after monkey-patching)."""
    time.sleep = precise_sleep
