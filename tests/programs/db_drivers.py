"""microkit.supervisor.drivers under gevent: install() imports no driver, patches each as it is imported,
and installs its import hook once."""

import sys
from gevent import monkey
monkey.patch_all()
from microkit.supervisor import drivers
drivers.install()
assert not {"psycopg2", "psycopg"} & set(sys.modules), "install() imports no driver"
import psycopg2.extensions
assert psycopg2.extensions.get_wait_callback() is drivers.psycopg2_wait, "patched as it was imported"
import psycopg
assert drivers.is_cooperative("psycopg") and drivers.is_cooperative("pymysql")
drivers.install()
assert sum(isinstance(f, drivers.PatchOnImport) for f in sys.meta_path) == 1, "installed once"
