"""The {{service}} service called with zeep, a real SOAP client, over HTTP to the app that
microkit.testing's `service` fixture (the pytest plugin installed with microkit) serves in-process;
and the XML a SOAP endpoint must refuse (DTDs, external entities, entity-expansion bombs)."""

import sys
import urllib.error
import urllib.request

import pytest
import zeep
from zeep.exceptions import Fault

ROUTE = "/{{service}}"  # the route microkit.toml gives it (microkit passes it as MICROKIT_ROUTE)


@pytest.fixture
def url(service):
    return service("{{service}}", mode="inprocess").url + ROUTE  # in-process: its RECORDS are readable here


@pytest.fixture
def records(url):
    """The records of the app the test started (imported afresh for each test: it starts empty)."""
    return sys.modules["services.{{service}}.app"].RECORDS


@pytest.fixture
def client(url):
    return zeep.Client(url + "?wsdl")


def post(url: str, body: bytes):
    request = urllib.request.Request(url, body, {"Content-Type": "text/xml; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_wsdl_names_the_address_it_was_fetched_from(url):
    with urllib.request.urlopen(url + "?wsdl", timeout=10) as response:
        wsdl = response.read().decode()
    assert f'location="{url}"' in wsdl


def test_create_get_list_delete(client):
    created = client.service.Create{{model}}(record={"name": "ada", "email": "ada@example.com"})
    assert (created.name, created.email) == ("ada", "ada@example.com") and created.id >= 1
    found = client.service.Get{{model}}(id=created.id)
    assert (found.id, found.name) == (created.id, "ada")
    assert [r.id for r in client.service.List{{model}}s()] == [created.id]
    assert client.service.Delete{{model}}(id=created.id) is True
    assert client.service.List{{model}}s() == []


def test_a_bad_request_is_a_client_fault(client):
    with pytest.raises(Fault) as fault:
        client.service.Get{{model}}(id=999999)
    assert fault.value.code.endswith("Client") and "not found" in fault.value.message
    with pytest.raises(Fault) as fault:
        client.service.Create{{model}}(record={"name": "bob", "email": "nowhere"})
    assert fault.value.code.endswith("Client")


def test_an_exception_is_a_server_fault_with_http_500(url, records, monkeypatch):
    monkeypatch.setattr(records, "items", None)  # the operation will raise
    call = '<tns:List{{model}}s xmlns:tns="urn:{{project}}:{{service}}"/>'
    status, body = post(url, ENVELOPE.format(doctype="", body=call).encode())
    assert status == 500 and "<faultcode>soap:Server</faultcode>" in body and "Traceback" not in body


ENVELOPE = ('<?xml version="1.0"?>{doctype}<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            '<soap:Body>{body}</soap:Body></soap:Envelope>')


def attack(doctype: str, name: str) -> bytes:
    body = (f'<tns:Create{{model}} xmlns:tns="urn:{{project}}:{{service}}"><tns:record><tns:name>{name}</tns:name>'
            f'<tns:email>x@example.com</tns:email></tns:record></tns:Create{{model}}>')
    return ENVELOPE.format(doctype=doctype, body=body).encode()


@pytest.mark.parametrize("doctype, name", [
    ('<!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
    ('<!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>', "&d;"),
    ('<!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">', "plain"),
])
def test_xml_with_a_dtd_is_refused(url, records, doctype, name):
    status, body = post(url, attack(doctype, name))
    assert status == 500 and "<faultcode>soap:Client</faultcode>" in body
    assert "root:" not in body and records.items == {}
