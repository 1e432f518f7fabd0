"""The officer console on the daemon's HTTP port: the page, its read API, sign-in, live
updates.

    GET  /console/                        the page (built by `npm run build` in console/)
    GET  /console/alerts/{id}             the page, opened on that alert (links in messages)
    GET  /console/assets/{name}           the bundle (content-hashed names, cached for good)
    POST /console/api/session             sign in: {"token": ...} → HttpOnly session cookie
    DELETE /console/api/session           sign out
    GET  /console/api/me                  who, role, map settings
    GET  /console/api/subjects            subjects in scope: newest fix, status, alert counts
    GET  /console/api/zones               their zones, GeoJSON (WGS-84)
    GET  /console/api/subjects/{id}/track?from=&to=   fixes of a period (audited)
    GET  /console/api/alerts              the open-alerts list (the officer API's)
    POST /console/api/alerts/{id}/ack | /resolve       the officer API's actions
    GET  /console/api/events              server-sent events: positions, alert transitions

Sign-in: the page asks for the officer's API token once and exchanges it for a session
cookie (HttpOnly, SameSite=Strict, Path=/console). An EventSource cannot send an
Authorization header, and a token in a URL ends up in logs and history; a token kept in
the page's storage is readable by any script that gets in. The cookie is not. Sessions are
rows of `console_sessions` (a restart signs nobody out) tied to their token (revoking it
ends them). A state-changing request must carry `X-Emon-Console: 1`, a header a page of
another site cannot send without a CORS preflight that this server never grants; with
SameSite=Strict that closes cross-site request forgery. Bearer tokens work too (scripts).

Scope is the officer API's: officer → own caseload, supervisor → team, command → all; a
subject outside it answers 404 like one that does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import shapely.geometry
from aiohttp import web

from alerts.policy import Role
from daemon import alert_metrics
from daemon.access import Permission, TokenRole
from daemon.configfiles import LoadedConfig
from daemon.console import metrics
from daemon.console.feed import (
    CLOSED_SIGNED_OUT,
    RECONNECT_HINT_MILLISECONDS,
    FeedFullError,
    LiveFeed,
    encode_event,
    pump,
)
from daemon.console.store import ConsoleStore, session_digest
from daemon.officer_api import (
    OFFICER_DISPOSITIONS,
    ActionError,
    Caller,
    OfficerActions,
    bearer_token,
    dumps,
    error_response,
    read_json_body,
    require,
    text_field,
)
from daemon.pipeline import Pipeline
from daemon.store.errors import StoreError
from daemon.store.lifecycle_repo import token_digest
from daemon.store.pool import Pool

_LOGGER = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
COOKIE_NAME = "emon_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "X-Emon-Console"
CHANNEL = "console"  # audit source prefix and metrics label
TOKEN_MAX_CHARS = 200
DEFAULT_TRACK_HOURS = 24.0
# Newest fixes older than this are not loaded at start: a subject silent that long is
# "no fix" on the map rather than a marker at a week-old place (and the lookback lets a
# day-partitioned pings table prune).
LATEST_FIX_LOOKBACK_DAYS = 7.0
# A session checked this recently is not looked up again; during a database outage one
# checked within the grace period still works, so an outage does not lock officers out of
# the map (a revocation made meanwhile takes effect when the database is back).
SESSION_CACHE_SECONDS = 60.0
SESSION_OUTAGE_GRACE_SECONDS = 900.0
SESSION_CACHE_MAX_ENTRIES = 10_000
_ASSET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ConsoleError(Exception):
    """Root of the console's own errors."""


def _content_security_policy(tile_url: str | None) -> str:
    img = "'self' data:"
    if tile_url:
        # Only the tile server's origin, e.g. http://tiles.local:8080.
        scheme, rest = tile_url.split("://", 1)
        host = rest.split("/", 1)[0]
        # Leaflet's {s} subdomain placeholder: allow the subdomains of that host.
        host = host.replace("{s}.", "*.")
        img += f" {scheme}://{host}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src {img}; connect-src 'self'; font-src 'self'; object-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def _parse_time(text: str | None, field: str) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ActionError(400, "bad_request", f"{field}: not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ActionError(400, "bad_request", f"{field}: needs a UTC offset")
    return value.astimezone(UTC)


