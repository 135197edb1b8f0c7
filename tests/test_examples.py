"""The demo shop in examples/ stays working: its services' own tests pass."""

import os
import subprocess
import sys

from helpers import REPO


def test_the_shop_services_pass_their_own_tests():
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "services"],
                            cwd=REPO / "examples" / "shop", env=environ, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
