"""The {{service}} service's endpoints, in-process with aiohttp's test client (pytest-aiohttp)."""

import asyncio

import pytest
import pytest_asyncio

from services.{{service}}.server import create_app

pytestmark = pytest.mark.asyncio
ROUTE = "/{{service}}"  # any prefix: microkit passes the one in microkit.toml as MICROKIT_ROUTE


@pytest_asyncio.fixture
async def client(aiohttp_client):
    return await aiohttp_client(create_app(ROUTE))


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status == 200 and (await response.json())["status"] == "ok"


async def test_create_list_read_delete(client):
    response = await client.post(ROUTE + "/", json={"name": "first"})
    assert response.status == 201
    item = await response.json()
    assert item["name"] == "first" and response.headers["Location"] == f"{ROUTE}/{item['id']}"
    assert await (await client.get(ROUTE)).json() == [item]
    assert await (await client.get(f"{ROUTE}/{item['id']}")).json() == item
    assert (await client.delete(f"{ROUTE}/{item['id']}")).status == 204
    response = await client.get(f"{ROUTE}/{item['id']}")
    assert response.status == 404 and "error" in await response.json()


@pytest.mark.parametrize("body", [b"not json", b"[1]", b"{}", b'{"name": ""}'])
async def test_bad_body_is_400_json(client, body):
    response = await client.post(ROUTE, data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400 and "error" in await response.json()


async def test_waiting_requests_are_served_together(client):
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await asyncio.gather(*(client.get(ROUTE + "/wait", params={"seconds": "0.3"}) for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10
    assert loop.time() - started < 2.5, "ten 0.3 s waits overlap"


async def test_the_resource_follows_the_route_it_is_given(aiohttp_client):
    client = await aiohttp_client(create_app("/renamed"))
    assert (await client.post("/renamed/", json={"name": "moved"})).status == 201
    assert (await client.get(ROUTE + "/")).status == 404
