"""microkit.testing: a pytest plugin for service authors (see `microkit.testing.plugin` and the README's
"Testing your services"). The fixtures arrive with the `pytest11` entry point; this package also exports
the client they return, for type hints and for use outside the fixtures."""

from microkit.testing.client import Client, Response

__all__ = ["Client", "Response"]
