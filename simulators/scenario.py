"""Scenarios with expectations: YAML in, device messages and a pass/fail verdict out.

A scenario names its devices, a timeline of actions (go to a place, enter a zone, open the
strap, go silent, lose coverage, check in) and the alerts it expects (rule, tier, within T
of an action) and does not expect. docs/simulators.md documents the format; one scenario
per rule lives in simulators/scenarios/.

This module is pure apart from `load_scenario` (reads the YAML file): `compile_scenario`
builds the messages for a day, `run_offline` feeds them through the same `Replayer` that
`emon replay` uses, and `evaluate` compares observed alert transitions with the
expectations. `simulators.scenario_live` does the same against a running daemon.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from alerts.model import TransitionKind
from daemon.configfiles import ConfigError, LoadedConfig, load_config
from daemon.replay import Replayer, ReplayMessage
from daemon.strictmodel import StrictModel
from geofence.config import CoreConfig
from geofence.observation import DeviceEventType
from geofence.zones import Zone
from simulators.devices import (
    BurstOrder,
    Measurement,
    Protocol,
    Uplink,
    bounded_measurement,
    event_message,
    location_message,
    owntracks_user_device,
)
from simulators.publisher import encode_payload
from simulators.scripted_day import LonLat, SimMessage, offset_m

DEFAULT_DAY: Final = date(2026, 11, 20)
"""Offline runs use this (fixed) day unless the scenario names one; live runs shift it."""
DEFAULT_SETTLE: Final = timedelta(minutes=10)
"""The scenario runs on this long after its last action, so tick-driven rules can fire."""
WALKING_SPEED_MPS: Final = 1.4
MAX_SCENARIO_DURATION: Final = timedelta(days=7)
SEARCH_LIMIT_M: Final = 100_000.0
"""How far from a zone's centre a point `outside_m` its edge is searched for."""
BISECTION_STEPS: Final = 40
RAISING_TRANSITIONS: Final = frozenset({TransitionKind.OPENED.value, TransitionKind.REOPENED.value})

_DURATION_RE: Final = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?"
                                 r"\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


class ScenarioError(Exception):
    """A scenario file that cannot be loaded or compiled (one readable line per problem)."""


def parse_duration(value: Any) -> timedelta:
    """`90`, `"90s"`, `"5m"`, `"1h30m"`, `"2d"` -> timedelta (numbers are seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 5m, 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)) and any(match.groups()):
        days, hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    else:
        raise ValueError(f"not a duration: {value!r} (use seconds or text like 5m, 1h30m)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be finite and not negative, got {value!r}")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def parse_clock(value: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected a local time HH:MM[:SS], got {value!r}") from None




class PlaceModel(StrictModel):
    """A place: a zone (its centre), a named place, or coordinates; optionally moved."""

    zone: str | None = Field(None, title="Zone id: its centre, or a point relative to its edge")
    place: str | None = Field(None, title="Name from the scenario's places")
    lon: float | None = Field(None, ge=-180, le=180, title="WGS-84 longitude")
    lat: float | None = Field(None, ge=-90, le=90, title="WGS-84 latitude")
    outside_m: float | None = Field(
        None, ge=0, le=50_000, title="Metres outside the zone's edge, along bearing_deg"
    )
    inside_m: float | None = Field(
        None, ge=0, le=50_000, title="Metres inside the zone's edge, along bearing_deg"
    )
    bearing_deg: float = Field(270.0, ge=0, lt=360, title="Direction from the zone centre")
    offset_m: tuple[float, float] = Field(
        (0.0, 0.0), title="Then moved this far east, north (metres)"
    )

    @model_validator(mode="after")
    def _one_anchor(self) -> PlaceModel:
        anchors = [self.zone is not None, self.place is not None, self.lon is not None]
        if sum(anchors) != 1 or (self.lon is None) != (self.lat is None):
            raise ValueError("a place needs exactly one of: zone, place, lon+lat")
        if (self.outside_m is not None or self.inside_m is not None) and self.zone is None:
            raise ValueError("outside_m / inside_m need a zone")
        if self.outside_m is not None and self.inside_m is not None:
            raise ValueError("give outside_m or inside_m, not both")
        return self


def _place(value: Any) -> Any:
    """A bare string names a zone or a place from the scenario's `places`."""
    return {"place": value} if isinstance(value, str) else value


