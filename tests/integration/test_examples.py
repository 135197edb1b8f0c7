"""The demo shop in examples/ stays working: its services' own tests pass, and its end-to-end test (users,
orders and payments through the real gateway, on a Redis registry under a key prefix of its own)."""

import os
import subprocess
import sys

from support.cli import REPO
from support.servers import REDIS_URL


def run_shop_tests(*args: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("MICROKIT_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                            cwd=REPO / "examples" / "shop", env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_shop_services_pass_their_own_tests():
    out = run_shop_tests("services")
    assert " passed" in out and "skipped" not in out


def test_the_shop_end_to_end_on_redis():
    out = run_shop_tests("tests", "--microkit-registry", REDIS_URL, "-rs")
    assert "1 passed" in out, out
