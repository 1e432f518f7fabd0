"""Operator config files: load, validate whole, compile to the core's `CoreConfig`.

Layout of a config directory (config/README.md documents it for operators):
    settings.yaml     broker, database, HTTP, region, rule parameters (optional file)
    subjects.yaml     officers and subjects (devices, time zone, zones, curfew)
    schedules.yaml    named weekly schedules with exception dates
    zones/*.geojson   FeatureCollections with a declared "datum" (WGS-84, GCJ-02, BD-09)

Every problem is reported as one `ConfigProblem` (file, key, value, reason); loading fails
as a whole, so a half-valid directory never reaches the running daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import shapely
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from alerts.model import RuleId, Tier
from daemon.configparse import (
    ConfigParseError,
    check_coordinates,
    decode_utf8,
    load_json,
    load_yaml,
)
from geofence.config import (
    DEFAULT_DWELL_FIXES,
    DEFAULT_DWELL_SECONDS,
    DEFAULT_MARGIN_M,
    DEFAULT_MAX_ACCURACY_M,
    DEFAULT_MAX_SPEED_MPS,
    CoreConfig,
    DeviceSpec,
    ExclusionAssignment,
    RuleParams,
    SubjectSpec,
    ZoneRuleParams,
)
from geofence.datum import Datum, convert_geometry_to_wgs84
from geofence.observation import DeviceKind
from geofence.schedule import Schedule, Window
from geofence.zones import LocalProjection, Zone, ZoneKind

SETTINGS_FILE = "settings.yaml"
SUBJECTS_FILE = "subjects.yaml"
SCHEDULES_FILE = "schedules.yaml"
ZONES_DIR = "zones"

ENV_MQTT_HOST = "EMON_MQTT_HOST"
ENV_MQTT_PORT = "EMON_MQTT_PORT"
ENV_DATABASE_URL = "EMON_DATABASE_URL"
ENV_HTTP_PORT = "EMON_HTTP_PORT"

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------- settings.yaml


class MqttSettings(_Strict):
    host: str = Field("127.0.0.1", title="Broker host")
    port: int = Field(1883, ge=1, le=65535, title="Broker port")
    client_id: Identifier = Field("emon-daemon", title="MQTT client id (persistent session)")
    username: str | None = Field(None, title="Broker user name")
    password_env: str | None = Field(
        None, title="Environment variable that holds the broker password"
    )
    tls_ca_file: Path | None = Field(
        None,
        title="CA certificate (PEM) to verify the broker by; set: connect over TLS "
        "(config/mosquitto/README.md), the host name must match the certificate",
    )
    keepalive_seconds: int = Field(30, ge=5, le=3600, title="MQTT keepalive")
    reconnect_max_seconds: float = Field(30.0, ge=1.0, le=600.0, title="Longest reconnect wait")


class DatabaseSettings(_Strict):
    dsn: str | None = Field(
        None, title="libpq connection string; prefer EMON_DATABASE_URL for secrets"
    )


class HttpSettings(_Strict):
    host: str = Field("127.0.0.1", title="Listen address for /metrics and the API")
    port: int = Field(9480, ge=0, le=65535, title="Listen port (0: pick a free port)")


class RegionSettings(_Strict):
    name: str = Field(title="Region name, for messages")
    bbox: tuple[float, float, float, float] = Field(
        title="lon_min, lat_min, lon_max, lat_max (WGS-84); zones outside are refused"
    )

    @field_validator("bbox")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        lon_min, lat_min, lon_max, lat_max = v
        if not (-180 <= lon_min < lon_max <= 180 and -90 <= lat_min < lat_max <= 90):
            raise ValueError("bbox must be lon_min < lon_max, lat_min < lat_max, in range")
        return v


class ZoneRuleSettings(_Strict):
    margin_m: float = Field(DEFAULT_MARGIN_M, ge=0, le=1000, title="Noise margin at edges")
    dwell_fixes: int = Field(DEFAULT_DWELL_FIXES, ge=1, le=20, title="Fixes to confirm")
    dwell_seconds: float = Field(DEFAULT_DWELL_SECONDS, ge=0, le=3600, title="Time to confirm")
    max_accuracy_m: float = Field(
        DEFAULT_MAX_ACCURACY_M, gt=0, le=5000, title="Least precise fix that can place inside"
    )


class RuleSettings(_Strict):
    zone: ZoneRuleSettings = ZoneRuleSettings()
    max_speed_mps: float = Field(
        DEFAULT_MAX_SPEED_MPS, gt=0, le=400, title="Faster jumps are outliers"
    )
    tiers: dict[RuleId, Tier] = Field(default_factory=dict, title="Tier overrides per rule")


class Settings(_Strict):
    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    region: RegionSettings | None = None
    rules: RuleSettings = RuleSettings()
    tick_interval_seconds: float = Field(
        15.0, ge=1.0, le=300.0, title="How often time-driven rules are re-evaluated"
    )


# ---------------------------------------------------------------------- subjects.yaml


class OfficerRole(StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    COMMAND = "command"


class OfficerModel(_Strict):
    id: Identifier
    name: str = Field(title="Display name")
    role: OfficerRole = OfficerRole.OFFICER
    supervisor: Identifier | None = Field(None, title="Officer id of the supervisor")


class DeviceModel(_Strict):
    id: Identifier
    kind: DeviceKind


class ExclusionRef(_Strict):
    zone: Identifier
    schedule: Identifier | None = Field(None, title="Schedule id; absent: always in force")


class SubjectModel(_Strict):
    id: Identifier
    timezone: str = Field("Asia/Shanghai", title="IANA time zone for schedules")
    officer: Identifier = Field(title="Officer id in charge")
    devices: list[DeviceModel] = Field(min_length=1, title="Devices worn or carried")
    home_zone: Identifier | None = None
    permitted_zone: Identifier | None = Field(None, title="Area they may not leave (越界)")
    exclusion_zones: list[ExclusionRef] = Field(default_factory=list)
    curfew: Identifier | None = Field(None, title="Schedule id: at home while it is active")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: "Asia" names a directory of the tz database, not a zone (fuzzing).
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class SubjectsFile(_Strict):
    officers: list[OfficerModel] = Field(default_factory=list)
    subjects: list[SubjectModel] = Field(default_factory=list)


# ---------------------------------------------------------------------- schedules.yaml

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WindowModel(_Strict):
    start: time = Field(title="Local start time HH:MM")
    end: time = Field(title="Local end time HH:MM; not after start = crosses midnight")
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)


class ScheduleModel(_Strict):
    windows: list[WindowModel] = Field(min_length=1)
    exception_dates: list[date] = Field(default_factory=list, title="Dates with no window")


class SchedulesFile(_Strict):
    schedules: dict[Identifier, ScheduleModel] = Field(default_factory=dict)


# ---------------------------------------------------------------------- zones/*.geojson


class ZoneProperties(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # GeoJSON tools add properties
    id: Identifier
    name: str = ""
    kind: ZoneKind


class ZoneGeometry(_Strict):
    type: Literal["Polygon", "MultiPolygon"]
    coordinates: list[Any]


class ZoneFeature(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["Feature"]
    properties: ZoneProperties
    geometry: ZoneGeometry


class ZoneFile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    type: Literal["FeatureCollection"]
    datum: Datum = Field(title="Datum of the coordinates; converted to WGS-84 on load")
    features: list[ZoneFeature]


# ---------------------------------------------------------------------- loading

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    key: str
    value: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        value = f" = {self.value}" if self.value else ""
        return f"{where}: {self.key}{value}: {self.reason}"


class ConfigError(Exception):
    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedConfig:
    directory: Path
    settings: Settings
    subjects: SubjectsFile
    schedules: SchedulesFile
    core: CoreConfig

    @property
    def officers(self) -> Mapping[str, OfficerModel]:
        return {o.id: o for o in self.subjects.officers}


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (ValueError, RecursionError):  # a structure too deep to print
        text = reprlib.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validation_problems(file: str, error: ValidationError) -> list[ConfigProblem]:
    return [
        ConfigProblem(
            file=file,
            key=".".join(str(p) for p in e["loc"]) or "(top)",
            value=_short(e.get("input")) if e["type"] != "missing" else "",
            reason=e["msg"],
        )
        for e in error.errors()
    ]


def _read_yaml(path: Path, problems: list[ConfigProblem]) -> Any:
    try:
        return load_yaml(decode_utf8(path.read_bytes())) or {}
    except OSError as exc:
        problems.append(ConfigProblem(path.name, "(file)", "", f"cannot read: {exc.strerror}"))
    except ConfigParseError as exc:
        problems.append(ConfigProblem(path.name, "(yaml)", "", exc.reason, exc.line))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problems.append(ConfigProblem(path.name, "(yaml)", "", f"invalid YAML: {exc}", line))
    return None


def _parse(
    model: type[_M], path: Path, problems: list[ConfigProblem], *, required: bool
) -> _M | None:
    if not path.exists():
        if required:
            problems.append(ConfigProblem(path.name, "(file)", "", "missing"))
            return None
        return model()
    data = _read_yaml(path, problems)
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_validation_problems(path.name, exc))
        return None


@dataclass(frozen=True, slots=True)
class _RawZone:
    file: str
    index: int
    properties: ZoneProperties
    geometry: BaseGeometry  # WGS-84


def _load_zones(directory: Path, problems: list[ConfigProblem]) -> list[_RawZone]:
    zones: list[_RawZone] = []
    zone_dir = directory / ZONES_DIR
    paths = sorted(zone_dir.glob("*.geojson")) if zone_dir.is_dir() else []
    for path in paths:
        name = f"{ZONES_DIR}/{path.name}"
        try:
            data = load_json(decode_utf8(path.read_bytes()))
            parsed = ZoneFile.model_validate(data)
        except OSError as exc:
            problems.append(ConfigProblem(name, "(file)", "", f"cannot read: {exc.strerror}"))
            continue
        except ConfigParseError as exc:
            problems.append(ConfigProblem(name, "(json)", "", exc.reason, exc.line))
            continue
        except ValidationError as exc:
            problems.extend(_validation_problems(name, exc))
            continue
        for index, feature in enumerate(parsed.features):
            key = f"features.{index}.geometry"
            try:
                check_coordinates(feature.geometry.coordinates)
                geometry = shapely.geometry.shape(feature.geometry.model_dump())
                valid = geometry.is_valid
            except ConfigParseError as exc:
                problems.append(ConfigProblem(name, key, feature.properties.id, exc.reason))
                continue
            except (ValueError, TypeError, AttributeError, IndexError, ShapelyError) as exc:
                problems.append(ConfigProblem(name, key, feature.properties.id, f"bad: {exc}"))
                continue
            if geometry.is_empty:
                problems.append(ConfigProblem(name, key, feature.properties.id, "empty geometry"))
                continue
            if not valid:
                # explain_validity says where: "Self-intersection[114.05 22.54]".
                problems.append(
                    ConfigProblem(
                        name,
                        key,
                        feature.properties.id,
                        f"invalid polygon: {explain_validity(geometry)}",
                    )
                )
                continue
            zones.append(
                _RawZone(
                    name,
                    index,
                    feature.properties,
                    convert_geometry_to_wgs84(parsed.datum, geometry),
                )
            )
    return zones


def _check_region(
    raw: _RawZone, region: RegionSettings | None, problems: list[ConfigProblem]
) -> None:
    if region is None:
        return
    lon_min, lat_min, lon_max, lat_max = region.bbox
    b = raw.geometry.bounds
    if lon_min <= b[0] and b[2] <= lon_max and lat_min <= b[1] and b[3] <= lat_max:
        return
    swapped = lon_min <= b[1] and b[3] <= lon_max and lat_min <= b[0] and b[2] <= lat_max
    reason = (
        "latitude and longitude look swapped (GeoJSON order is [lon, lat])"
        if swapped
        else f"lies outside region {region.name} {list(region.bbox)}"
    )
    problems.append(
        ConfigProblem(raw.file, f"features.{raw.index}.geometry", raw.properties.id, reason)
    )


def _compile_schedule(schedule_id: str, model: ScheduleModel) -> Schedule:
    windows = tuple(
        Window(w.start, w.end, frozenset(WEEKDAYS.index(d) for d in w.days)) for w in model.windows
    )
    return Schedule(schedule_id, windows, frozenset(model.exception_dates))


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    # Validated like the file (a port of 99999 or -5 is refused, not carried to a bind).
    mqtt, database, http = {}, {}, {}
    if ENV_MQTT_HOST in env:
        mqtt["host"] = env[ENV_MQTT_HOST]
    if ENV_MQTT_PORT in env:
        mqtt["port"] = env[ENV_MQTT_PORT]
    if ENV_DATABASE_URL in env:
        database["dsn"] = env[ENV_DATABASE_URL]
    if ENV_HTTP_PORT in env:
        http["port"] = env[ENV_HTTP_PORT]
    return settings.model_copy(
        update={
            "mqtt": MqttSettings.model_validate({**settings.mqtt.model_dump(), **mqtt}),
            "database": DatabaseSettings.model_validate(
                {**settings.database.model_dump(), **database}
            ),
            "http": HttpSettings.model_validate({**settings.http.model_dump(), **http}),
        }
    )


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml", ".geojson"):
            digest.update(str(path.relative_to(directory)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def load_config(directory: Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a whole config directory, or raise `ConfigError` with every problem."""
    problems: list[ConfigProblem] = []
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), "(dir)", "", "not a directory")])
    settings = _parse(Settings, directory / SETTINGS_FILE, problems, required=False)
    subjects = _parse(SubjectsFile, directory / SUBJECTS_FILE, problems, required=True)
    schedules = _parse(SchedulesFile, directory / SCHEDULES_FILE, problems, required=False)
    raw_zones = _load_zones(directory, problems)
    if settings is None or subjects is None or schedules is None:
        raise ConfigError(problems)
    try:
        settings = _apply_env(settings, os.environ if env is None else env)
    except (ValueError, ValidationError) as exc:
        problems.append(ConfigProblem("(environment)", "EMON_*", "", str(exc)))

    zones_by_id: dict[str, _RawZone] = {}
    for raw in raw_zones:
        _check_region(raw, settings.region, problems)
        if raw.properties.id in zones_by_id:
            first = zones_by_id[raw.properties.id]
            problems.append(
                ConfigProblem(
                    raw.file,
                    f"features.{raw.index}.properties.id",
                    raw.properties.id,
                    f"duplicate zone id (first in {first.file})",
                )
            )
        else:
            zones_by_id[raw.properties.id] = raw

    officers = {o.id: o for o in subjects.officers}
    for index, officer in enumerate(subjects.officers):
        if officer.supervisor is not None and officer.supervisor not in officers:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE,
                    f"officers.{index}.supervisor",
                    officer.supervisor,
                    "officer not defined",
                )
            )
    compiled_schedules = {
        sid: _compile_schedule(sid, model) for sid, model in schedules.schedules.items()
    }
    seen_devices: dict[str, str] = {}
    seen_subjects: set[str] = set()

    def zone_ref(where: str, zone_id: str | None, kind: ZoneKind) -> None:
        if zone_id is None:
            return
        raw = zones_by_id.get(zone_id)
        if raw is None:
            problems.append(ConfigProblem(SUBJECTS_FILE, where, zone_id, "zone not defined"))
        elif raw.properties.kind is not kind:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE,
                    where,
                    zone_id,
                    f"zone is {raw.properties.kind.value}, expected {kind.value}",
                )
            )

    def schedule_ref(where: str, schedule_id: str | None) -> None:
        if schedule_id is not None and schedule_id not in compiled_schedules:
            problems.append(
                ConfigProblem(SUBJECTS_FILE, where, schedule_id, "schedule not defined")
            )

    for index, subject in enumerate(subjects.subjects):
        where = f"subjects.{index}"
        if subject.id in seen_subjects:
            problems.append(
                ConfigProblem(SUBJECTS_FILE, f"{where}.id", subject.id, "duplicate subject id")
            )
        seen_subjects.add(subject.id)
        if subject.officer not in officers:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE, f"{where}.officer", subject.officer, "officer not defined"
                )
            )
        for d_index, device in enumerate(subject.devices):
            owner = seen_devices.setdefault(device.id, subject.id)
            if owner != subject.id or sum(d.id == device.id for d in subject.devices) > 1:
                problems.append(
                    ConfigProblem(
                        SUBJECTS_FILE,
                        f"{where}.devices.{d_index}.id",
                        device.id,
                        f"device already assigned to {owner}",
                    )
                )
        zone_ref(f"{where}.home_zone", subject.home_zone, ZoneKind.INCLUSION)
        zone_ref(f"{where}.permitted_zone", subject.permitted_zone, ZoneKind.INCLUSION)
        for e_index, ref in enumerate(subject.exclusion_zones):
            zone_ref(f"{where}.exclusion_zones.{e_index}.zone", ref.zone, ZoneKind.EXCLUSION)
            schedule_ref(f"{where}.exclusion_zones.{e_index}.schedule", ref.schedule)
        schedule_ref(f"{where}.curfew", subject.curfew)
        if subject.curfew is not None and subject.home_zone is None:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE, f"{where}.curfew", subject.curfew, "a curfew needs a home_zone"
                )
            )

    if problems:
        raise ConfigError(problems)

    projection = LocalProjection.centred_on(r.geometry for r in zones_by_id.values())
    zones = {
        zid: Zone.build(
            zid, raw.properties.name or zid, raw.properties.kind, raw.geometry, projection
        )
        for zid, raw in zones_by_id.items()
    }
    subject_specs = {
        s.id: SubjectSpec(
            subject_id=s.id,
            timezone=ZoneInfo(s.timezone),
            officer_id=s.officer,
            devices=tuple(DeviceSpec(d.id, d.kind, s.id) for d in s.devices),
            home_zone_id=s.home_zone,
            permitted_zone_id=s.permitted_zone,
            exclusions=tuple(
                ExclusionAssignment(e.zone, compiled_schedules[e.schedule] if e.schedule else None)
                for e in s.exclusion_zones
            ),
            curfew=compiled_schedules[s.curfew] if s.curfew else None,
        )
        for s in subjects.subjects
    }
    rules = settings.rules
    core = CoreConfig(
        version=_fingerprint(directory),
        projection=projection,
        zones=zones,
        subjects=subject_specs,
        rules=RuleParams(
            zone=ZoneRuleParams(
                margin_m=rules.zone.margin_m,
                dwell_fixes=rules.zone.dwell_fixes,
                dwell_seconds=rules.zone.dwell_seconds,
                max_accuracy_m=rules.zone.max_accuracy_m,
            ),
            max_speed_mps=rules.max_speed_mps,
            tiers={**RuleParams().tiers, **rules.tiers},
        ),
    )
    return LoadedConfig(directory, settings, subjects, schedules, core)
