"""Operator config files: load, validate whole, compile to the core's `CoreConfig`.

Layout of a config directory (config/README.md documents it for operators):
    settings.yaml     broker, database, HTTP, region, rule parameters (optional file)
    subjects.yaml     officers and subjects (devices, time zone, zones, curfew)
    schedules.yaml    named weekly schedules with exception dates
    leaves.yaml       approved leave (请假): subject, period, destination, route (optional file)
    zones/*.geojson   FeatureCollections with a declared "datum" (WGS-84, GCJ-02, BD-09)

Every problem is reported as one `ConfigProblem` (file, line, key, value, reason); loading
fails as a whole, so a half-valid directory never reaches the running daemon. Line numbers
come from `daemon.configlines` (found from the key path, so a new check only names its key);
the cross-file checks are in `daemon.configchecks`; warnings do not refuse a config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, time
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import shapely
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry

from daemon.behavioursettings import (
    BehaviourSettings,
    CoOffenderGroupModel,
    ProtectedPersonModel,
    check_behaviour,
    compile_behaviour,
)
from daemon.compliancesettings import (
    AuthorisationModel,
    CheckinModel,
    check_authorisation,
    compile_authorisation,
    compile_checkins,
)
from daemon.configlines import LazyLineIndex, LineIndex, join_path, json_line_index, parse_yaml
from daemon.configparse import ConfigParseError, load_json
from daemon.console.settings import ConsoleSettings
from daemon.policyfile import POLICIES_FILE, PoliciesFile, compile_alerting, reference_problems
from daemon.ratelimit import RateLimitSettings
from daemon.rulesettings import (
    SECONDS_PER_MINUTE,
    DeviceThresholdSettings,
    LeavesFile,
    RuleSettings,
    check_leaves,
    compile_leaves,
    compile_rule_params,
    compile_thresholds,
    kind_thresholds,
)
from daemon.rulesettings import Identifier as Identifier
from daemon.store.settings import RetentionSettings, StoreSettings
from daemon.strictmodel import StrictModel
from geofence.config import (
    CoreConfig,
    DeviceSpec,
    DeviceThresholds,
    ExclusionAssignment,
    InclusionAssignment,
    SubjectSpec,
)
from geofence.datum import Datum, convert_geometries_to_wgs84
from geofence.observation import DeviceKind
from geofence.schedule import Schedule, Window
from geofence.zones import LocalProjection, Zone, ZoneKind

SETTINGS_FILE = "settings.yaml"
SUBJECTS_FILE = "subjects.yaml"
SCHEDULES_FILE = "schedules.yaml"
LEAVES_FILE = "leaves.yaml"
ZONES_DIR = "zones"

ENV_MQTT_HOST = "EMON_MQTT_HOST"
ENV_MQTT_PORT = "EMON_MQTT_PORT"
ENV_DATABASE_URL = "EMON_DATABASE_URL"
# A file holding the database URL (a Docker or Kubernetes secret); EMON_DATABASE_URL wins.
ENV_DATABASE_URL_FILE = "EMON_DATABASE_URL_FILE"
ENV_HTTP_PORT = "EMON_HTTP_PORT"

# ---------------------------------------------------------------------- settings.yaml


class MqttSettings(StrictModel):
    host: str = Field("127.0.0.1", title="Broker host")
    port: int = Field(1883, ge=1, le=65535, title="Broker port")
    client_id: Identifier = Field("emon-daemon", title="MQTT client id (persistent session)")
    username: str | None = Field(None, title="Broker user name")
    password_env: str | None = Field(
        None, title="Environment variable that holds the broker password"
    )
    password_file: str | None = Field(
        None, max_length=4096,
        title="File that holds the broker password (a Docker or Kubernetes secret)",
    )
    tls_ca_file: Path | None = Field(
        None,
        title="CA certificate (PEM) to verify the broker by; set: connect over TLS "
        "(config/mosquitto/README.md), the host name must match the certificate",
    )
    keepalive_seconds: int = Field(30, ge=5, le=3600, title="MQTT keepalive")
    reconnect_max_seconds: float = Field(30.0, ge=1.0, le=600.0, title="Longest reconnect wait")

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttSettings:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        return self


def mqtt_password(mqtt: MqttSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The broker password from the environment or a secret file; None if none is set.
    OSError if the file cannot be read (the daemon then refuses to start)."""
    if mqtt.password_env is not None:
        return (os.environ if env is None else env).get(mqtt.password_env)
    if mqtt.password_file is not None:
        return Path(mqtt.password_file).read_text(encoding="utf-8").strip()
    return None