PlaceSpec = Annotated[PlaceModel, BeforeValidator(_place)]


class DeviceModel(StrictModel):
    start: PlaceSpec = Field(title="Where the device is when the scenario starts")
    protocol: Protocol = Field(Protocol.EMON, title="emon (wire v1) or owntracks")
    ping_interval: Duration = Field(timedelta(seconds=60), title="Time between fixes")
    accuracy_m: float = Field(8.0, gt=0, le=5000, title="Stated accuracy of its fixes")
    source: Literal["gnss", "cell", "wifi"] = Field("gnss", title="Fix source")
    battery_pct: float = Field(90.0, ge=0, le=100, title="Battery level at the start")
    clock_skew: float = Field(
        0.0, ge=-3600, le=3600, title="Seconds the device clock is ahead (negative: behind)"
    )
    duplicate_rate: float = Field(
        0.0, ge=0, le=1, title="Share of messages delivered twice (QoS 1 redelivery)"
    )

    @field_validator("ping_interval")
    @classmethod
    def _interval(cls, v: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= v <= timedelta(hours=6):
            raise ValueError("ping_interval must be between 1 s and 6 h")
        return v


class SettingsChange(StrictModel):
    accuracy_m: float | None = Field(None, gt=0, le=5000, title="New stated accuracy")
    source: Literal["gnss", "cell", "wifi"] | None = Field(None, title="New fix source")
    battery_pct: float | None = Field(None, ge=0, le=100, title="New battery level")
    ping_interval: Duration | None = Field(None, title="New time between fixes")


ACTIONS: Final = ("go_to", "enter", "stay", "event", "check_in", "silent", "offline", "set")


class StepModel(StrictModel):
    id: str | None = Field(None, max_length=64, title="Label, for expectations' `after`")
    at: str | None = Field(None, title="Local time HH:MM[:SS] on the scenario's day (+ day)")
    day: int = Field(0, ge=0, le=6, title="Days after the scenario's first day, with `at`")
    after: Duration | None = Field(None, title="Wait this long after the previous action")
    device: str | list[str] | None = Field(None, title="Device(s) acted on (default: all)")
    go_to: PlaceSpec | None = Field(None, title="Travel there (straight line)")
    enter: str | None = Field(None, title="Travel to the centre of this zone")
    speed_mps: float | None = Field(None, gt=0, le=100, title="Travel speed (default walking)")
    duration: Duration | None = Field(None, title="Travel time (instead of speed)")
    stay: Duration | None = Field(None, title="Stay where they are this long")
    event: DeviceEventType | None = Field(None, title="Device event (emon wire only)")
    attributes: dict[str, Any] = Field(default_factory=dict, title="Extra fields of the event")
    check_in: bool | None = Field(None, title="Publish a checkin event (late: place it late)")
    silent: Duration | None = Field(None, title="Send nothing for this long (messages lost)")
    offline: Duration | None = Field(
        None, title="No coverage this long: messages stored, sent as a burst afterwards"
    )
    burst_order: Literal["oldest_first", "newest_first"] = Field(
        "oldest_first", title="Order of the store-and-forward burst"
    )
    set: SettingsChange | None = Field(None, title="Change device settings from now on")

    @model_validator(mode="after")
    def _one_action(self) -> StepModel:
        present = [name for name in ACTIONS if getattr(self, name) not in (None, False)]
        if len(present) != 1:
            raise ValueError(f"a step needs exactly one action of {', '.join(ACTIONS)}; "
                             f"got {present or 'none'}")
        if self.at is not None and self.after is not None:
            raise ValueError("give `at` or `after`, not both")
        if self.at is not None:
            parse_clock(self.at)
        if (self.speed_mps is not None or self.duration is not None) and present[0] not in (
            "go_to", "enter"
        ):
            raise ValueError("speed_mps / duration belong to go_to or enter")
        if self.speed_mps is not None and self.duration is not None:
            raise ValueError("give speed_mps or duration, not both")
        return self

    @property
    def action(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) not in (None, False))


