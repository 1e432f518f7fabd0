"""The daemon run in the test's own event loop (for metrics, log capture and precise
control), against the real broker and database the test provides."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from daemon.app import Daemon
from daemon.configfiles import DatabaseSettings, HttpSettings, LoadedConfig, load_config

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def daemon_config(
    config_dir: Path, *, dsn: str, mqtt: dict[str, Any] | None = None
) -> LoadedConfig:
    """The config in `config_dir` pointed at a test database, any free HTTP port, and the
    broker settings in `mqtt` (host, port, username, password_env, tls_ca_file, ...)."""
    loaded = load_config(config_dir, env={})
    settings = loaded.settings.model_copy(
        update={
            "mqtt": loaded.settings.mqtt.model_copy(update=mqtt or {}),
            "database": DatabaseSettings(dsn=dsn),
            "http": HttpSettings(host="127.0.0.1", port=0),
        }
    )
    return dataclasses.replace(loaded, settings=settings)


@contextlib.asynccontextmanager
async def running_daemon(loaded: LoadedConfig) -> AsyncIterator[Daemon]:
    """Start `Daemon(loaded).run()`, yield once it has subscribed; stop it (staged drain)
    on exit and fail if it does not stop in time. A daemon that dies raises here."""
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    daemon = Daemon(loaded)
    run = asyncio.create_task(daemon.run(), name="test-daemon")
    ready = asyncio.create_task(daemon.ready.wait(), name="test-daemon-ready")
    try:
        done, _ = await asyncio.wait(
            {run, ready}, timeout=READY_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if run in done:
            run.result()
            raise AssertionError("the daemon returned before it was ready")
        assert ready in done, "the daemon did not subscribe in time"
        yield daemon
        assert not run.done(), f"the daemon stopped by itself: {run!r}"
    finally:
        ready.cancel()
        daemon.request_stop()
        try:
            await asyncio.wait_for(run, STOP_TIMEOUT_SECONDS)
        finally:
            # Daemon.run installs loop signal handlers; give pytest its own back.
            loop = asyncio.get_running_loop()
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)


def metric(name: str, **labels: str) -> float:
    """Current value of a sample of the process-wide registry (0 if never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