class DatabaseSettings(StrictModel):
    dsn: str | None = Field(
        None, title="libpq connection string; prefer EMON_DATABASE_URL for secrets"
    )


class HttpSettings(StrictModel):
    host: str = Field("127.0.0.1", title="Listen address for /metrics and the API")
    port: int = Field(9480, ge=0, le=65535, title="Listen port (0: pick a free port)")


class RegionSettings(StrictModel):
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


class ReloadSettings(StrictModel):
    poll_interval_seconds: float = Field(
        5.0, ge=0.0, le=3600.0,
        title="How often the config directory is checked for changes (0: only on SIGHUP)",
    )
    settle_seconds: float = Field(
        2.0, ge=0.0, le=600.0,
        title="Files must stay unchanged this long before a reload (copies write in steps)",
    )


class Settings(StrictModel):
    mqtt: MqttSettings = MqttSettings()
    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    region: RegionSettings | None = None
    rules: RuleSettings = RuleSettings()
    tick_interval_seconds: float = Field(
        15.0, ge=1.0, le=300.0, title="How often time-driven rules are re-evaluated"
    )
    reload: ReloadSettings = Field(ReloadSettings(), title="Hot reload of this directory")
    store: StoreSettings = Field(
        StoreSettings(), title="Ping store: memory buffer, journal, partitions, rollups"
    )
    retention: RetentionSettings = Field(
        RetentionSettings(), title="How long each kind of data is kept (days)"
    )
    console: ConsoleSettings = Field(ConsoleSettings(), title="Officer console (live map)")
    rate_limit: RateLimitSettings = Field(
        RateLimitSettings(), title="Request rate limits of the API and console (docs/access.md)"
    )
    # Issue 5 part B (daemon/behavioursettings.py).
    behaviour: BehaviourSettings = Field(
        BehaviourSettings(), title="Habits, gatherings and protected persons"
    )


# ---------------------------------------------------------------------- subjects.yaml