class AlertPattern(StrictModel):
    """Which alert transitions a line matches; an absent field matches anything."""

    rule: str = Field(title="Rule id, e.g. boundary_exit (any string: rules still to come)")
    tier: str | None = Field(None, title="Tier: critical, high, low")
    subject: str | None = Field(None, title="Subject id")
    zone: str | None = Field(None, title="Zone id")
    device: str | None = Field(None, title="Device id")
    transition: str = Field("opened", title="opened (also matches reopened), cleared, ...")

    def matches(self, alert: Mapping[str, Any]) -> bool:
        kind = alert.get("transition")
        wanted = (
            RAISING_TRANSITIONS if self.transition == TransitionKind.OPENED.value
            else {self.transition}
        )
        return (
            kind in wanted
            and alert.get("rule") == self.rule
            and (self.tier is None or alert.get("tier") == self.tier)
            and (self.subject is None or alert.get("subject_id") == self.subject)
            and (self.zone is None or alert.get("zone_id") == self.zone)
            and (self.device is None or alert.get("device_id") == self.device)
        )

    def describe(self) -> str:
        parts = [self.rule]
        if self.tier:
            parts[0] += f"/{self.tier}"
        for label, value in (("subject", self.subject), ("zone", self.zone),
                             ("device", self.device)):
            if value:
                parts.append(f"{label} {value}")
        if self.transition != TransitionKind.OPENED.value:
            parts.append(f"({self.transition})")
        return " ".join(parts)


class Expectation(AlertPattern):
    after: str | None = Field(None, title="Step id the window starts at (default: start)")
    within: Duration = Field(timedelta(minutes=5), title="Alert decided at most this late")
    count: int = Field(1, ge=1, le=1000, title="Exactly this many matching transitions")


class ScenarioModel(StrictModel):
    name: str = Field(title="Short name", max_length=80)
    description: str = Field("", title="What it proves")
    rule: str | None = Field(None, title="The rule this scenario provokes (for listings)")
    config: str = Field("config", title="Config directory, relative to the scenario file")
    timezone: str = Field("Asia/Shanghai", title="Local time zone of `at` times")
    day: date | None = Field(None, title="First day (offline default 2026-11-20)")
    start: str = Field("08:00", title="Local start time HH:MM")
    end: str | None = Field(None, title="Local end time (default: last action + settle)")
    end_day: int = Field(0, ge=0, le=6, title="Day of `end` after the first day")
    settle: Duration = Field(DEFAULT_SETTLE, title="Run on after the last action")
    seed: int = Field(1, title="Seed of the position noise")
    places: dict[str, PlaceModel] = Field(default_factory=dict, title="Named places")
    devices: dict[str, DeviceModel] = Field(min_length=1, title="Devices by id")
    timeline: list[StepModel] = Field(default_factory=list, title="Actions, in order")
    expect: list[Expectation] = Field(default_factory=list, title="Alerts that must happen")
    not_expect: list[AlertPattern] = Field(default_factory=list, title="Alerts that must not")
    strict: bool = Field(True, title="Any other opened alert fails the scenario")
    clock_driven: bool = Field(
        False, title="Needs the daemon's clock to pass through the timeline (live: speed 1)"
    )
    pending: str | None = Field(
        None, max_length=300,
        title="Known gap: why this scenario fails today and which issue will fix it",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str | None) -> str | None:
        if v is not None:
            parse_clock(v)
        return v

    @model_validator(mode="after")
    def _references(self) -> ScenarioModel:
        ids = [s.id for s in self.timeline if s.id is not None]
        if len(ids) != len(set(ids)):
            raise ValueError("step ids must be unique")
        for expectation in self.expect:
            if expectation.after is not None and expectation.after not in ids:
                raise ValueError(f"expect: after {expectation.after!r} names no step id")
        for index, step in enumerate(self.timeline):
            for device in _as_list(step.device):
                if device not in self.devices:
                    raise ValueError(f"timeline.{index}: device {device!r} is not in devices")
            if step.event is not None or step.check_in:
                for target in _as_list(step.device) or list(self.devices):
                    if self.devices[target].protocol is Protocol.OWNTRACKS:
                        raise ValueError(f"timeline.{index}: OwnTracks device {target!r} "
                                         "sends locations only, no events")
        for device_id, spec in self.devices.items():
            if spec.protocol is Protocol.OWNTRACKS:
                owntracks_user_device(device_id)
        return self


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Scenario:
    path: Path
    model: ScenarioModel

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def config_dir(self) -> Path:
        return (self.path.parent / self.model.config).resolve()


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: invalid YAML: {exc}") from None
    try:
        return Scenario(path, ScenarioModel.model_validate(data))
    except ValidationError as exc:
        lines = [
            f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in exc.errors()
        ]
        raise ScenarioError("\n".join(lines)) from None


