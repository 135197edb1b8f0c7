"""microkit.soap: typed operations, the WSDL (read by zeep), faults, and the XML it must refuse."""

from __future__ import annotations

import dataclasses
import decimal
import io
import re
from dataclasses import dataclass, field

import pytest

from microkit.soap import Fault, SoapService

NS = "urn:test:people"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@dataclass
class Address:
    city: str
    zip: str | None = None


@dataclass
class Person:
    id: int
    name: str
    active: bool
    score: float
    balance: decimal.Decimal
    address: Address
    tags: list[str] = field(default_factory=list)


service = SoapService("People", NS, max_body=64 * 1024)


@service.operation(name="Echo")
def echo(person: Person, times: int = 1) -> list[Person]:
    return [person] * times


@service.operation
def boom() -> int:
    raise RuntimeError("secret detail")


@service.operation
def refuse(reason: str) -> None:
    raise Fault(f"refused: {reason}")


app = service.wsgi_app("/people")


def call(method: str, path: str, body: bytes = b"", query: str = "", headers: dict | None = None):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SCRIPT_NAME": "",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(),
               "wsgi.url_scheme": "http", "SERVER_NAME": "internal", "SERVER_PORT": "9999",
               "HTTP_HOST": "gw.example:8000", **(headers or {})}
    started = {}
    chunks = app(environ, lambda status, hdrs, exc=None: started.update(status=status, headers=dict(hdrs)))
    return int(started["status"].split()[0]), started["headers"], b"".join(chunks).decode(), environ["wsgi.errors"]


def envelope(body: str, doctype: str = "", header: str = "") -> bytes:
    return (f'<?xml version="1.0"?>{doctype}<s:Envelope xmlns:s="{ENV}">{header}<s:Body>{body}</s:Body>'
            f'</s:Envelope>').encode()


PERSON = ('<p:person><p:id>7</p:id><p:name>Ada &amp; co</p:name><p:active>true</p:active><p:score>1.5</p:score>'
          '<p:balance>10.25</p:balance><p:address><p:city>Paris</p:city></p:address>'
          '<p:tags>a</p:tags><p:tags>b</p:tags></p:person>')


def echo_call(person: str = PERSON, extra: str = "") -> bytes:
    return envelope(f'<p:Echo xmlns:p="{NS}">{person}{extra}</p:Echo>')


def fault_of(body: str) -> tuple[str, str]:
    code = re.search(r"<faultcode>(.*?)</faultcode>", body).group(1)
    return code, re.search(r"<faultstring>(.*?)</faultstring>", body, re.S).group(1)


def test_typed_arguments_and_results_round_trip():
    status, headers, body, _ = call("POST", "/people", echo_call(extra="<p:times>2</p:times>"))
    assert status == 200 and headers["Content-Type"].startswith("text/xml")
    assert body.count("<tns:result>") == 2 and "<tns:name>Ada &amp; co</tns:name>" in body
    assert "<tns:zip xsi:nil=\"true\"/>" in body and "<tns:tags>a</tns:tags><tns:tags>b</tns:tags>" in body
    assert "<tns:balance>10.25</tns:balance>" in body and "<tns:active>true</tns:active>" in body


def test_zeep_reads_the_wsdl_and_builds_typed_calls():
    import zeep
    from zeep.wsdl.utils import etree_to_string

    status, _, wsdl, _ = call("GET", "/people", query="wsdl")
    assert status == 200

    class Transport(zeep.Transport):
        def load(self, url):
            return wsdl.encode()

    client = zeep.Client("http://gw.example:8000/people?wsdl", transport=Transport())
    assert client.service._binding_options["address"] == "http://gw.example:8000/people"
    person = client.get_type("{urn:test:people}Person")(id=1, name="x", active=False, score=2.0,
                                                        balance=decimal.Decimal("1.10"), address={"city": "Oslo"})
    message = client.create_message(client.service, "Echo", person=person, times=3)
    status, _, body, _ = call("POST", "/people", etree_to_string(message))
    assert status == 200 and body.count("<tns:result>") == 3 and "<tns:city>Oslo</tns:city>" in body


def test_wsdl_address_is_what_the_client_used():
    wsdl = call("GET", "/people/", query="wsdl")[2]
    assert 'location="http://gw.example:8000/people/"' in wsdl
    forwarded = call("GET", "/people", query="WSDL", headers={"HTTP_X_FORWARDED_PROTO": "https",
                                                              "HTTP_X_FORWARDED_HOST": "api.example.com"})[2]
    assert 'location="https://api.example.com/people"' in forwarded
    bad_host = call("GET", "/people", query="wsdl", headers={"HTTP_HOST": 'x"><evil/>'})[2]
    assert 'location="http://internal:9999/people"' in bad_host and "<evil/>" not in bad_host


