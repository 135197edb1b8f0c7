"""A command service: a stdlib asyncio HTTP server on $PORT that answers every GET with its port."""

import asyncio
import os


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    path = request.split(b" ", 2)[1].decode()
    body = f"port {os.environ['PORT']} path {path}".encode()
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
    print(f"command server listening on {os.environ['PORT']}")
    async with server:
        await server.serve_forever()


asyncio.run(main())