@dataclass(slots=True)
class _CachedSession:
    officer_id: str
    checked_at: datetime


class ConsoleService:
    """The console's routes and live feed; an async context manager entered after the
    HTTP server starts, so that leaving it closes the streams before the server stops."""

    def __init__(
        self,
        loaded: LoadedConfig,
        pipeline: Pipeline,
        actions: OfficerActions,
        pool: Pool,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        static_dir: Path = STATIC_DIR,
    ) -> None:
        self._loaded = loaded
        self._settings = loaded.settings.console
        self._pipeline = pipeline
        self._actions = actions
        self._store = ConsoleStore(pool)
        self._clock = clock
        self._static_dir = static_dir
        self._sessions: dict[str, _CachedSession] = {}
        self._seed_lock = asyncio.Lock()
        self._seeded = False
        self._csp = _content_security_policy(self._settings.tile_url)
        self.feed = LiveFeed(
            pipeline, self.scope_of,
            max_clients=self._settings.max_clients,
            queue_size=self._settings.client_queue_size,
            stale_after=timedelta(seconds=self._settings.stale_after_seconds),
            clock=clock,
        )

    def swap_config(self, loaded: LoadedConfig) -> None:
        """A reloaded config (on the event loop, between two messages). Scopes follow the
        pipeline's new config by themselves; names, map settings and limits follow here.
        `enabled` needs a restart (the routes are set up once)."""
        self._loaded = loaded
        self._settings = loaded.settings.console
        self._csp = _content_security_policy(self._settings.tile_url)
        self.feed.configure(
            max_clients=self._settings.max_clients,
            queue_size=self._settings.client_queue_size,
            stale_after=timedelta(seconds=self._settings.stale_after_seconds),
        )

    async def __aenter__(self) -> ConsoleService:
        await self.feed.__aenter__()
        if not (self._static_dir / "index.html").is_file():
            _LOGGER.warning(
                "the console page is not built (%s missing): run scripts/bootstrap.sh",
                self._static_dir / "index.html",
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.feed.__aexit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ scope

    def scope_of(self, officer_id: str) -> frozenset[str] | None:
        officer = self._pipeline.config.alerting.directory.officers.get(officer_id)
        if officer is None:
            return None
        subjects = self._pipeline.config.subjects
        if officer.role is Role.COMMAND:
            return frozenset(subjects)
        caller = Caller(officer, CHANNEL, "")
        return frozenset(s for s in subjects if self._actions.may_see_subject(caller, s))

    # ------------------------------------------------------------------ who

    async def _session_officer(self, session: str, *, fresh: bool = False) -> str | None:
        """The session's officer; None when it ended, expired or its token was revoked.
        `fresh` asks the database even when a recent answer is cached."""
        digest = session_digest(session)
        now = self._clock()
        cached = self._sessions.get(digest)
        if (
            not fresh and cached is not None
            and (now - cached.checked_at).total_seconds() < SESSION_CACHE_SECONDS
        ):
            return cached.officer_id
        try:
            officer_id = await self._store.officer_for_session(session, now)
        except StoreError as exc:
            if cached is not None and (
                (now - cached.checked_at).total_seconds() < SESSION_OUTAGE_GRACE_SECONDS
            ):
                return cached.officer_id
            raise ActionError(503, "unavailable", "cannot check the sign-in now") from exc
        if officer_id is None:
            self._sessions.pop(digest, None)
            return None
        if len(self._sessions) >= SESSION_CACHE_MAX_ENTRIES:
            self._sessions.clear()  # crude but bounded; entries are re-checked on next use
        self._sessions[digest] = _CachedSession(officer_id, now)
        return officer_id

    async def _caller(self, request: web.Request) -> tuple[Caller, str]:
        """The caller, and the digest of their session ("" when they came with a token)."""
        source = f"{CHANNEL} {request.remote or '-'}"
        token = bearer_token(request)
        if token is not None:
            return await self._actions.authenticate(token, CHANNEL, source), ""
        session = request.cookies.get(COOKIE_NAME)
        if not session:
            raise ActionError(401, "unauthorized", "sign in first")
        if request.method in _UNSAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
            raise ActionError(403, "forbidden", f"{CSRF_HEADER} header missing")
        officer_id = await self._session_officer(session)
        officer = (
            self._pipeline.config.alerting.directory.officers.get(officer_id)
            if officer_id is not None else None
        )
        if officer is None:
            raise ActionError(401, "unauthorized", "signed out, expired or revoked")
        return Caller(officer, CHANNEL, source), session_digest(session)

    async def _audit(self, caller: Caller, action: str, obj: str, detail: dict[str, Any]) -> None:
        try:
            await self._store.audit(caller.officer.officer_id, action, obj, caller.source, detail)
        except StoreError as exc:
            # Live positions stay available in a database outage (the daemon runs on); the
            # lost audit row is reported at ERROR. Tracks need the database and are never
            # answered without their audit row (ConsoleStore.track).
            _LOGGER.error("audit log write failed for %s %s: %s", action, obj, exc)

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[web.RouteDef]:
        if not self._settings.enabled:
            return []
        api = "/console/api"
        return [
            web.get("/", self._redirect_home),
            web.get("/console", self._redirect_home),
            web.get("/console/", self._page),
            web.get("/console/alerts/{alert_id}", self._page),
            web.get("/console/assets/{name}", self._asset),
            web.post(f"{api}/session", self._json_public(self._login)),
            web.delete(f"{api}/session", self._json_public(self._logout)),
            web.get(f"{api}/me", self._json(self._me)),
            web.get(f"{api}/subjects", self._json(self._subjects)),
            web.get(f"{api}/zones", self._json(self._zones)),
            web.get(f"{api}/subjects/{{subject_id}}/track", self._json(self._track)),
            web.get(f"{api}/alerts", self._json(self._alerts)),
            web.post(f"{api}/alerts/{{alert_id}}/ack", self._json(self._ack)),
            web.post(f"{api}/alerts/{{alert_id}}/resolve", self._json(self._resolve)),
            web.get(f"{api}/events", self._events),
        ]

    def _secure_headers(self, response: web.StreamResponse) -> None:
        response.headers["Content-Security-Policy"] = self._csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"

    def _finish(self, response: web.StreamResponse) -> web.StreamResponse:
        response.headers["Cache-Control"] = "no-store"
        self._secure_headers(response)
        return response

    def _json(
        self, body: Callable[[web.Request, Caller, str], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A JSON endpoint for a signed-in caller (errors in the officer API's form)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                caller, session = await self._caller(request)
                result = await body(request, caller, session)
            except ActionError as exc:
                return self._finish(error_response(exc))
            if not isinstance(result, web.StreamResponse):
                # 202 like the officer API: decided and published, recorded when the
                # database is back.
                waiting = isinstance(result, dict) and result.get("recorded") is False
                status = 202 if waiting else 200
                result = web.json_response(result, status=status, dumps=dumps)
            return self._finish(result)

        return handle

    def _json_public(
        self, body: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Sign-in and sign-out: no caller yet, but the anti-forgery header all the same
        (a forged sign-in would put an officer's browser in someone else's session)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                if request.headers.get(CSRF_HEADER) != "1":
                    raise ActionError(403, "forbidden", f"{CSRF_HEADER} header missing")
                return self._finish(await body(request))
            except ActionError as exc:
                return self._finish(error_response(exc))

        return handle

    # ------------------------------------------------------------------ page

    async def _redirect_home(self, _request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def _page(self, _request: web.Request) -> web.StreamResponse:
        index = self._static_dir / "index.html"
        if not index.is_file():
            response: web.StreamResponse = web.Response(
                status=503, content_type="text/plain",
                text="The console is not built. Run `bash scripts/bootstrap.sh` "
                "(it runs `npm ci && npm run build` in console/).\n",
            )
        else:
            response = web.FileResponse(index, headers={"Cache-Control": "no-cache"})
        self._secure_headers(response)
        return response

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self._static_dir / "assets" / name
        if not _ASSET_NAME_RE.match(name) or not path.is_file():
            raise web.HTTPNotFound()
        # Names carry a content hash (console/build.mjs): a new build has new names.
        response = web.FileResponse(
            path, headers={"Cache-Control": "public, max-age=31536000, immutable"}
        )
        self._secure_headers(response)
        return response

    # ------------------------------------------------------------------ sign-in

    async def _login(self, request: web.Request) -> web.StreamResponse:
        body = await read_json_body(request)
        token = body.get("token")
        if not isinstance(token, str) or not 0 < len(token.strip()) <= TOKEN_MAX_CHARS:
            raise ActionError(400, "bad_request", "token must be a non-empty string")
        source = f"{CHANNEL} {request.remote or '-'}"
        now = self._clock()
        try:
            grant = await self._store.grant_for_token(token_digest(token.strip()), now)
        except StoreError as exc:
            raise ActionError(503, "unavailable", "cannot check the token now") from exc
        directory = self._pipeline.config.alerting.directory
        officer = directory.officers.get(grant.officer_id) if grant is not None else None
        if grant is not None and grant.role is not TokenRole.OFFICER:
            # The map is location data: operator and admin tokens use the API instead.
            metrics.LOGINS.labels("refused").inc()
            raise ActionError(
                403, "forbidden",
                f"the console is for officers, supervisors and command, not {grant.role.value}",
            )
        if grant is None or officer is None:
            metrics.LOGINS.labels("refused").inc()
            # The officer API's counter too: one number for refused tokens on every channel.
            alert_metrics.AUTH_FAILURES.labels(CHANNEL).inc()
            _LOGGER.info("console sign-in refused from %s", request.remote or "-")
            raise ActionError(401, "unauthorized", "unknown, expired or revoked token")
        try:
            session, expires_at = await self._store.create_session(
                grant, now, timedelta(hours=self._settings.session_hours), source
            )
        except StoreError as exc:
            raise ActionError(503, "unavailable", "cannot sign in now") from exc
        metrics.LOGINS.labels("ok").inc()
        response = web.json_response(
            {**self._me_body(Caller(officer, CHANNEL, source)),
             "session_expires_at": expires_at.isoformat()},
            dumps=dumps,
        )
        response.set_cookie(
            COOKIE_NAME, session, path=COOKIE_PATH, httponly=True, samesite="Strict",
            secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
            max_age=max(1, int((expires_at - now).total_seconds())),
        )
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session = request.cookies.get(COOKIE_NAME)
        ended = False
        if session:
            digest = session_digest(session)
            self._sessions.pop(digest, None)
            self.feed.close_session(digest, CLOSED_SIGNED_OUT)
            try:
                ended = await self._store.end_session(
                    session, self._clock(), f"{CHANNEL} {request.remote or '-'}"
                )
            except StoreError as exc:
                raise ActionError(503, "unavailable", "cannot sign out now") from exc
        response = web.json_response({"signed_out": ended})
        response.del_cookie(COOKIE_NAME, path=COOKIE_PATH)
        return response

    def _me_body(self, caller: Caller) -> dict[str, Any]:
        officer = caller.officer
        model = self._loaded.officers.get(officer.officer_id)
        region = self._loaded.settings.region
        s = self._settings
        return {
            "officer_id": officer.officer_id,
            "name": model.name if model is not None else officer.officer_id,
            "role": officer.role.value,
            "dispositions": sorted(OFFICER_DISPOSITIONS),
            "map": {
                "tile_url": s.tile_url, "tile_attribution": s.tile_attribution,
                "tile_max_zoom": s.tile_max_zoom,
                "region_bbox": list(region.bbox) if region is not None else None,
                "stale_after_seconds": s.stale_after_seconds,
            },
        }

    async def _me(self, _request: web.Request, caller: Caller, _session: str) -> Any:
        return self._me_body(caller)

    # ------------------------------------------------------------------ reads

    def _visible_subject_ids(self, caller: Caller) -> list[str]:
        return sorted(self.scope_of(caller.officer.officer_id) or ())

    async def _seed_positions(self) -> bool:
        """Load the newest fix per device once; False while the database cannot say."""
        if self._seeded:
            return True
        async with self._seed_lock:
            if self._seeded:
                return True
            devices = {d: spec.subject_id for d, spec in self._pipeline.config.devices.items()}
            since = self._clock() - timedelta(days=LATEST_FIX_LOOKBACK_DAYS)
            try:
                fixes = await self._store.latest_fixes(devices, since)
            except StoreError as exc:
                _LOGGER.warning("newest positions not loaded (%s): the map shows live ones", exc)
                return False
            self.feed.seed(fixes)
            self._seeded = True
            return True

    async def _subjects(self, _request: web.Request, caller: Caller, _session: str) -> Any:
        require(caller, Permission.LOCATIONS_READ)
        complete = await self._seed_positions()
        config = self._pipeline.config
        subject_ids = self._visible_subject_ids(caller)
        views = self.feed.subject_views(subject_ids)
        out = []
        for subject_id in subject_ids:
            spec = config.subjects[subject_id]
            fix = self.feed.last_fix(subject_id)
            officer = self._loaded.officers.get(spec.officer_id or "")
            out.append({
                **views[subject_id],
                "officer_id": spec.officer_id,
                "officer_name": officer.name if officer is not None else spec.officer_id,
                "timezone": str(spec.timezone),
                "devices": [d.device_id for d in spec.devices],
                "zones": {
                    "home": spec.home_zone_id, "permitted": spec.permitted_zone_id,
                    "exclusions": sorted(spec.exclusion_zone_ids),
                },
                "last_fix": fix.to_wire() if fix is not None else None,
            })
        await self._audit(caller, "console.positions", "*", {"subjects": len(out)})
        return {
            "subjects": out, "as_of": self._clock().isoformat(), "positions_complete": complete,
        }

    async def _zones(self, _request: web.Request, caller: Caller, _session: str) -> Any:
        require(caller, Permission.LOCATIONS_READ)
        config = self._pipeline.config
        uses: dict[str, dict[str, set[str]]] = {}
        for subject_id in self._visible_subject_ids(caller):
            spec = config.subjects[subject_id]
            for role, zone_ids in (
                ("home", [spec.home_zone_id]), ("permitted", [spec.permitted_zone_id]),
                ("exclusion", sorted(spec.exclusion_zone_ids)),
            ):
                for zone_id in zone_ids:
                    if zone_id is not None and zone_id in config.zones:
                        uses.setdefault(zone_id, {}).setdefault(role, set()).add(subject_id)
        features = []
        for zone_id in sorted(uses):
            zone = config.zones[zone_id]
            roles = uses[zone_id]
            features.append({
                "type": "Feature",
                "id": zone_id,
                "properties": {
                    "id": zone_id, "name": zone.name, "kind": zone.kind.value,
                    # The strictest use decides how it is drawn: exclusion, home, permitted.
                    "role": next(r for r in ("exclusion", "home", "permitted") if r in roles),
                    "subjects": sorted(set().union(*roles.values())),
                },
                "geometry": shapely.geometry.mapping(zone.geometry_wgs84),
            })
        await self._audit(caller, "console.zones", "*", {"zones": len(features)})
        return {"type": "FeatureCollection", "features": features}

    async def _track(self, request: web.Request, caller: Caller, _session: str) -> Any:
        require(caller, Permission.LOCATIONS_READ)
        subject_id = request.match_info["subject_id"]
        spec = self._pipeline.config.subjects.get(subject_id)
        if spec is None or not self._actions.may_see_subject(caller, subject_id):
            metrics.TRACK_READS.labels("not_found").inc()
            raise ActionError(404, "not_found", f"no subject {subject_id} in your caseload")
        now = self._clock()
        until = _parse_time(request.query.get("to"), "to") or now
        since = _parse_time(request.query.get("from"), "from") or (
            until - timedelta(hours=DEFAULT_TRACK_HOURS)
        )
        if not since < until:
            raise ActionError(400, "bad_request", "from must be before to")
        if until - since > timedelta(hours=self._settings.track_max_hours):
            raise ActionError(
                400, "bad_request",
                f"a track covers at most {self._settings.track_max_hours:g} hours",
            )
        try:
            track = await self._store.track(
                subject_id, [d.device_id for d in spec.devices], since, until,
                self._settings.track_max_points,
                actor=caller.officer.officer_id, source=caller.source,
            )
        except StoreError as exc:
            metrics.TRACK_READS.labels("unavailable").inc()
            raise ActionError(503, "unavailable", "tracks need the database; try again") from exc
        metrics.TRACK_READS.labels("ok").inc()
        return {
            "subject_id": subject_id, "from": since.isoformat(), "to": until.isoformat(),
            "count": len(track.points), "truncated": track.truncated,
            "points": [p.to_wire() for p in track.points],
        }

    async def _alerts(self, request: web.Request, caller: Caller, _session: str) -> Any:
        alerts = await self._actions.list_alerts(
            caller, state=request.query.get("state", "unresolved"), limit=1000
        )
        return {"alerts": alerts, "count": len(alerts)}

    # ------------------------------------------------------------------ actions

    async def _ack(self, request: web.Request, caller: Caller, _session: str) -> Any:
        body = await read_json_body(request)
        return await self._actions.acknowledge(
            caller, request.match_info["alert_id"], text_field(body, "note")
        )

    async def _resolve(self, request: web.Request, caller: Caller, _session: str) -> Any:
        body = await read_json_body(request)
        disposition = body.get("disposition")
        return await self._actions.resolve(
            caller, request.match_info["alert_id"],
            disposition if isinstance(disposition, str) else None, text_field(body, "note"),
        )

    # ------------------------------------------------------------------ live

    async def _events(self, request: web.Request) -> web.StreamResponse:
        try:
            caller, session = await self._caller(request)
            require(caller, Permission.LOCATIONS_READ)
            visible = self.scope_of(caller.officer.officer_id) or frozenset()
            client = self.feed.subscribe(caller.officer.officer_id, visible, session)
        except ActionError as exc:
            return error_response(exc)
        except FeedFullError as exc:
            return error_response(ActionError(503, "unavailable", str(exc)))
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        })
        self._secure_headers(response)
        try:
            await self._audit(caller, "console.stream", "*", {"subjects": len(visible)})
            await response.prepare(request)
            hello = encode_event("hello", {
                "officer_id": caller.officer.officer_id, "stream_id": client.client_id,
                "server_time": self._clock().isoformat(),
            })
            await response.write(f"retry: {RECONNECT_HINT_MILLISECONDS}\n".encode() + hello)

            async def still_signed_in() -> bool:
                if not session:
                    return True  # a bearer token was checked when the stream opened
                cookie = request.cookies.get(COOKIE_NAME, "")
                try:
                    officer_id = await self._session_officer(cookie, fresh=True)
                    return officer_id == caller.officer.officer_id
                except ActionError:
                    return True  # database away past the grace period: keep streaming

            reason = await pump(
                client, response.write,
                position_flush_seconds=self._settings.position_flush_seconds,
                still_signed_in=still_signed_in,
            )
            if reason == CLOSED_SIGNED_OUT:
                await _write_quietly(response, encode_event("signed_out", {}))
            _LOGGER.debug("console stream %d ended: %s", client.client_id, reason)
        except ConnectionError:
            pass  # the browser went away before the first write
        finally:
            self.feed.unsubscribe(client)
        return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(response.write(data), 1.0)