def scenario_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories expand to their *.yaml files (not their config/)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.glob("*.yaml") if p.is_file()))
        else:
            out.append(path)
    return out


def load_scenario_config(scenario: Scenario, override: Path | None = None) -> LoadedConfig:
    directory = override if override is not None else scenario.config_dir
    try:
        return load_config(directory, env={})
    except ConfigError as exc:
        raise ScenarioError(f"{scenario.path}: config {directory} invalid:\n{exc}") from None


# ---------------------------------------------------------------------- places


def _zone_centre(zone: Zone) -> LonLat:
    geometry = zone.geometry_wgs84
    centre = geometry.centroid
    if not geometry.contains(centre):
        centre = geometry.representative_point()
    return LonLat(float(centre.x), float(centre.y))


def _signed_distance(zone: Zone, config: CoreConfig, point: LonLat) -> float:
    return zone.signed_distance_m(*config.projection.forward(point.lon, point.lat))


def _along_edge(zone: Zone, config: CoreConfig, bearing_deg: float, target_m: float) -> LonLat:
    """A point on the ray from the zone's centre whose signed edge distance is `target_m`."""
    centre = _zone_centre(zone)
    east, north = math.sin(math.radians(bearing_deg)), math.cos(math.radians(bearing_deg))

    def at(r: float) -> LonLat:
        return offset_m(centre, r * east, r * north)

    low, high = 0.0, 100.0
    while _signed_distance(zone, config, at(high)) < target_m:
        low, high = high, high * 2
        if high > SEARCH_LIMIT_M:
            raise ScenarioError(f"no point {target_m:+.0f} m from the edge of {zone.zone_id}")
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if _signed_distance(zone, config, at(middle)) < target_m:
            low = middle
        else:
            high = middle
    return at(high)


def resolve_place(
    place: PlaceModel, places: Mapping[str, PlaceModel], config: CoreConfig, seen: int = 0
) -> LonLat:
    if seen > len(places):
        raise ScenarioError("places refer to each other in a loop")
    if place.lon is not None and place.lat is not None:
        point = LonLat(place.lon, place.lat)
    elif place.place is not None:
        if place.place in places:
            point = resolve_place(places[place.place], places, config, seen + 1)
        elif place.place in config.zones:
            point = _zone_centre(config.zones[place.place])
        else:
            raise ScenarioError(f"{place.place!r} is neither a place of the scenario nor a zone")
    else:
        assert place.zone is not None
        zone = config.zones.get(place.zone)
        if zone is None:
            raise ScenarioError(f"zone {place.zone!r} is not in the config")
        if place.outside_m is not None:
            point = _along_edge(zone, config, place.bearing_deg, place.outside_m)
        elif place.inside_m is not None:
            point = _along_edge(zone, config, place.bearing_deg, -place.inside_m)
        else:
            point = _zone_centre(zone)
    east, north = place.offset_m
    return offset_m(point, east, north) if east or north else point


