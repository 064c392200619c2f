"""A real Starlette app that uses ``request.session`` exactly as it would under SessionMiddleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

started = {"lifespan": False}


async def count(request: Request) -> JSONResponse:
    request.session["count"] = request.session.get("count", 0) + 1
    return JSONResponse({"count": request.session["count"], "keys": sorted(request.session)})


async def count_slowly(request: Request) -> JSONResponse:
    """``/`` after ``?seconds=`` of work: the session is read at the start and stored at the end."""
    await anyio.sleep(float(request.query_params["seconds"]))
    return await count(request)


async def peek(request: Request) -> JSONResponse:
    return JSONResponse({"session": dict(request.session), "lifespan": request.state.lifespan})


async def login(request: Request) -> JSONResponse:
    form = await request.json()
    request.session["user"] = form["user"]
    return JSONResponse({"user": request.session["user"]})


async def logout(request: Request) -> PlainTextResponse:
    request.session.clear()
    return PlainTextResponse("bye")


async def switch_user(request: Request) -> JSONResponse:
    """Logout and login in one request: the old session ends, a new one is created."""
    request.session.clear()
    request.session["user"] = request.query_params["user"]
    return JSONResponse({"user": request.session["user"]})


async def stream(request: Request) -> StreamingResponse:
    request.session["streamed"] = True

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"piece {i}\n".encode()

    return StreamingResponse(pieces(), media_type="text/plain")


async def echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    return PlainTextResponse(f"{len(body)} bytes")


async def add(request: Request) -> JSONResponse:
    """Add the body's ``by`` to the count: a re-run must read the same body again."""
    by = int((await request.json())["by"])
    request.session["count"] = request.session.get("count", 0) + by
    return JSONResponse({"count": request.session["count"]})


async def boom(request: Request) -> PlainTextResponse:
    raise RuntimeError("the app failed on purpose")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, bool]]:
    yield {"lifespan": True}


app = Starlette(
    routes=[
        Route("/", count),
        Route("/count-slowly", count_slowly),
        Route("/peek", peek),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout),
        Route("/switch-user", switch_user),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/add", add, methods=["POST"]),
        Route("/boom", boom),
    ],
    lifespan=lifespan,
)
