"""A gateway balancing least_outstanding over two in-process backends; prints how the requests spread."""

from gevent import monkey; monkey.patch_all()
import json, socket, sys
from pathlib import Path
import gevent
from microkit import config
from microkit.gateway.app import Gateway
from microkit.http import HTTPServer
from microkit.registry import Instance

def backend(environ, start_response):
    size = str(len(environ["wsgi.input"].read())).encode()
    start_response("200 OK", [("Content-Length", str(len(size)))])
    return [size]

def listen():
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(64); return sock

ports = []
for _ in range(2):
    sock = listen(); ports.append(sock.getsockname()[1]); HTTPServer(sock, backend).start()
Path(sys.argv[1]).write_text('[project]\nname="p"\n[gateway]\nbalance="least_outstanding"\n'
                             '[services.a]\napp="x:app"\nroute="/a"\n')
gateway = Gateway(config.load(Path(sys.argv[1])))
gateway.update({"a": [Instance("a", "127.0.0.1", port, instance_id=f"i{n}") for n, port in enumerate(ports)]})
sock = listen(); HTTPServer(sock, gateway).start()
for _ in range(3):
    client = socket.create_connection(sock.getsockname())
    client.sendall(b"POST /a/x HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n" + b"x" * 70000)
    gevent.sleep(0.2)
    client.close()
    gevent.sleep(0.2)
print(json.dumps([u.outstanding for u in gateway.by_service["a"].balancer.upstreams]))
