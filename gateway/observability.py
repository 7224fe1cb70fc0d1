"""The gateway's side of telemetry: settings from config, the recorder, `/metrics`, HTTP metrics.

`telemetry` knows nothing of the gateway; this module hands it what it needs: typed settings, a
`Fleet` view of servers and pool read at collection time, and the routes that serve the page.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp

from gateway import __version__
from gateway.auth import Auth
from gateway.config import Config
from gateway.headers import accepts_encoding, media_quality, qualities
from gateway.pool import SessionPool
from gateway.responses import HttpError
from gateway.runtime import ServerRuntime, ServerState
from telemetry.exposition import render
from telemetry.provider import Pipeline, build_pipeline
from telemetry.recorder import PoolSample, Recorder, ServerSample
from telemetry.settings import OtlpSettings, TelemetrySettings, otlp_from_env

log = logging.getLogger(__name__)

METER_NAME = "mcp-gateway"


def telemetry_settings(config: Config, env: dict[str, str] | None = None) -> TelemetrySettings:
    settings = config.telemetry
    otlp_config = settings.otlp
    otlp = otlp_from_env(env, enabled=otlp_config.enabled)
    if otlp is not None:
        otlp = OtlpSettings(
            protocol=otlp_config.protocol or otlp.protocol,
            endpoint=otlp_config.endpoint or otlp.endpoint,
            headers=otlp_config.headers or otlp.headers,
            interval_seconds=otlp_config.interval or otlp.interval_seconds,
            temporality=otlp_config.temporality or otlp.temporality,
        )
    return TelemetrySettings(
        gateway_id=config.gateway.id,
        service_version=__version__,
        semconv=settings.semconv,
        scope_labels=settings.scope_labels,
        cardinality_limit=settings.cardinality_limit,
        server_ids=tuple(config.servers),
        otlp=otlp,
    )


def negotiate_exposition(accept: str | None, accept_encoding: str | None) -> tuple[bool, bool]:
    """(OpenMetrics rather than the 0.0.4 text, gzip) for a scrape with these headers.

    OpenMetrics when the scraper names it, and at least as high as plain text (Prometheus does);
    anything else (`*/*`, no header) gets the 0.0.4 text. gzip only when `Accept-Encoding` allows it
    with a q-value above 0.
    """
    openmetrics = qualities(accept or "").get("application/openmetrics-text", 0.0)
    text = media_quality(accept, "text/plain")
    return openmetrics > 0 and openmetrics >= text, accepts_encoding(accept_encoding, "gzip")


class GatewayFleet:
    """The recorder's view of the gateway's servers and pool, read at collection time (off the event loop)."""

    def __init__(
        self,
        servers: Mapping[str, ServerRuntime],
        pool: SessionPool,
        loop: Callable[[], asyncio.AbstractEventLoop | None],
    ) -> None:
        self.servers = servers
        self.pool = pool
        self.loop = loop  # the gateway's event loop, once it runs

    def server_samples(self) -> Iterable[ServerSample]:
        return [
            ServerSample(
                runtime.id,
                runtime.state is ServerState.RUNNING,
                runtime.pid,
                runtime.uptime(),
                runtime.in_flight,
                runtime.initialize_result.get("protocolVersion"),
            )
            for runtime in list(self.servers.values())
        ]

    def pool_samples(self) -> Iterable[PoolSample]:
        return [PoolSample(*occupancy) for occupancy in self.pool.occupancy()]

    def tasks(self) -> int | None:
        loop = self.loop()
        if loop is None or loop.is_closed():
            return None
        return len(asyncio.all_tasks(loop))  # safe off the loop's thread: it copies the set, retrying


class Telemetry:
    """One process's pipeline and recorder; `watch` gives the recorder the fleet whose gauges it reads."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = telemetry_settings(config)
        self.pipeline: Pipeline = build_pipeline(self.settings)
        self.recorder = Recorder(self.pipeline.provider.get_meter(METER_NAME), self.settings)
        self.auth = Auth([config.gateway.auth.metrics_token] if config.gateway.auth.metrics_token else [])
        if self.settings.otlp is not None:
            log.info(
                "OTLP metrics push on (%s, every %gs)", self.settings.otlp.protocol, self.settings.otlp.interval_seconds
            )

    def watch(self, fleet: GatewayFleet) -> None:
        self.recorder.watch(fleet)

    async def metrics(self, request: Request) -> Response:
        try:
            self.auth.identity({k.encode("latin-1"): v.encode("latin-1") for k, v in request.headers.items()})
        except HttpError as exc:
            if exc.rejection is not None:
                self.recorder.rejected(None, exc.rejection)
            headers = {k.decode(): v.decode() for k, v in exc.headers}
            return JSONResponse(exc.body, status_code=exc.status, headers=headers)
        openmetrics, gzip = negotiate_exposition(request.headers.get("accept"), request.headers.get("accept-encoding"))
        body, headers = await anyio.to_thread.run_sync(render, self.pipeline.prometheus, openmetrics, gzip)
        return Response(body, headers=headers)

    def instrument_http(self, app: ASGIApp, routes: Sequence[Route]) -> ASGIApp:
        """HTTP server metrics, labelled by route template (`/servers/{server_id}/mcp`), never raw paths."""
        if not self.config.telemetry.http_metrics:
            return app
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")  # http.route on the duration metric
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        def route_details(scope: dict[str, Any]) -> tuple[str, dict[str, str]]:
            # The instrumentation reads attributes before routing: resolve the route template here.
            for route in routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    return f"{scope.get('method', 'HTTP')} {route.path}", {"http.route": route.path}
            return scope.get("method", "HTTP"), {}

        wrapped: Any = OpenTelemetryMiddleware(
            app,
            excluded_urls="/metrics,/healthz,/readyz",
            default_span_details=route_details,
            meter_provider=self.pipeline.provider,
            exclude_spans=["receive", "send"],
        )
        return wrapped  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.pipeline.shutdown()