def distance_m(a: LonLat, b: LonLat) -> float:
    mid_lat = math.radians((a.lat + b.lat) / 2)
    dx = math.radians(b.lon - a.lon) * math.cos(mid_lat)
    dy = math.radians(b.lat - a.lat)
    return 6_371_008.8 * math.hypot(dx, dy)


# ---------------------------------------------------------------------- compiling


@dataclass(slots=True)
class _DeviceTrack:
    device_id: str
    model: DeviceModel
    keyframes: list[tuple[datetime, LonLat]]
    settings: list[tuple[datetime, SettingsChange]] = field(default_factory=list)
    silent: list[tuple[datetime, datetime]] = field(default_factory=list)
    offline: list[tuple[datetime, datetime, str]] = field(default_factory=list)
    events: list[tuple[datetime, str, dict[str, Any]]] = field(default_factory=list)

    def position(self, at: datetime) -> LonLat:
        frames = self.keyframes
        if at <= frames[0][0]:
            return frames[0][1]
        for (t0, p0), (t1, p1) in pairwise(frames):
            if t0 <= at < t1:
                f = (at - t0) / (t1 - t0)
                return LonLat(p0.lon + f * (p1.lon - p0.lon), p0.lat + f * (p1.lat - p0.lat))
        return frames[-1][1]

    def current(self) -> LonLat:
        return self.keyframes[-1][1]

    def setting(self, at: datetime, name: str) -> Any:
        value = getattr(self.model, name)
        for when, change in self.settings:
            if when <= at and getattr(change, name) is not None:
                value = getattr(change, name)
        return value

    def is_silent(self, at: datetime) -> bool:
        return any(start <= at < end for start, end in self.silent)


@dataclass(frozen=True)
class CompiledScenario:
    scenario: Scenario
    tz: ZoneInfo
    start: datetime
    end: datetime
    step_times: dict[str, datetime]
    messages: list[SimMessage]
    subjects: frozenset[str]


def _local(day: date, clock: str, tz: ZoneInfo, day_offset: int = 0) -> datetime:
    return datetime.combine(day + timedelta(days=day_offset), parse_clock(clock), tzinfo=tz)


def compile_scenario(
    scenario: Scenario, config: CoreConfig, day: date | None = None
) -> CompiledScenario:
    """The scenario's messages for `day` (default: the scenario's, else DEFAULT_DAY)."""
    model = scenario.model
    tz = ZoneInfo(model.timezone)
    first_day = day or model.day or DEFAULT_DAY
    start = _local(first_day, model.start, tz)
    places = model.places
    for device_id in model.devices:
        if device_id not in config.devices:
            raise ScenarioError(f"{scenario.path}: device {device_id!r} is not in the config's "
                                "roster (subjects.yaml): the daemon would refuse it")
    tracks = {
        device_id: _DeviceTrack(
            device_id, device, [(start, resolve_place(device.start, places, config))]
        )
        for device_id, device in model.devices.items()
    }
    cursor = start
    step_times: dict[str, datetime] = {}
    for index, step in enumerate(model.timeline):
        where = f"{scenario.path}: timeline.{index}"
        if step.at is not None:
            begin = _local(first_day, step.at, tz, step.day)
            if begin < cursor:
                raise ScenarioError(f"{where}: at {step.at} is before the previous action ends "
                                    f"({cursor.astimezone(tz):%H:%M:%S})")
        else:
            begin = cursor + (step.after or timedelta(0))
        if step.id is not None:
            step_times[step.id] = begin
        devices = [tracks[d] for d in (_as_list(step.device) or list(tracks))]
        finish = begin
        action = step.action
        if action in ("go_to", "enter"):
            if step.enter is not None:
                if step.enter not in config.zones:
                    raise ScenarioError(f"{where}: enter: zone {step.enter!r} is not in the config")
                target = _zone_centre(config.zones[step.enter])
            else:
                assert step.go_to is not None
                try:
                    target = resolve_place(step.go_to, places, config)
                except ScenarioError as exc:
                    raise ScenarioError(f"{where}: {exc}") from None
            for track in devices:
                origin = track.position(begin)
                if step.duration is not None:
                    travel = step.duration
                else:
                    speed = step.speed_mps or WALKING_SPEED_MPS
                    travel = timedelta(seconds=distance_m(origin, target) / speed)
                track.keyframes += [(begin, origin), (begin + travel, target)]
                finish = max(finish, begin + travel)
        elif action == "stay":
            assert step.stay is not None
            finish = begin + step.stay
        elif action in ("event", "check_in"):
            event_type = step.event.value if step.event is not None else "checkin"
            for track in devices:
                track.events.append((begin, event_type, dict(step.attributes)))
        elif action == "silent":
            assert step.silent is not None
            for track in devices:
                track.silent.append((begin, begin + step.silent))
        elif action == "offline":
            assert step.offline is not None
            for track in devices:
                track.offline.append((begin, begin + step.offline, step.burst_order))
        else:
            assert step.set is not None
            for track in devices:
                track.settings.append((begin, step.set))
        cursor = finish
    last_action = max(
        [cursor, *(end for t in tracks.values() for _, end in t.silent),
         *(end for t in tracks.values() for _, end, _ in t.offline)]
    )
    end = (
        _local(first_day, model.end, tz, model.end_day)
        if model.end is not None else last_action + model.settle
    )
    if end < last_action:
        raise ScenarioError(f"{scenario.path}: end is before the last action")
    if end - start > MAX_SCENARIO_DURATION:
        raise ScenarioError(f"{scenario.path}: longer than {MAX_SCENARIO_DURATION.days} days")
    messages: list[SimMessage] = []
    for index, track in enumerate(tracks.values()):
        rng = random.Random(f"emon-scenario:{model.seed}:{track.device_id}")
        messages += _device_messages(track, start, end, index, len(tracks), rng, tz)
    messages.sort(key=lambda m: (m.at, m.topic))
    subjects = frozenset(config.devices[d].subject_id for d in model.devices)
    return CompiledScenario(scenario, tz, start, end, step_times, messages, subjects)