class OfficerRole(StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    COMMAND = "command"


class OfficerModel(StrictModel):
    id: Identifier
    name: str = Field(title="Display name")
    role: OfficerRole = OfficerRole.OFFICER
    supervisor: Identifier | None = Field(None, title="Officer id of the supervisor")


class DeviceModel(StrictModel):
    id: Identifier
    kind: DeviceKind


class ExclusionRef(StrictModel):
    zone: Identifier
    schedule: Identifier | None = Field(None, title="Schedule id; absent: always in force")
    approach_m: float = Field(
        0.0, ge=0.0, le=2000.0, title="Warning band outside the zone, metres (0: none)"
    )


class InclusionRef(StrictModel):
    zone: Identifier = Field(title="Inclusion zone id")
    schedule: Identifier = Field(title="Schedule id: the subject must be there while it is active")
    grace_minutes: float = Field(
        0.0, ge=0.0, le=720.0, title="Minutes after each window start before the rule applies"
    )


class SubjectModel(StrictModel):
    id: Identifier
    timezone: str = Field("Asia/Shanghai", title="IANA time zone for schedules")
    officer: Identifier = Field(title="Officer id in charge")
    devices: list[DeviceModel] = Field(min_length=1, title="Devices worn or carried")
    home_zone: Identifier | None = None
    permitted_zone: Identifier | None = Field(None, title="Area they may not leave (越界)")
    exclusion_zones: list[ExclusionRef] = Field(default_factory=list)
    curfew: Identifier | None = Field(None, title="Schedule id: at home while it is active")
    inclusion_zones: list[InclusionRef] = Field(
        default_factory=list, title="Places the subject must be at on a schedule (work)"
    )
    device_thresholds: dict[DeviceKind, DeviceThresholdSettings] = Field(
        default_factory=dict, title="Per device kind, thresholds replacing settings.yaml's"
    )
    # Issue 5 part A (daemon.compliancesettings).
    checkins: list[CheckinModel] = Field(
        default_factory=list, max_length=16, title="Scheduled check-ins (日常报告)"
    )
    authorisation: AuthorisationModel | None = Field(
        None, title="Legal basis and periods of electronic monitoring (Art. 29)"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: "Asia" names a directory of the tz database, not a zone (fuzzing).
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class SubjectsFile(StrictModel):
    officers: list[OfficerModel] = Field(default_factory=list)
    subjects: list[SubjectModel] = Field(default_factory=list)
    # Issue 5 part B (daemon/behavioursettings.py).
    co_offender_groups: list[CoOffenderGroupModel] = Field(
        default_factory=list, title="Co-offender groups watched for gatherings (同案犯聚集)"
    )
    protected_persons: list[ProtectedPersonModel] = Field(
        default_factory=list, title="Protected persons and the subjects kept away from them"
    )


# ---------------------------------------------------------------------- schedules.yaml

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


_LOCAL_TIME_PATTERN = r"^\d{1,2}:\d{2}(:\d{2})?$"
_LOCAL_TIME = re.compile(_LOCAL_TIME_PATTERN)
# JSON Schema's "format": "time" demands seconds and an offset ("22:00:00Z"): editors would
# flag every correct window, so the schema says what the loader accepts instead.
LocalTime = Annotated[time, WithJsonSchema({"type": "string", "pattern": _LOCAL_TIME_PATTERN})]


class WindowModel(StrictModel):
    start: LocalTime = Field(title="Local start time HH:MM")
    end: LocalTime = Field(title="Local end time HH:MM; not after start = crosses midnight")
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted_local_time(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted 22:00 as the sexagesimal number 1320, which pydantic
        # would take as 1320 seconds: a curfew at 00:22. Offsets make no sense either:
        # windows are in each subject's own time zone.
        if isinstance(v, time):
            return v
        if not isinstance(v, str):
            raise ValueError('write local times in quotes, e.g. "22:00" (unquoted, YAML '
                             "reads 22:00 as the number 1320)")
        if not _LOCAL_TIME.match(v):
            raise ValueError('a local time "HH:MM" or "HH:MM:SS" without offset (windows '
                             "are in the subject's time zone)")
        return v


class ScheduleModel(StrictModel):
    windows: list[WindowModel] = Field(min_length=1)
    exception_dates: list[date] = Field(default_factory=list, title="Dates with no window")


class SchedulesFile(StrictModel):
    schedules: dict[Identifier, ScheduleModel] = Field(default_factory=dict)


# ---------------------------------------------------------------------- zones/*.geojson


class ZoneProperties(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # GeoJSON tools add properties
    id: Identifier
    name: str = ""
    kind: ZoneKind


class ZoneGeometry(StrictModel):
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


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    key: str
    value: str
    reason: str
    line: int | None = None
    severity: Severity = "error"  # warnings are reported but do not refuse the config

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        value = f" = {self.value}" if self.value else ""
        label = "warning: " if self.severity == "warning" else ""
        return f"{where}: {label}{self.key}{value}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file, "line": self.line, "key": self.key, "value": self.value,
            "reason": self.reason, "severity": self.severity,
        }


class ProblemList(list[ConfigProblem]):
    """The errors found so far (the list itself), the warnings, and each file's line index.

    Checks append a problem with its file and key path; `located` fills in the line from
    the file's index, so a check never has to know where its key sits in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.warnings: list[ConfigProblem] = []
        self.lines: dict[str, LineIndex] = {}
        # Zones present in a file but refused (bad geometry): a reference to one is not
        # "undefined", and saying so would send the operator to the wrong file.
        self.refused_zones: set[str] = set()

    def warn(self, file: str, key: str, value: str, reason: str) -> None:
        self.warnings.append(ConfigProblem(file, key, value, reason, severity="warning"))

    def _locate(self, problem: ConfigProblem) -> ConfigProblem:
        index = self.lines.get(problem.file)
        if problem.line is not None or index is None:
            return problem
        return replace(problem, line=index.line_of(problem.key))

    def located(self) -> list[ConfigProblem]:
        return [self._locate(p) for p in self]

    def located_warnings(self) -> list[ConfigProblem]:
        return [self._locate(p) for p in self.warnings]


class ConfigError(Exception):
    """A config directory was refused: `problems` holds its errors, then its warnings."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        if isinstance(problems, ProblemList):
            problems = problems.located() + problems.located_warnings()
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems

    @property
    def errors(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.severity == "error"]


@dataclass(frozen=True)
class LoadedConfig:
    directory: Path
    settings: Settings
    subjects: SubjectsFile
    schedules: SchedulesFile
    core: CoreConfig
    policies: PoliciesFile = field(default_factory=PoliciesFile)
    warnings: tuple[ConfigProblem, ...] = ()
    leaves: LeavesFile = field(default_factory=LeavesFile)

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
    from daemon.configchecks import explain_validation_error

    return [
        ConfigProblem(
            file=file,
            key=join_path(e["loc"]),
            value=_short(e.get("input")) if e["type"] != "missing" else "",
            reason=explain_validation_error(file, e["loc"], e["type"], e["msg"]),
        )
        for e in error.errors()
    ]


def _read_yaml(path: Path, problems: list[ConfigProblem]) -> Any:
    try:
        document = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(ConfigProblem(path.name, "(file)", "", f"cannot read: {exc.strerror}"))
        return None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problems.append(ConfigProblem(path.name, "(yaml)", "", f"invalid YAML: {exc}", line))
        return None
    if isinstance(problems, ProblemList):
        problems.lines[path.name] = document.lines
    for duplicate in document.duplicate_keys:
        # PyYAML keeps the last of two equal keys without a word: half a file vanishes.
        problems.append(
            ConfigProblem(
                path.name, duplicate.path, "",
                f"duplicate key (first on line {duplicate.first_line}); YAML keeps only one",
                duplicate.line,
            )
        )
    return document.data or {}


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


def _load_zones(directory: Path, problems: ProblemList) -> list[_RawZone]:
    from daemon import configchecks

    zones: list[_RawZone] = []
    zone_dir = directory / ZONES_DIR
    paths = sorted(zone_dir.glob("*.geojson")) if zone_dir.is_dir() else []
    for path in paths:
        name = f"{ZONES_DIR}/{path.name}"
        try:
            text = path.read_text(encoding="utf-8")
            # Built only if a problem in this file needs a line (zone files are large).
            problems.lines[name] = LazyLineIndex(partial(json_line_index, text))
            # NaN/Infinity refused, nesting and over-long integers reported (fuzzing).
            data = load_json(text)
            parsed = ZoneFile.model_validate(data)
        except OSError as exc:
            problems.append(ConfigProblem(name, "(file)", "", f"cannot read: {exc.strerror}"))
            continue
        except UnicodeDecodeError as exc:
            problems.append(ConfigProblem(name, "(file)", "", f"not UTF-8: {exc.reason}"))
            continue
        except ConfigParseError as exc:
            problems.append(ConfigProblem(name, "(json)", "", exc.reason, exc.line))
            continue
        except ValidationError as exc:
            problems.extend(_validation_problems(name, exc))
            problems.refused_zones.update(configchecks.feature_ids(data))
            continue
        configchecks.check_zone_file_name(name, parsed.datum, problems)
        accepted: list[tuple[int, ZoneFeature, BaseGeometry]] = []
        for index, feature in enumerate(parsed.features):
            key = f"features.{index}.geometry"
            geojson = feature.geometry.model_dump()
            if not configchecks.check_coordinates(
                name, key, feature.properties.id, geojson, problems
            ):
                problems.refused_zones.add(feature.properties.id)
                continue
            try:
                geometry = shapely.geometry.shape(geojson)
                valid = geometry.is_valid
            except (ValueError, TypeError, AttributeError, IndexError, ShapelyError) as exc:
                problems.append(ConfigProblem(name, key, feature.properties.id, f"bad: {exc}"))
                problems.refused_zones.add(feature.properties.id)
                continue
            if geometry.is_empty:
                problems.append(ConfigProblem(name, key, feature.properties.id, "empty geometry"))
                problems.refused_zones.add(feature.properties.id)
                continue
            if not valid:
                # Says where, in the file's own datum, and which vertex is nearest.
                where, reason = configchecks.describe_invalid_polygon(geometry, parsed.datum)
                problems.append(ConfigProblem(name, key + where, feature.properties.id, reason))
                problems.refused_zones.add(feature.properties.id)
                continue
            accepted.append((index, feature, geometry))
        # One vectorised datum conversion per file, not one per zone (bench/: 10k zones).
        converted = convert_geometries_to_wgs84(parsed.datum, [g for _, _, g in accepted])
        zones.extend(
            _RawZone(name, index, feature.properties, wgs84)
            for (index, feature, _), wgs84 in zip(accepted, converted, strict=True)
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
    mqtt: dict[str, Any] = {}
    database: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if ENV_MQTT_HOST in env:
        mqtt["host"] = env[ENV_MQTT_HOST]
    if ENV_MQTT_PORT in env:
        mqtt["port"] = env[ENV_MQTT_PORT]
    if ENV_DATABASE_URL in env:
        database["dsn"] = env[ENV_DATABASE_URL]
    elif ENV_DATABASE_URL_FILE in env:
        try:
            dsn = Path(env[ENV_DATABASE_URL_FILE]).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ValueError(f"{ENV_DATABASE_URL_FILE}: cannot read: {reason}") from None
        database["dsn"] = dsn
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


def _check_subject_rules(
    where: str,
    subject: SubjectModel,
    zone_ref: Callable[[str, str | None, ZoneKind], None],
    schedule_ref: Callable[[str, str | None], None],
    kinds: Mapping[DeviceKind, DeviceThresholds],
) -> list[ConfigProblem]:
    """Scheduled inclusions, one role per zone, and thresholds that stay ordered once a
    subject's overrides are merged over the kind's."""
    problems: list[ConfigProblem] = []
    roles: dict[str, str] = {}
    for key, zone_id in (("home_zone", subject.home_zone),
                         ("permitted_zone", subject.permitted_zone)):
        if zone_id is not None:
            roles.setdefault(zone_id, key)
    for i_index, ref in enumerate(subject.inclusion_zones):
        key = f"{where}.inclusion_zones.{i_index}"
        zone_ref(f"{key}.zone", ref.zone, ZoneKind.INCLUSION)
        schedule_ref(f"{key}.schedule", ref.schedule)
        first = roles.setdefault(ref.zone, f"inclusion_zones.{i_index}")
        if first != f"inclusion_zones.{i_index}":
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE, f"{key}.zone", ref.zone, f"zone already used as {first}"
                )
            )
    for kind, given in subject.device_thresholds.items():
        merged = compile_thresholds(kinds[kind], given)
        low, critical = merged.battery_low_pct, merged.battery_critical_pct
        if low is not None and critical is not None and critical >= low:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE, f"{where}.device_thresholds.{kind.value}", "",
                    f"battery_critical_pct {critical:g} must be below battery_low_pct {low:g}",
                )
            )
    return problems


