"""SOAP 1.1 services from plain Python functions: a WSGI app, the WSDL it serves at `?wsdl`, safe XML.

Operations are typed functions; their parameters and results are `str`, `int`, `float`, `bool`,
`decimal.Decimal`, dataclasses of those (complex types), `list[...]` and `X | None` of them. The
style is document/literal wrapped (WS-I Basic Profile), which every SOAP client speaks: the
request's Body holds an element named after the operation, with one child per parameter; the
answer holds `<OperationResponse><result>...</result></OperationResponse>`.

Why not spyne: its last release (2.14, 2022) does not import on Python 3.12 and later, which
microkit supports. This module needs only defusedxml, which parses requests with DTDs forbidden:
SOAP 1.1 forbids them in messages, and with them go external entities and entity-expansion bombs.

Errors are SOAP faults with HTTP 500, as SOAP 1.1 says: `soap:Client` for a request that is wrong
(bad XML, a DTD, an unknown operation, a missing or malformed argument, or a `Fault` the code raises),
`soap:Server` for an exception in an operation (its traceback goes to the server's log, not the client).
"""

from __future__ import annotations

import dataclasses
import decimal
import inspect
import json
import re
import traceback
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

try:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("microkit.soap needs defusedxml: pip install 'microkit[soap]'") from exc

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCALARS = {str: "string", int: "long", float: "double", bool: "boolean", decimal.Decimal: "decimal"}
HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class Fault(Exception):
    """Raise in an operation to answer a SOAP fault: `Client` (the caller's mistake, the default) or `Server`."""

    def __init__(self, message: str, code: str = "Client"):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Shape:
    """A parameter's or field's type as XML sees it: the base type, repeated or not, optional or not."""

    base: type
    many: bool = False
    optional: bool = False

    @classmethod
    def of(cls, hint: Any, where: str) -> "Shape":
        optional = False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                raise TypeError(f"{where}: only X | None unions can be mapped to XML, not {hint!r}")
            hint, optional = args[0], True
        many = typing.get_origin(hint) is list
        if many:
            (hint,) = typing.get_args(hint) or (None,)
        if hint not in SCALARS and not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            raise TypeError(f"{where}: {hint!r} cannot be mapped to XML (use str, int, float, bool, "
                            f"Decimal, a dataclass, list[...] or X | None)")
        return cls(hint, many, optional)

    @property
    def xsd(self) -> str:
        return f"xsd:{SCALARS[self.base]}" if self.base in SCALARS else f"tns:{self.base.__name__}"



@dataclass(frozen=True)
class Part:
    """A parameter of an operation or a field of a complex type."""

    name: str
    shape: Shape
    required: bool


@dataclass(frozen=True)
class Operation:
    name: str
    function: Callable
    params: tuple[Part, ...]
    result: Shape | None


def _fields(cls: type) -> tuple[Part, ...]:
    hints = typing.get_type_hints(cls)
    parts = []
    for f in dataclasses.fields(cls):
        shape = Shape.of(hints[f.name], f"{cls.__name__}.{f.name}")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        parts.append(Part(f.name, shape, not (shape.optional or shape.many or has_default)))
    return tuple(parts)


