"""microkit: take a Python web application from one process to many services, on gevent."""

__version__ = "0.1.0"
