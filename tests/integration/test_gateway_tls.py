"""HTTPS at the gateway: the engine over TLS, the config checks of [gateway] tls_cert / tls_key /
http_redirect, and the real `microkit up` serving HTTPS to curl and Python's ssl, redirecting plain
HTTP with 308 and re-reading its certificate on `microkit reload gateway`. Certificates are made here."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.cli import run_cli
from support.http import Reader, ServerThread
from support.servers import server_missing
from support.up import Up, make_project
from microkit import config
from microkit.errors import ConfigError
from microkit.tls import TLSFileError, redirect_to_https, server_context
from microkit.testing import eventually


def make_cert(folder: Path, name: str = "server", common_name: str = "microkit test") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key, as PEM files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def client_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


BIG = bytes(range(256)) * (12 * 4096)  # 12 MB that a slow reader makes the server wait on


def echo_app(environ, start_response):
    """Echoes the scheme the engine saw and the request body's length; /download sends BIG."""
    if environ["PATH_INFO"] == "/download":
        start_response("200 OK", [("Content-Length", str(len(BIG)))])
        return [BIG]
    body = environ["wsgi.input"].read()
    data = json.dumps({"scheme": environ["wsgi.url_scheme"], "https": environ.get("HTTPS"), "path": environ["PATH_INFO"],
                       "length": len(body)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


@pytest.fixture()
def tls_files(tmp_path):
    return make_cert(tmp_path / "certs")


# The engine over TLS.

def tls_server(cert: Path, key: Path, **kwargs) -> ServerThread:
    import gevent.ssl
    return ServerThread(echo_app, ssl_context=server_context(cert, key, gevent.ssl.SSLContext), **kwargs)


def test_engine_serves_https_with_keep_alive_pipelining_and_large_bodies(tls_files):
    cert, _ = tls_files
    with tls_server(*tls_files) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with client_context(cert).wrap_socket(raw, server_hostname="localhost") as sock:
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
            reader = Reader(sock)
            big = b"x" * 3_000_000
            sock.sendall(b"POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
            status, _, body = reader.response()
            assert status == 200 and json.loads(body) == {"scheme": "https", "https": "on", "path": "/big",
                                                          "length": len(big)}
            # 30 pipelined requests in one write: several TLS records decrypted from one socket read
            sock.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i for i in range(30)))
            paths = [json.loads(reader.response()[2])["path"] for _ in range(30)]
            assert paths == [f"/p{i}" for i in range(30)]


def test_engine_sends_a_large_response_intact_to_a_slow_reader_over_tls(tls_files):
    cert, _ = tls_files
    with tls_server(*tls_files) as server:
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with client_context(cert).wrap_socket(raw, server_hostname="localhost") as sock:
            for _ in range(2):  # twice on one connection: the first answer ended cleanly
                sock.sendall(b"GET /download HTTP/1.1\r\nHost: localhost\r\n\r\n")
                time.sleep(0.3)  # the server's writes fill the socket buffers and must wait
                status, _, body = Reader(sock).response()
                assert status == 200 and body == BIG


def test_engine_refuses_tls_below_1_2_and_plain_http(tls_files):
    cert, _ = tls_files
    with tls_server(*tls_files) as server:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(str(cert))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            old.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with old.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                 server_hostname="localhost"):
                pass
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                answer = plain.recv(100)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"HTTP/1.1 200")
        # the server still answers TLS clients afterwards
        with client_context(cert).wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                              server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(sock).response()[0] == 200


