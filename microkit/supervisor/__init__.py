"""`microkit up`: an arbiter that keeps groups of pre-forked gevent workers (and command services)
running. See arbiter.py for the process, group.py for the reusable unit, worker.py for the child."""
