"""The access log's buffered stdout in a worker: lines written before a sleep of argv[1] seconds are
flushed by the flushing greenlet, the last one on exit."""

import sys
import gevent
from microkit.gateway.accesslog import buffered_stdout, line_writer, start_flushing
stream = buffered_stdout()
start_flushing(stream, 0.1)
log = line_writer(stream)
log("first")
sys.stderr.write("wrote\n"); sys.stderr.flush()
gevent.sleep(float(sys.argv[1]))
log("last")
sys.stdout.flush()  # what the worker's exit path does
