"""`console:` in settings.yaml: the officers' live map (daemon.console).

Kept apart from daemon.configfiles so the console's knobs live with the console; the
settings model there only adds `console: ConsoleSettings`.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, model_validator

from daemon.strictmodel import StrictModel

# A tile URL template as Leaflet takes it: http(s), with {z}, {x} and {y}.
_TILE_URL_RE = re.compile(r"^https?://[^\s\"'<>]+$")
TILE_URL_PLACEHOLDERS = ("{z}", "{x}", "{y}")


class ConsoleSettings(StrictModel):
    enabled: bool = Field(True, title="Serve the console at /console/ on the HTTP port")
    tile_url: str | None = Field(
        None,
        max_length=512,
        title="Map tile URL template, e.g. http://tiles.local/{z}/{x}/{y}.png (WGS-84/OSM "
        "tiles only); absent: zones, tracks and positions on a plain background",
    )
    tile_attribution: str = Field(
        "", max_length=300, title="Attribution text the tile server's licence asks for"
    )
    tile_max_zoom: int = Field(19, ge=1, le=22, title="Deepest zoom level the tile server has")
    stale_after_seconds: float = Field(
        1800.0, ge=60.0, le=7 * 86400.0,
        title="A subject whose newest fix is older than this is shown as stale",
    )
    session_hours: float = Field(
        12.0, ge=0.25, le=72.0, title="Lifetime of a console sign-in (a shift)"
    )
    max_clients: int = Field(
        100, ge=1, le=10_000, title="Live-update streams open at once; more are refused"
    )
    client_queue_size: int = Field(
        1000, ge=10, le=100_000,
        title="Alert transitions waiting for one stream; a stream that falls this far "
        "behind is dropped (the browser reconnects and reloads)",
    )
    position_flush_seconds: float = Field(
        1.0, ge=0.1, le=30.0,
        title="Positions are sent to a stream at most this often (newest per subject)",
    )
    track_max_hours: float = Field(
        7 * 24.0, ge=1.0, le=31 * 24.0, title="Longest period one track request may cover"
    )
    track_max_points: int = Field(
        10_000, ge=100, le=200_000, title="Most fixes one track answer carries (the newest)"
    )

    @model_validator(mode="after")
    def _tiles(self) -> Self:
        if self.tile_url is None:
            if self.tile_attribution:
                raise ValueError("tile_attribution is set but tile_url is not")
            return self
        if not _TILE_URL_RE.match(self.tile_url):
            raise ValueError("tile_url must be an http:// or https:// URL without spaces")
        missing = [p for p in TILE_URL_PLACEHOLDERS if p not in self.tile_url]
        if missing:
            raise ValueError(f"tile_url lacks {', '.join(missing)}")
        return self