def test_engine_closes_a_stalled_handshake_after_the_header_timeout(tls_files):
    from microkit.http import Limits
    with tls_server(*tls_files, limits=Limits(header_timeout=0.5)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            started = time.monotonic()
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < 4, "closed by the header timeout, not the client's"


def test_redirect_app_keeps_host_and_target():
    def call(environ):
        seen = {}
        body = b"".join(redirect_to_https(8443)(
            {"SERVER_NAME": "127.0.0.1", **environ}, lambda status, headers: seen.update(status=status, **dict(headers))))
        return seen, body
    seen, _ = call({"HTTP_HOST": "example.com:8080", "RAW_URI": "/a/b?c=1"})
    assert seen["status"].startswith("308") and seen["Location"] == "https://example.com:8443/a/b?c=1"
    assert call({"HTTP_HOST": "[::1]:80", "RAW_URI": "/"})[0]["Location"] == "https://[::1]:8443/"
    assert call({"RAW_URI": "http://other/x?y"})[0]["Location"] == "https://127.0.0.1:8443/x?y"
    assert redirect_to_https(443)  # port 443 is left out:
    seen = {}
    list(redirect_to_https(443)({"SERVER_NAME": "h", "HTTP_HOST": "h:80", "RAW_URI": "/p"},
                                lambda status, headers: seen.update(dict(headers))))
    assert seen["Location"] == "https://h/p"


# Config checks: one line naming the key and the file.

def write_config(folder: Path, gateway: str) -> Path:
    path = folder / "microkit.toml"
    path.write_text(f'[project]\nname = "t"\n\n[gateway]\nlisten = "127.0.0.1:0"\n{gateway}\n')
    return path


def config_error(folder: Path, gateway: str) -> str:
    with pytest.raises(ConfigError) as caught:
        config.load(write_config(folder, gateway))
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_config_accepts_a_certificate_and_key_next_to_it(tmp_path):
    make_cert(tmp_path / "certs")
    loaded = config.load(write_config(tmp_path, 'tls_cert = "certs/server.pem"\ntls_key = "certs/server.key"\n'
                                                'http_redirect = "127.0.0.1:0"'))
    assert loaded.gateway.tls_cert == "certs/server.pem" and loaded.gateway.tls_key == "certs/server.key"
    assert str(loaded.gateway.http_redirect) == "127.0.0.1:0"
    assert config.load(write_config(tmp_path, "")).gateway.tls_cert is None


def test_config_names_the_bad_or_missing_file(tmp_path):
    make_cert(tmp_path / "certs")
    other_cert, other_key = make_cert(tmp_path / "certs", "other")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    good = 'tls_cert = "certs/server.pem"\n'
    message = config_error(tmp_path, 'tls_cert = "certs/missing.pem"\ntls_key = "certs/server.key"')
    assert "gateway.tls_cert" in message and "certs/missing.pem" in message and "no such file" in message
    message = config_error(tmp_path, good + 'tls_key = "certs/nokey.key"')
    assert "gateway.tls_key" in message and "certs/nokey.key" in message
    message = config_error(tmp_path, 'tls_cert = "garbage.pem"\ntls_key = "certs/server.key"')
    assert "gateway.tls_cert" in message and "garbage.pem" in message and "not a PEM certificate" in message
    message = config_error(tmp_path, good + 'tls_key = "certs/other.key"')
    assert "gateway.tls_key" in message and "certs/other.key" in message and "private key" in message
    message = config_error(tmp_path, good + 'tls_key = "certs/server.pem"')
    assert "gateway.tls_key" in message
    assert "gateway.tls_key" in config_error(tmp_path, good)
    assert "gateway.tls_cert" in config_error(tmp_path, 'tls_key = "certs/server.key"')
    assert "gateway.http_redirect" in config_error(tmp_path, 'http_redirect = "127.0.0.1:8080"')


def test_server_context_refuses_an_encrypted_key_without_prompting(tmp_path):
    cert, key = make_cert(tmp_path)
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSFileError) as caught:
        server_context(cert, key)
    assert caught.value.which == "key"


