"""microkit.testing: a pytest plugin for service authors (see `microkit.testing.plugin` and the README's
"Testing your services"). The fixtures arrive with the `pytest11` entry point; this package also exports
the client they return, for type hints and for use outside the fixtures, and `eventually`."""

from typing import Any, Callable

from microkit.testing.client import Client, Response
from microkit.testing.servers import StartError, wait_for

__all__ = ["Client", "Response", "eventually"]


def eventually(condition: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something true, and return that; fail the test after `timeout`
    seconds. For what happens a moment after a request: an event handled by another service's consumer."""
    import pytest

    try:
        return wait_for(condition, timeout, what)
    except StartError:
        pytest.fail(f"{what} did not hold within {timeout:g}s", pytrace=False)