class SoapService:
    """Operations mapped to functions, served as one SOAP 1.1 endpoint with its WSDL."""

    def __init__(self, name: str, namespace: str, *, max_body: int = 1024 ** 2):
        self.name = name
        self.namespace = namespace
        self.max_body = max_body
        self.operations: dict[str, Operation] = {}
        self.types: dict[str, tuple[Part, ...]] = {}

    def operation(self, function: Callable | None = None, *, name: str | None = None) -> Callable:
        """Decorator: `@service.operation` or `@service.operation(name="GetUser")`."""
        def register(func: Callable) -> Callable:
            op_name = name or func.__name__
            hints = typing.get_type_hints(func)
            params = []
            for param in inspect.signature(func).parameters.values():
                if param.name not in hints:
                    raise TypeError(f"{op_name}: parameter {param.name} needs a type hint")
                shape = Shape.of(hints[param.name], f"{op_name}({param.name})")
                params.append(Part(param.name, shape, param.default is inspect.Parameter.empty
                                   and not shape.optional and not shape.many))
            result = hints.get("return")
            result_shape = None if result in (None, type(None)) else Shape.of(result, f"{op_name} -> ")
            for shape in [p.shape for p in params] + ([result_shape] if result_shape else []):
                self._collect(shape)
            self.operations[op_name] = Operation(op_name, func, tuple(params), result_shape)
            return func
        return register(function) if function is not None else register

    def _collect(self, shape: Shape) -> None:
        if shape.base in SCALARS or shape.base.__name__ in self.types:
            return
        self.types[shape.base.__name__] = ()  # placeholder first: recursive types end here
        self.types[shape.base.__name__] = fields = _fields(shape.base)
        for part in fields:
            self._collect(part.shape)

    # The WSDL

    def wsdl(self, address: str) -> bytes:
        """The WSDL 1.1 document, with `address` as the endpoint clients call."""
        def element(part: Part) -> str:
            occurs = (' minOccurs="0"' if not part.required else "") + (' maxOccurs="unbounded"' if part.shape.many
                                                                        else "")
            nillable = ' nillable="true"' if part.shape.optional and not part.shape.many else ""
            return f'<xsd:element name="{part.name}" type="{part.shape.xsd}"{occurs}{nillable}/>'

        def sequence(parts: Iterable[Part]) -> str:
            return "<xsd:sequence>" + "".join(element(p) for p in parts) + "</xsd:sequence>"

        schema = [f'<xsd:complexType name="{name}">{sequence(parts)}</xsd:complexType>'
                  for name, parts in self.types.items()]
        messages, port_ops, binding_ops = [], [], []
        for op in self.operations.values():
            result = [Part("result", op.result, False)] if op.result else []
            schema.append(f'<xsd:element name="{op.name}"><xsd:complexType>{sequence(op.params)}'
                          f'</xsd:complexType></xsd:element>')
            schema.append(f'<xsd:element name="{op.name}Response"><xsd:complexType>{sequence(result)}'
                          f'</xsd:complexType></xsd:element>')
            messages.append(f'<wsdl:message name="{op.name}Input"><wsdl:part name="parameters" '
                            f'element="tns:{op.name}"/></wsdl:message>'
                            f'<wsdl:message name="{op.name}Output"><wsdl:part name="parameters" '
                            f'element="tns:{op.name}Response"/></wsdl:message>')
            port_ops.append(f'<wsdl:operation name="{op.name}"><wsdl:input message="tns:{op.name}Input"/>'
                            f'<wsdl:output message="tns:{op.name}Output"/></wsdl:operation>')
            action = quoteattr(f"{self.namespace}/{op.name}")
            binding_ops.append(f'<wsdl:operation name="{op.name}"><soap:operation soapAction={action} '
                               f'style="document"/><wsdl:input><soap:body use="literal"/></wsdl:input>'
                               f'<wsdl:output><soap:body use="literal"/></wsdl:output></wsdl:operation>')
        ns = quoteattr(self.namespace)
        text = (
            f'<?xml version="1.0" encoding="utf-8"?>\n'
            f'<wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" '
            f'xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:xsd="{XSD}" xmlns:tns={ns} '
            f'targetNamespace={ns} name="{self.name}">'
            f'<wsdl:types><xsd:schema targetNamespace={ns} elementFormDefault="qualified">{"".join(schema)}'
            f'</xsd:schema></wsdl:types>{"".join(messages)}'
            f'<wsdl:portType name="{self.name}PortType">{"".join(port_ops)}</wsdl:portType>'
            f'<wsdl:binding name="{self.name}Binding" type="tns:{self.name}PortType">'
            f'<soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>'
            f'{"".join(binding_ops)}</wsdl:binding>'
            f'<wsdl:service name="{self.name}"><wsdl:port name="{self.name}Port" binding="tns:{self.name}Binding">'
            f'<soap:address location={quoteattr(address)}/></wsdl:port></wsdl:service></wsdl:definitions>\n')
        return text.encode("utf-8")

    # Requests

    def handle(self, body: bytes) -> bytes:
        """One SOAP request's bytes to the response envelope's bytes; raises Fault for a fault answer."""
        try:
            root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except DefusedXmlException as exc:
            raise Fault(f"refused XML: {type(exc).__name__} (SOAP messages must not contain a DTD)") from None
        except (ParseError, ValueError) as exc:
            raise Fault(f"request body is not well-formed XML: {exc}") from None
        if root.tag == f"{{{SOAP12_ENV}}}Envelope":
            raise Fault("this endpoint speaks SOAP 1.1 (envelope namespace " + SOAP_ENV + ")", "VersionMismatch")
        if root.tag != f"{{{SOAP_ENV}}}Envelope":
            raise Fault("the root element must be a SOAP 1.1 Envelope")
        for header in root.findall(f"{{{SOAP_ENV}}}Header/*"):
            if header.get(f"{{{SOAP_ENV}}}mustUnderstand") in ("1", "true"):
                raise Fault(f"header {header.tag} is not understood", "MustUnderstand")
        content = [child for child in root.findall(f"{{{SOAP_ENV}}}Body/*")]
        if len(content) != 1:
            raise Fault("the SOAP Body must hold exactly one operation element")
        call = content[0]
        name = _local(call.tag)
        op = self.operations.get(name)
        if op is None:
            raise Fault(f"unknown operation {name!r} (known: {', '.join(self.operations)})")
        arguments = self._read_parts(call, op.params, name)
        try:
            value = op.function(**arguments)
        except Fault:
            raise
        except Exception:
            raise _ServerError(traceback.format_exc()) from None
        result = "" if op.result is None else self._write("result", value, op.result)
        return _envelope(f"<tns:{op.name}Response>{result}</tns:{op.name}Response>", self.namespace)

    def _read_parts(self, parent: Element, parts: tuple[Part, ...], where: str) -> dict[str, Any]:
        known = {p.name for p in parts}
        found: dict[str, list[Element]] = {}
        for child in parent:
            name = _local(child.tag)
            if name not in known:
                raise Fault(f"{where}: unexpected element {name!r} (expected: {', '.join(known) or 'none'})")
            found.setdefault(name, []).append(child)
        values: dict[str, Any] = {}
        for part in parts:
            elements = found.get(part.name, [])
            path = f"{where}.{part.name}"
            if part.shape.many:
                values[part.name] = [self._read(e, part.shape, path) for e in elements]
            elif len(elements) > 1:
                raise Fault(f"{path}: given {len(elements)} times, expected once")
            elif elements:
                values[part.name] = self._read(elements[0], part.shape, path)
            elif part.required:
                raise Fault(f"{path}: required, missing")
            elif part.shape.optional:
                values[part.name] = None
        return values

    def _read(self, element: Element, shape: Shape, path: str) -> Any:
        if element.get(f"{{{XSI}}}nil") in ("true", "1"):
            if not shape.optional:
                raise Fault(f"{path}: must not be nil")
            return None
        if shape.base not in SCALARS:
            return shape.base(**self._read_parts(element, self.types[shape.base.__name__], path))
        if len(element):
            raise Fault(f"{path}: expected a {SCALARS[shape.base]}, got child elements")
        text = element.text or ""
        if shape.base is str:
            return text
        text = text.strip()
        try:
            if shape.base is bool:
                if text not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                return text in ("true", "1")
            if shape.base is float and text.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
                raise ValueError(text)
            return shape.base(text)
        except (ValueError, decimal.InvalidOperation):
            raise Fault(f"{path}: {text!r} is not a valid xsd:{SCALARS[shape.base]}") from None

    def _write(self, name: str, value: Any, shape: Shape) -> str:
        if shape.many:
            return "".join(self._write(name, item, Shape(shape.base)) for item in (value or ()))
        if value is None:
            if shape.optional:
                return f'<tns:{name} xsi:nil="true"/>'
            raise TypeError(f"{name}: None returned where a value is required")
        if shape.base in SCALARS:
            if not isinstance(value, shape.base) and not (shape.base is float and isinstance(value, int)):
                raise TypeError(f"{name}: expected {shape.base.__name__}, got {type(value).__name__}")
            text = ("true" if value else "false") if shape.base is bool else escape(str(value))
            return f"<tns:{name}>{text}</tns:{name}>"
        if not isinstance(value, shape.base):
            raise TypeError(f"{name}: expected {shape.base.__name__}, got {type(value).__name__}")
        inner = "".join(self._write(part.name, getattr(value, part.name), part.shape)
                        for part in self.types[shape.base.__name__])
        return f"<tns:{name}>{inner}</tns:{name}>"

    # WSGI

    def wsgi_app(self, route: str = "", health: str = "/healthz") -> Callable:
        """The WSGI app: POST SOAP requests and GET `?wsdl` at `route` (or `route/`), health at `health`."""
        base = route.rstrip("/")
        endpoints = {base + "/", base or "/"}

        def application(environ: dict, start_response: Callable) -> list[bytes]:
            path = environ.get("PATH_INFO") or "/"
            method = environ.get("REQUEST_METHOD", "GET")
            if path == health and method in ("GET", "HEAD"):
                return _answer(start_response, "200 OK", "application/json", json.dumps({"status": "ok"}).encode())
            if path not in endpoints:
                return _answer(start_response, "404 Not Found", "text/plain; charset=utf-8", b"not found\n")
            if method in ("GET", "HEAD") and "wsdl" in {k.lower() for k in parse_qs(
                    environ.get("QUERY_STRING", ""), keep_blank_values=True)}:
                return _answer(start_response, "200 OK", "text/xml; charset=utf-8", self.wsdl(_address(environ)))
            if method != "POST":
                return _answer(start_response, "405 Method Not Allowed", "text/plain; charset=utf-8",
                               b"POST a SOAP 1.1 request, or GET ?wsdl\n", [("Allow", "GET, HEAD, POST")])
            try:
                body = _read_body(environ, self.max_body)
                answer = self.handle(body)
            except Fault as fault:
                return _answer(start_response, "500 Internal Server Error", "text/xml; charset=utf-8",
                               _fault(fault.code, fault.message))
            except _ServerError as exc:
                environ["wsgi.errors"].write(str(exc))
                return _answer(start_response, "500 Internal Server Error", "text/xml; charset=utf-8",
                               _fault("Server", "internal error"))
            return _answer(start_response, "200 OK", "text/xml; charset=utf-8", answer)

        return application