@pytest.mark.parametrize("body, message", [
    (b"<not xml", "not well-formed XML"),
    (b"<a/>", "must be a SOAP 1.1 Envelope"),
    (envelope(""), "exactly one operation element"),
    (envelope(f'<p:Nope xmlns:p="{NS}"/>'), "unknown operation 'Nope'"),
    (echo_call(PERSON.replace("<p:id>7</p:id>", "")), "Echo.person.id: required, missing"),
    (echo_call(PERSON.replace("<p:id>7</p:id>", "<p:id>seven</p:id>")),
     "Echo.person.id: 'seven' is not a valid xsd:long"),
    (echo_call(PERSON.replace("true", "yes")), "Echo.person.active: 'yes' is not a valid xsd:boolean"),
    (echo_call(PERSON.replace("<p:id>7</p:id>", "<p:id>7</p:id><p:id>8</p:id>")), "given 2 times"),
    (echo_call(extra="<p:colour>red</p:colour>"), "unexpected element 'colour'"),
    (envelope(f'<p:refuse xmlns:p="{NS}"><p:reason>no</p:reason></p:refuse>'), "refused: no"),
])
def test_bad_requests_are_client_faults_with_http_500(body, message):
    status, _, answer, _ = call("POST", "/people", body)
    assert status == 500
    code, text = fault_of(answer)
    assert code == "soap:Client" and message in text.replace("&apos;", "'").replace("&#x27;", "'"), text


def test_an_exception_is_a_server_fault_and_its_traceback_goes_to_the_log():
    status, _, answer, errors = call("POST", "/people", envelope(f'<p:boom xmlns:p="{NS}"/>'))
    assert status == 500 and fault_of(answer) == ("soap:Server", "internal error")
    assert "secret detail" not in answer and "RuntimeError: secret detail" in errors.getvalue()


def test_soap_12_and_must_understand_headers():
    soap12 = b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>'
    assert fault_of(call("POST", "/people", soap12)[2])[0] == "soap:VersionMismatch"
    header = '<s:Header><x:Auth xmlns:x="urn:x" s:mustUnderstand="1"/></s:Header>'
    assert fault_of(call("POST", "/people", envelope(f'<p:boom xmlns:p="{NS}"/>', header=header))[2])[0] \
        == "soap:MustUnderstand"


XXE_FILE = '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
XXE_URL = '<!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
EXTERNAL_DTD = '<!DOCTYPE d SYSTEM "http://127.0.0.1:9/evil.dtd">'
PARAMETER = '<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>'
LAUGHS = ('<!DOCTYPE d [<!ENTITY x0 "lol">' + "".join(f'<!ENTITY x{i} "{f"&x{i - 1};" * 10}">' for i in range(1, 10))
          + "]>")
QUADRATIC = f'<!DOCTYPE d [<!ENTITY a "{"a" * 50000}">]>'


@pytest.mark.parametrize("doctype, name", [
    (XXE_FILE, "&x;"), (XXE_URL, "&x;"), (EXTERNAL_DTD, "plain"), (PARAMETER, "plain"),
    (LAUGHS, "&x9;"), (QUADRATIC, "&a;&a;&a;&a;&a;&a;&a;&a;"),
])
def test_dtds_entities_and_bombs_are_refused(doctype, name, monkeypatch):
    calls = []
    monkeypatch.setitem(service.operations, "Echo", dataclasses.replace(
        service.operations["Echo"], function=lambda **kw: calls.append(kw) or []))
    body = (f'<?xml version="1.0"?>{doctype}<s:Envelope xmlns:s="{ENV}"><s:Body>'
            f'<p:Echo xmlns:p="{NS}">{PERSON.replace("Ada &amp; co", name)}</p:Echo></s:Body></s:Envelope>')
    status, _, answer, _ = call("POST", "/people", body.encode())
    assert status == 500 and fault_of(answer)[0] == "soap:Client" and "DTD" in fault_of(answer)[1]
    assert calls == [] and "root:" not in answer


def test_body_limit_and_http_routing():
    status, _, answer, _ = call("POST", "/people", b"x" * (64 * 1024 + 1))
    assert status == 500 and "larger than" in fault_of(answer)[1]
    assert call("GET", "/healthz")[:3] == (200, {"Content-Type": "application/json", "Content-Length": "16"},
                                           '{"status": "ok"}')
    assert call("GET", "/elsewhere")[0] == 404
    status, headers, _, _ = call("PUT", "/people")
    assert status == 405 and headers["Allow"] == "GET, HEAD, POST"
    assert call("GET", "/people")[0] == 405, "GET without ?wsdl"


def test_untyped_or_unmappable_operations_are_refused_when_declared():
    other = SoapService("Other", "urn:other")
    with pytest.raises(TypeError, match="parameter x needs a type hint"):
        other.operation(lambda x: x)
    with pytest.raises(TypeError, match="cannot be mapped to XML"):
        @other.operation
        def f(x: dict) -> int:
            return 1
    with pytest.raises(TypeError, match="only X | None unions"):
        @other.operation
        def g(x: int | str) -> int:
            return 1