def test_cli_exits_2_with_one_line_for_a_bad_certificate(tmp_path):
    (tmp_path / "bad.pem").write_text("hello\n")
    make_cert(tmp_path)
    write_config(tmp_path, 'tls_cert = "bad.pem"\ntls_key = "server.key"')
    result = run_cli("gateway", timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gateway.tls_cert" in lines[0] and "bad.pem" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# The real `microkit up`: HTTPS, X-Forwarded-Proto, the 308 redirect, reload.

def served_serial(port: int) -> int:
    """The serial number of the certificate the gateway serves now (not verified: it changes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as sock:
        return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def test_up_serves_https_redirects_plain_http_and_rereads_certificates_on_reload(tmp_path):
    if shutil.which("curl") is None:
        server_missing("curl", FileNotFoundError("apt-get install curl"))
    root = make_project(tmp_path / "proj", {"echo": {"app": "services.echo.app:app", "route": "/echo"}},
                        {"echo": "plain_app.py"})
    (root / "services" / "echo" / "app.py").write_text(
        "import json\n"
        "def app(environ, start_response):\n"
        "    data = json.dumps({k: environ.get(k) for k in ('HTTP_X_FORWARDED_PROTO', 'PATH_INFO',"
        " 'QUERY_STRING')}).encode()\n"
        "    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', str(len(data)))])\n"
        "    return [data]\n")
    cert, _ = make_cert(root / "certs")
    redirect = socket.socket()
    redirect.bind(("127.0.0.1", 0))
    redirect_port = redirect.getsockname()[1]
    redirect.close()
    text = (root / "microkit.toml").read_text().replace(
        'listen = "127.0.0.1:0"\n',
        'listen = "127.0.0.1:0"\ntls_cert = "certs/server.pem"\ntls_key = "certs/server.key"\n'
        f'http_redirect = "127.0.0.1:{redirect_port}"\n', 1)
    (root / "microkit.toml").write_text(text)
    up = Up(root, gateway=True)
    try:
        line = up.wait_for(r"^ready: gateway (https://127\.0\.0\.1:(\d+))", 30)
        url, port = line.group(1), int(line.group(2))
        answer = curl("--cacert", str(cert), f"{url}/echo/x?y=1")
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == {"HTTP_X_FORWARDED_PROTO": "https", "PATH_INFO": "/echo/x",
                                             "QUERY_STRING": "y=1"}
        refused = curl("--cacert", str(cert), "--tls-max", "1.1", f"{url}/echo/")
        assert refused.returncode != 0
        moved = curl("-i", f"http://127.0.0.1:{redirect_port}/echo/a?b=2")
        assert moved.returncode == 0 and moved.stdout.startswith("HTTP/1.1 308"), moved.stdout
        assert f"Location: https://127.0.0.1:{port}/echo/a?b=2" in moved.stdout
        followed = curl("-L", "--cacert", str(cert), f"http://127.0.0.1:{redirect_port}/echo/z")
        assert json.loads(followed.stdout)["PATH_INFO"] == "/echo/z"

        first = served_serial(port)
        make_cert(root / "certs")  # a new certificate and key in the same files
        new_cert = root / "certs" / "server.pem"
        reloaded = run_cli("reload", "gateway", timeout=30, cwd=root)
        assert reloaded.returncode == 0, reloaded.stderr
        assert eventually(lambda: served_serial(port) != first, 20)
        assert json.loads(curl("--cacert", str(new_cert), f"{url}/echo/").stdout)["HTTP_X_FORWARDED_PROTO"] == "https"

        second = served_serial(port)
        (root / "certs" / "server.key").write_text("not a key\n")  # a broken renewal
        refused = run_cli("reload", "gateway", timeout=30, cwd=root)
        assert refused.returncode == 2 and "gateway.tls_key" in refused.stderr and "certs/server.key" in refused.stderr
        start = len(up.lines)
        up.signal(signal.SIGHUP)  # a reload by signal re-reads microkit.toml too, and refuses the pair
        error = up.wait_for(r"reload refused: .*gateway\.tls_key: .*server\.key\"?: not an unencrypted PEM private key"
                            r".*the running config is kept", 20, start)
        assert "File " not in up.output[up.output.index(error.string):], "one line, no traceback"
        assert served_serial(port) == second, "the old workers keep serving the last good certificate"
        assert curl("--cacert", str(new_cert), f"{url}/echo/").returncode == 0
    finally:
        up.close()