def load_config(directory: Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate a whole config directory, or raise `ConfigError` with every problem."""
    from daemon import configchecks

    problems = ProblemList()
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), "(dir)", "", "not a directory")])
    settings = _parse(Settings, directory / SETTINGS_FILE, problems, required=False)
    subjects = _parse(SubjectsFile, directory / SUBJECTS_FILE, problems, required=True)
    schedules = _parse(SchedulesFile, directory / SCHEDULES_FILE, problems, required=False)
    policies = _parse(PoliciesFile, directory / POLICIES_FILE, problems, required=False)
    leaves = _parse(LeavesFile, directory / LEAVES_FILE, problems, required=False)
    raw_zones = _load_zones(directory, problems)
    if schedules is not None:
        configchecks.check_schedules(schedules, problems)
    if (
        settings is None
        or subjects is None
        or schedules is None
        or policies is None
        or leaves is None
    ):
        raise ConfigError(problems)
    environment = os.environ if env is None else env
    officer_roles = {o.id: (o.role.value, o.supervisor) for o in subjects.officers}
    problems.extend(
        ConfigProblem(POLICIES_FILE, key, value, reason)
        for key, value, reason in reference_problems(
            policies, officer_roles, {s.id: s.officer for s in subjects.subjects}, environment
        )
    )
    try:
        settings = _apply_env(settings, environment)
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
    seen_officers: set[str] = set()
    for index, officer in enumerate(subjects.officers):
        if officer.id in seen_officers:
            problems.append(
                ConfigProblem(SUBJECTS_FILE, f"officers.{index}.id", officer.id,
                              "duplicate officer id")
            )
        seen_officers.add(officer.id)
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
    kinds = kind_thresholds(settings.rules)

    def zone_ref(where: str, zone_id: str | None, kind: ZoneKind) -> None:
        if zone_id is None:
            return
        raw = zones_by_id.get(zone_id)
        if raw is None:
            reason = (
                "zone refused (see the problem in its zone file)"
                if zone_id in problems.refused_zones
                else "zone not defined"
            )
            problems.append(ConfigProblem(SUBJECTS_FILE, where, zone_id, reason))
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
        problems.extend(_check_subject_rules(where, subject, zone_ref, schedule_ref, kinds))
        if subject.authorisation is not None:  # issue 5 part A: Art. 29 periods
            for key, value, reason, severity in check_authorisation(subject.authorisation):
                if severity == "warning":
                    problems.warn(SUBJECTS_FILE, f"{where}.{key}", value, reason)
                else:
                    problems.append(ConfigProblem(SUBJECTS_FILE, f"{where}.{key}", value, reason))

    region = settings.region

    def in_region(lon: float, lat: float) -> bool:
        if region is None:
            return True
        lon_min, lat_min, lon_max, lat_max = region.bbox
        return lon_min <= lon <= lon_max and lat_min <= lat <= lat_max

    zone_kinds = {zid: raw.properties.kind for zid, raw in zones_by_id.items()}
    problems.extend(
        ConfigProblem(LEAVES_FILE, key, value, reason)
        for key, value, reason in check_leaves(
            leaves, seen_subjects, set(officers), zone_kinds, in_region
        )
    )

    problems.extend(  # issue 5 part B
        ConfigProblem(SUBJECTS_FILE, key, value, reason)
        for key, value, reason in check_behaviour(
            subjects.co_offender_groups, subjects.protected_persons, seen_subjects
        )
    )
    configchecks.check_cross_file(settings, subjects, schedules, zones_by_id, problems, leaves)
    if problems:
        raise ConfigError(problems)

    projection = LocalProjection.centred_on(r.geometry for r in zones_by_id.values())
    zones = {
        zid: Zone.build(
            zid, raw.properties.name or zid, raw.properties.kind, raw.geometry, projection
        )
        for zid, raw in zones_by_id.items()
    }
    leave_specs = compile_leaves(
        leaves, zones, {s.id: s.permitted_zone for s in subjects.subjects}, projection
    )
    subject_specs = {
        s.id: SubjectSpec(
            subject_id=s.id,
            timezone=ZoneInfo(s.timezone),
            officer_id=s.officer,
            devices=tuple(DeviceSpec(d.id, d.kind, s.id) for d in s.devices),
            home_zone_id=s.home_zone,
            permitted_zone_id=s.permitted_zone,
            exclusions=tuple(
                ExclusionAssignment(
                    e.zone, compiled_schedules[e.schedule] if e.schedule else None, e.approach_m
                )
                for e in s.exclusion_zones
            ),
            curfew=compiled_schedules[s.curfew] if s.curfew else None,
            inclusions=tuple(
                InclusionAssignment(
                    i.zone, compiled_schedules[i.schedule], i.grace_minutes * SECONDS_PER_MINUTE
                )
                for i in s.inclusion_zones
            ),
            leaves=leave_specs.get(s.id, ()),
            device_thresholds={
                kind: compile_thresholds(kinds[kind], given)
                for kind, given in s.device_thresholds.items()
            },
            checkins=compile_checkins(s.checkins, settings.rules.checkin.grace_minutes),
            authorisation=compile_authorisation(s.authorisation, ZoneInfo(s.timezone)),
        )
        for s in subjects.subjects
    }
    core = CoreConfig(
        version=_fingerprint(directory),
        projection=projection,
        zones=zones,
        subjects=subject_specs,
        rules=compile_rule_params(settings.rules),
        alerting=compile_alerting(policies, officer_roles),
        behaviour=compile_behaviour(
            settings.behaviour, subjects.co_offender_groups, subjects.protected_persons
        ),
    )
    return LoadedConfig(
        directory, settings, subjects, schedules, core, policies,
        tuple(problems.located_warnings()), leaves,
    )
