"""Rate limits on the daemon's HTTP API and console (`rate_limit:` in settings.yaml).

Three token buckets per request, each in its own bounded table:

    address      every request from one remote address (unauthenticated ones too)
    credential   every request carrying one bearer token or console session cookie
    failed_auth  refused credentials (401) from one remote address: far stricter; while
                 it is empty, requests from that address that carry credentials (a token,
                 a cookie, a sign-in) are refused before they reach the database

A refusal is 429 with `Retry-After` (whole seconds until a request would pass) and the
API's error body, counted in `emon_http_rate_limited_total{limit}`. /metrics and /healthz
are not limited (Prometheus and the supervisor poll them).

Tokens are 256 random bits, so guessing one is hopeless whatever the limit; the
failed-auth bucket is there so a flood of guesses costs neither database lookups nor log
lines, and so a leaked-but-revoked token hammered from a script is visible and cheap.

The tables are LRU-bounded (`max_tracked_keys` each): a flood of distinct keys evicts the
least recently seen buckets (counted in `emon_rate_limit_evictions_total{table}`). An
evicted bucket comes back full, so eviction only ever makes a limit more lenient for
that key, never stricter for someone else. The buckets are the pure `TokenBucket`
(time passed in); the middleware reads a monotonic clock.

Behind a reverse proxy every request has the proxy's address: limit per address there.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Self

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter, Gauge
from pydantic import Field, model_validator

from daemon.strictmodel import StrictModel

_LOGGER = logging.getLogger(__name__)

CONSOLE_COOKIE_NAME: Final = "emon_console"  # daemon.console.web.COOKIE_NAME
SIGN_IN_PATH: Final = "/console/api/session"
UNLIMITED_PATHS: Final = frozenset({"/metrics", "/healthz"})
# The key of a credential is a digest prefix: enough to tell tokens apart, and the table
# never holds a usable secret.
CREDENTIAL_KEY_HEX_CHARS: Final = 24

RATE_LIMITED = Counter(
    "emon_http_rate_limited_total", "HTTP requests refused with 429, by the limit hit", ["limit"]
)
EVICTIONS = Counter(
    "emon_rate_limit_evictions_total",
    "Rate-limit buckets evicted because their table was full (the key starts afresh)",
    ["table"],
)
TRACKED = Gauge("emon_rate_limit_keys", "Rate-limit buckets held, per table", ["table"])


class RateLimitSettings(StrictModel):
    enabled: bool = Field(True, title="Limit the API and console request rates")
    per_address_per_second: float = Field(
        20.0, gt=0.0, le=10_000.0,
        title="Sustained requests per second from one remote address",
    )
    per_address_burst: int = Field(
        60, ge=1, le=100_000, title="Requests one address may make at once before waiting"
    )
    per_credential_per_second: float = Field(
        10.0, gt=0.0, le=10_000.0,
        title="Sustained requests per second with one token or console session",
    )
    per_credential_burst: int = Field(
        40, ge=1, le=100_000,
        title="Requests one token may make at once (the console's first load makes ~6)",
    )
    failed_auth_per_minute: float = Field(
        5.0, gt=0.0, le=6000.0,
        title="Refused tokens or sign-ins per minute from one address, sustained",
    )
    failed_auth_burst: int = Field(
        10, ge=1, le=10_000,
        title="Refused tokens or sign-ins from one address before it must wait",
    )
    max_tracked_keys: int = Field(
        10_000, ge=100, le=1_000_000,
        title="Buckets kept per table (address, credential, failed_auth); LRU eviction",
    )

    @model_validator(mode="after")
    def _failures_stricter(self) -> Self:
        if self.failed_auth_per_minute / 60.0 > self.per_address_per_second:
            raise ValueError(
                "failed_auth_per_minute must not allow more than per_address_per_second"
            )
        if self.failed_auth_burst > self.per_address_burst:
            raise ValueError("failed_auth_burst must not exceed per_address_burst")
        return self


@dataclass(slots=True)
class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_second`; pure (the time is passed in)."""

    rate_per_second: float
    capacity: float
    tokens: float
    updated_at: float

    def _refill(self, now: float) -> None:
        if now > self.updated_at:
            elapsed = now - self.updated_at
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_second)
            self.updated_at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def wait_seconds(self, now: float, cost: float = 1.0) -> float:
        """How long until `cost` tokens are there (0 if they are now)."""
        self._refill(now)
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate_per_second


