"""The daemon's HTTP side: /metrics for Prometheus, /healthz, and the officer API's routes
(daemon.officer_api) when the daemon passes them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

_LOGGER = logging.getLogger(__name__)



class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        health: Callable[[], dict[str, Any]],
        routes: Sequence[web.RouteDef] = (),
        middlewares: Sequence[Middleware] = (),
    ) -> None:
        self._host, self._port = host, port
        self._health = health
        self._routes = routes
        self._middlewares = middlewares
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        status = self._health()
        return web.json_response(status, status=200 if status.get("ok") else 503)

    async def __aenter__(self) -> HttpServer:
        app = web.Application(middlewares=list(self._middlewares))
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.add_routes(self._routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self._port
        _LOGGER.info(
            "HTTP on %s:%s (/metrics, /healthz%s)", self._host, self.bound_port,
            ", officer API" if self._routes else "",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