class _ServerError(Exception):
    """An operation raised: the client gets a Server fault, the log gets the traceback."""


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _envelope(body: str, namespace: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:xsi="{XSI}" '
            f'xmlns:tns={quoteattr(namespace)}><soap:Body>{body}</soap:Body></soap:Envelope>\n').encode("utf-8")


def _fault(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>'
            f'<soap:Fault><faultcode>soap:{code}</faultcode><faultstring>{escape(message)}</faultstring>'
            f'</soap:Fault></soap:Body></soap:Envelope>\n').encode("utf-8")


def _read_body(environ: dict, limit: int) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        raise Fault("Content-Length is not a number") from None
    if length > limit:
        raise Fault(f"request body of {length} bytes is larger than the {limit} allowed")
    stream = environ["wsgi.input"]
    body = stream.read(length) if length >= 0 else stream.read(limit + 1)
    if len(body) > limit:
        raise Fault(f"request body is larger than the {limit} bytes allowed")
    return body


def _address(environ: dict) -> str:
    """The URL this request was sent to, as the client sees it (through the gateway: the gateway's)."""
    scheme = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
    if scheme not in ("http", "https"):
        scheme = environ.get("wsgi.url_scheme", "http")
    host = ""
    for candidate in (environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip(), environ.get("HTTP_HOST", "")):
        if candidate and HOST.match(candidate):
            host = candidate
            break
    if not host:
        host = f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '80')}"
    path = environ.get("SCRIPT_NAME", "") + (environ.get("PATH_INFO") or "/")
    return f"{scheme}://{host}{path}"


def _answer(start_response: Callable, status: str, content_type: str, body: bytes,
            extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(extra or [])])
    return [body]