def _device_messages(
    track: _DeviceTrack, start: datetime, end: datetime, index: int, count: int,
    rng: random.Random, tz: ZoneInfo,
) -> list[SimMessage]:
    model = track.model
    uplink = Uplink(rng, duplicate_rate=model.duplicate_rate)
    skew = timedelta(seconds=model.clock_skew)
    # Outages as (time, starts?) edges; events and fixes as (time, kind, data): one sorted walk.
    actions: list[tuple[datetime, int, str, Any]] = []
    for begin, finish, order in track.offline:
        actions.append((begin, 0, "offline", order))
        actions.append((finish, 0, "online", None))
    for when, event_type, attributes in track.events:
        actions.append((when, 1, "event", (event_type, attributes)))
    phase = track.setting(start, "ping_interval") * index / count
    at = start + phase
    while at <= end:
        actions.append((at, 2, "fix", None))
        at += track.setting(at, "ping_interval")
    actions.sort(key=lambda a: (a[0], a[1]))
    out: list[SimMessage] = []
    for when, _, kind, data in actions:
        if kind == "offline":
            uplink.burst_order = BurstOrder(data)
            uplink.lose_coverage()
            continue
        if kind == "online":
            uplink.regain_coverage(when)
            continue
        if track.is_silent(when):
            continue
        if kind == "event":
            event_type, attributes = data
            topic, payload = event_message(track.device_id, when + skew, event_type, attributes, tz)
        else:
            fix: Measurement = bounded_measurement(
                track.position(when), track.setting(when, "accuracy_m"),
                track.setting(when, "source"), rng,
            )
            topic, payload = location_message(
                track.device_id, model.protocol, when + skew, fix,
                track.setting(when, "battery_pct"), tz,
            )
        uplink.send(when, topic, payload)
    uplink.regain_coverage(end)
    out.extend(uplink.due(None))
    return out


# ---------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Observed:
    """One alert transition as published (wire form) and when it was decided.

    `decided_at` is the virtual clock when emon emitted it (offline), or None (live, where
    only the transition's own event time is known in scenario time)."""

    alert: Mapping[str, Any]
    decided_at: datetime | None

    @property
    def transition_at(self) -> datetime:
        return datetime.fromisoformat(str(self.alert["transition_at"]))


