"""The HTTP/1.1 engine shared by service workers and the gateway."""

from microkit.http.errors import ClientDisconnected, HTTPError
from microkit.http.limits import Limits
from microkit.http.request import RawHandler, Request
from microkit.http.server import HTTPServer

__all__ = ["ClientDisconnected", "HTTPError", "HTTPServer", "Limits", "RawHandler", "Request"]
