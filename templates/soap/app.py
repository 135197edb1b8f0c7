"""The {{service}} service: SOAP 1.1 operations on {{model}} records, described by the WSDL at ROUTE?wsdl.

    Create{{model}}(record: New{{model}}) -> {{model}}
    Get{{model}}(id: int) -> {{model}}              a Client fault when there is none
    List{{model}}s() -> list[{{model}}]
    Delete{{model}}(id: int) -> bool
    GET /healthz                                     health
ROUTE is the service's route in microkit.toml, which microkit passes in MICROKIT_ROUTE ("" when run
by hand); the WSDL's address is the URL the client fetched it from (the gateway's, when routed).
Records live in the process's memory: keep `workers = 1`, or put a database behind `Records`.
"""

import itertools
import os
import threading
from dataclasses import dataclass

from microkit.soap import Fault, SoapService

service = SoapService("{{model}}Service", namespace="urn:{{project}}:{{service}}")


@dataclass
class New{{model}}:
    name: str
    email: str


@dataclass
class {{model}}:
    id: int
    name: str
    email: str


class Records:
    """{{model}} records in memory, one store per process."""

    def __init__(self) -> None:
        self.items: dict[int, {{model}}] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    def add(self, record: New{{model}}) -> {{model}}:
        with self.lock:
            item = {{model}}(id=next(self.ids), name=record.name, email=record.email)
            self.items[item.id] = item
            return item


RECORDS = Records()


@service.operation(name="Create{{model}}")
def create(record: New{{model}}) -> {{model}}:
    if not record.name.strip():
        raise Fault("name must not be empty")
    if "@" not in record.email:
        raise Fault(f"email {record.email!r} is not an address")
    return RECORDS.add(record)


@service.operation(name="Get{{model}}")
def read(id: int) -> {{model}}:
    item = RECORDS.items.get(id)
    if item is None:
        raise Fault(f"{{service}} {id} not found")
    return item


@service.operation(name="List{{model}}s")
def list_all() -> list[{{model}}]:
    return sorted(RECORDS.items.values(), key=lambda item: item.id)


@service.operation(name="Delete{{model}}")
def delete(id: int) -> bool:
    return RECORDS.items.pop(id, None) is not None


app = service.wsgi_app(os.environ.get("MICROKIT_ROUTE", ""))