@dataclass(slots=True)
class Verdict:
    ok: bool
    label: str
    detail: str


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    mode: str
    verdicts: list[Verdict]
    observed: list[Observed]
    messages: int
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok]


def _clock(at: datetime | None, tz: ZoneInfo, origin: datetime) -> str:
    if at is None:
        return "?"
    local = at.astimezone(tz)
    days = (local.date() - origin.astimezone(tz).date()).days
    return f"{local:%H:%M:%S}" + (f" (day +{days})" if days else "")


def _describe_alert(observed: Observed, tz: ZoneInfo, origin: datetime) -> str:
    alert = observed.alert
    parts = [f"{alert.get('transition')} {alert.get('rule')}/{alert.get('tier')}",
             f"subject {alert.get('subject_id')}"]
    if alert.get("zone_id"):
        parts.append(f"zone {alert.get('zone_id')}")
    parts.append(f"at {_clock(observed.transition_at, tz, origin)}")
    if observed.decided_at is not None:
        parts.append(f"decided {_clock(observed.decided_at, tz, origin)}")
    return " ".join(parts)


def _delay(at: datetime, anchor: datetime) -> str:
    seconds = (at - anchor).total_seconds()
    sign = "-" if seconds < 0 else "+"
    minutes, secs = divmod(abs(round(seconds)), 60)
    return f"{sign}{minutes}m{secs:02d}s"


def evaluate(compiled: CompiledScenario, observed: Sequence[Observed]) -> list[Verdict]:
    """Compare observed transitions with the scenario's expectations; one verdict per line.

    An expectation is met by exactly `count` matching transitions whose event time is not
    before its anchor (the `after` step, else the start) and which were decided (offline) or
    took place (live) at most `within` after it."""
    model = compiled.scenario.model
    tz, origin = compiled.tz, compiled.start
    relevant = [o for o in observed if o.alert.get("subject_id") in compiled.subjects]
    used: set[int] = set()
    verdicts: list[Verdict] = []
    for expectation in model.expect:
        anchor = compiled.step_times[expectation.after] if expectation.after else origin
        deadline = anchor + expectation.within
        anchor_text = f"after '{expectation.after}'" if expectation.after else "after start"
        wanted = (
            f"{expectation.describe()} x{expectation.count} {anchor_text} "
            f"({_clock(anchor, tz, origin)}) within {expectation.within}"
            if expectation.count > 1 else
            f"{expectation.describe()} {anchor_text} ({_clock(anchor, tz, origin)}) "
            f"within {expectation.within}"
        )
        candidates = [i for i, o in enumerate(relevant)
                      if i not in used and expectation.matches(o.alert)]
        in_time = [
            i for i in candidates
            if relevant[i].transition_at >= anchor
            and (relevant[i].decided_at or relevant[i].transition_at) <= deadline
        ]
        if len(in_time) == expectation.count:
            used.update(in_time)
            first = relevant[in_time[0]]
            when = first.decided_at or first.transition_at
            verdicts.append(Verdict(True, "expected", f"{wanted}: "
                                    f"{_describe_alert(first, tz, origin)} "
                                    f"({_delay(when, anchor)})"))
            continue
        if len(in_time) > expectation.count:
            used.update(in_time)
            extra = "; ".join(_describe_alert(relevant[i], tz, origin) for i in in_time)
            verdicts.append(Verdict(False, "expected", f"{wanted}: {len(in_time)} found, "
                                    f"wanted {expectation.count}: {extra}"))
            continue
        used.update(in_time)
        late = [relevant[i] for i in candidates if i not in in_time]
        hint = ""
        if late:
            o = late[0]
            hint = (f"; closest: {_describe_alert(o, tz, origin)} "
                    f"({_delay(o.decided_at or o.transition_at, anchor)}, outside the window)")
        found = f"{len(in_time)} of {expectation.count} found" if in_time else "MISSING"
        verdicts.append(Verdict(False, "expected", f"{wanted}: {found}{hint}"))
    for pattern in model.not_expect:
        hits = [o for o in relevant if pattern.matches(o.alert)]
        if hits:
            verdicts.append(Verdict(False, "not expected", f"{pattern.describe()}: "
                                    + "; ".join(_describe_alert(o, tz, origin) for o in hits)))
        else:
            verdicts.append(Verdict(True, "not expected", f"{pattern.describe()}: none"))
    if model.strict:
        for index, o in enumerate(relevant):
            if index in used or o.alert.get("transition") not in RAISING_TRANSITIONS:
                continue
            if any(p.matches(o.alert) for p in model.not_expect):
                continue  # already reported above
            verdicts.append(Verdict(False, "unexpected", _describe_alert(o, tz, origin)))
    return verdicts