class BucketTable:
    """Buckets by key, at most `max_keys`, least recently used evicted first."""

    def __init__(self, name: str, rate_per_second: float, capacity: int, max_keys: int) -> None:
        self.name = name
        self._rate = rate_per_second
        self._capacity = float(capacity)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evictions = 0
        # Labelled children looked up once: a flood of new keys is the path that must stay
        # cheap (bench/bench_ratelimit.py).
        self._evictions_metric = EVICTIONS.labels(name)
        self._tracked_metric = TRACKED.labels(name)

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str, now: float) -> TokenBucket:
        found = self._buckets.get(key)
        if found is not None:
            self._buckets.move_to_end(key)
            return found
        if len(self._buckets) >= self._max_keys:
            self._buckets.popitem(last=False)
            self.evictions += 1
            self._evictions_metric.inc()
        else:
            self._tracked_metric.set(len(self._buckets) + 1)
        created = TokenBucket(self._rate, self._capacity, self._capacity, now)
        self._buckets[key] = created
        return created

    def peek(self, key: str) -> TokenBucket | None:
        return self._buckets.get(key)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: str = ""
    retry_after_seconds: float = 0.0


class RateLimiter:
    """The three tables and the decision for one request (pure given `now`)."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.reconfigure(settings)

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """New limits (a config reload): every key starts afresh with full buckets."""
        self.settings = settings
        n = settings.max_tracked_keys
        self.addresses = BucketTable(
            "address", settings.per_address_per_second, settings.per_address_burst, n
        )
        self.credentials = BucketTable(
            "credential", settings.per_credential_per_second, settings.per_credential_burst, n
        )
        self.failures = BucketTable(
            "failed_auth", settings.failed_auth_per_minute / 60.0, settings.failed_auth_burst, n
        )

    def check(self, address: str, credential: str | None, now: float) -> Verdict:
        """Before the request: may it go on? Takes one token from each bucket it passes."""
        if credential is not None:
            failures = self.failures.peek(address)
            if failures is not None and failures.available(now) < 1.0:
                return Verdict(False, "failed_auth", failures.wait_seconds(now))
        by_address = self.addresses.bucket(address, now)
        if not by_address.take(now):
            return Verdict(False, "address", by_address.wait_seconds(now))
        if credential is not None:
            by_credential = self.credentials.bucket(credential, now)
            if not by_credential.take(now):
                return Verdict(False, "credential", by_credential.wait_seconds(now))
        return Verdict(True)

    def refused_credential(self, address: str, now: float) -> None:
        """After a 401: the address spends one of its few allowed failures."""
        self.failures.bucket(address, now).take(now)


def credential_key(request: web.Request) -> str | None:
    """A digest prefix of the request's bearer token or console cookie; a sign-in (whose
    token is in the body) counts as carrying a credential, keyed by its address."""
    header = request.headers.get("Authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
    secret = bearer or request.cookies.get(CONSOLE_COOKIE_NAME)
    if secret:
        return hashlib.sha256(secret.encode()).hexdigest()[:CREDENTIAL_KEY_HEX_CHARS]
    if request.path == SIGN_IN_PATH and request.method == "POST":
        return f"sign-in {request.remote or '-'}"
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_limit_middleware(
    limiter: RateLimiter, clock: Callable[[], float] = time.monotonic
) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not limiter.settings.enabled or request.path in UNLIMITED_PATHS:
            return await handler(request)
        address = request.remote or "-"
        verdict = limiter.check(address, credential_key(request), clock())
        if not verdict.allowed:
            RATE_LIMITED.labels(verdict.limit).inc()
            wait = max(1, math.ceil(verdict.retry_after_seconds))
            # The API's error body (daemon.officer_api.error_response), built here so that
            # settings can import this module without the API.
            return web.json_response(
                {"error": "too_many_requests",
                 "detail": f"rate limit ({verdict.limit.replace('_', ' ')}): retry in {wait} s"},
                status=429, headers={"Retry-After": str(wait)},
            )
        response = await handler(request)
        if response.status == 401:
            limiter.refused_credential(address, clock())
        return response

    return middleware
