"""An aiohttp command service whose only route is `/`: a text answer, or a WebSocket echo when the
request asks to upgrade (text echoed back, binary echoed back, "close" ends it)."""

import os

from aiohttp import WSMsgType, web


async def root(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(text=f"aiohttp root path={request.path} prefix={request.headers.get('X-Forwarded-Prefix')}")
    ws = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            if message.data == "close":
                await ws.close()
            else:
                await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


app = web.Application()
app.router.add_get("/", root)
web.run_app(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]), print=None)