def run_offline(compiled: CompiledScenario, loaded: LoadedConfig) -> ScenarioResult:
    """Feed the scenario through the pure pipeline (as `emon replay` does), then evaluate."""
    tick = timedelta(seconds=loaded.settings.tick_interval_seconds)
    replayer = Replayer(loaded.core, tick.total_seconds())
    observed: list[Observed] = []
    clock: datetime | None = None

    def tick_until(until: datetime) -> None:
        nonlocal clock
        # Step the clock one tick at a time so each tick-driven transition gets its own time.
        if clock is None:
            clock = until
        while clock + tick <= until:
            clock += tick
            observed.extend(Observed(t.to_wire(), clock) for t in replayer.finish(clock))

    for message in compiled.messages:
        tick_until(message.at)
        transitions = replayer.feed(
            ReplayMessage(message.topic, encode_payload(message.payload), message.at)
        )
        observed.extend(Observed(t.to_wire(), message.at) for t in transitions)
    tick_until(compiled.end)
    verdicts = evaluate(compiled, observed)
    rejected = dict(replayer.stats.rejections)
    note = f"rejected by the decoder: {rejected}" if rejected else ""
    return ScenarioResult(compiled.scenario, "offline", verdicts, observed,
                          len(compiled.messages), note)


def format_result(result: ScenarioResult, verbose: bool = False) -> str:
    """A readable diff: `  ` met, `- ` expected but missing/wrong, `+ ` unexpected."""
    scenario = result.scenario
    status = "PASS" if result.passed else "FAIL"
    failed = len(result.failures())
    head = (f"{status} {scenario.name} [{result.mode}] ({scenario.path.name}): "
            f"{result.messages} messages, {len(result.observed)} alert transitions")
    if failed:
        head += f", {failed} problem(s)"
    lines = [head]
    for verdict in result.verdicts:
        if verdict.ok and not verbose and result.passed:
            continue
        marker = "  " if verdict.ok else ("+ " if verdict.label == "unexpected" else "- ")
        lines.append(f"  {marker}{verdict.label:<12} {verdict.detail}")
    if result.note and (verbose or not result.passed):
        lines.append(f"    note: {result.note}")
    return "\n".join(lines)


def result_json(result: ScenarioResult) -> dict[str, Any]:
    return {
        "scenario": result.scenario.name,
        "file": str(result.scenario.path),
        "rule": result.scenario.model.rule,
        "mode": result.mode,
        "passed": result.passed,
        "messages": result.messages,
        "verdicts": [{"ok": v.ok, "kind": v.label, "detail": v.detail} for v in result.verdicts],
        "alerts": [dict(o.alert) for o in result.observed],
    }


def dumps_line(result: ScenarioResult) -> str:
    return json.dumps(result_json(result), ensure_ascii=False, default=str)


def live_day(model: ScenarioModel, now: datetime) -> date:
    """The latest day on which the whole scenario lies in the past of `now` (live runs: the
    daemon refuses fixes from the future, and its rules need time of day kept)."""
    tz = ZoneInfo(model.timezone)
    day = now.astimezone(tz).date()
    start = _local(day, model.start, tz)
    # Shift whole days until the start is early enough that the end (<= 7 days on) is past.
    while start > now:
        day -= timedelta(days=1)
        start = _local(day, model.start, tz)
    return day


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
