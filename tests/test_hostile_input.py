"""Hostile input, fuzzed with hypothesis: the payload decoder through the pipeline, and the
config loader over mutated files. Nothing may crash (only WireError / ConfigError), every
refusal is counted by reason, and whatever is accepted can be carried on: stored as jsonb
and published as UTF-8 JSON.

tests/test_wire.py fuzzes the decoder with well-formed JSON values; this file adds JSON
text no encoder would write (1e400, NaN, 400-digit integers, escaped U+0000 and lone
surrogates, deep nesting, invalid UTF-8 inside strings) and the counting and carrying
properties. Directed regression tests name the crashes the fuzzing found.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.configfiles import ConfigError, LoadedConfig, load_config
from daemon.configparse import MAX_ALIAS_EXPANDED_NODES
from daemon.pipeline import Pipeline
from daemon.store._json import dumps as store_json
from daemon.store.writer import encode as store_encode
from daemon.wire import MAX_JSON_DEPTH, MAX_PAYLOAD_BYTES, RejectReason, WireError, decode
from geofence.observation import LocationFix
from tests.core_helpers import DEVICE, SUBJECT, lonlat, make_config

NOW = datetime(2026, 11, 20, 2, 0, 0, tzinfo=UTC)
LOC = f"emon/v1/devices/{DEVICE}/location"
EVT = f"emon/v1/devices/{DEVICE}/event"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
HOME_LON, HOME_LAT = lonlat(-1000.0, -1000.0)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def good_fields(**changes: Any) -> dict[str, Any]:
    return {"ts": NOW.isoformat(), "lat": HOME_LAT, "lon": HOME_LON, "acc": 5.0, **changes}


def assert_carriable(pipeline: Pipeline, topic: str, raw: bytes) -> None:
    """Handle one message: a refusal is counted once under its reason; an acceptance is
    storable by the writer and publishable, with its alerts, as UTF-8 JSON that
    PostgreSQL's jsonb takes (no NaN, no U+0000)."""
    before = Counter(pipeline.rejections)
    outcome = pipeline.handle(topic, raw, NOW)
    if outcome.rejection is not None:
        assert isinstance(outcome.rejection.reason, RejectReason)
        assert pipeline.rejections - before == Counter({outcome.rejection.reason: 1})
        assert outcome.observation is None
        assert outcome.transitions == []
        return
    assert pipeline.rejections == before
    observation = outcome.observation
    assert observation is not None
    assert outcome.subject_id == SUBJECT
    store_encode(observation, SUBJECT)  # raises InvalidRowError if the store would refuse
    documents: list[Any] = [observation.to_wire(), *(t.to_wire() for t in outcome.transitions)]
    documents.append(
        observation.extra if isinstance(observation, LocationFix) else observation.attributes
    )
    for document in documents:
        text = store_json(document)  # allow_nan=False: raises on NaN and infinity
        assert "\\u0000" not in text
        json.dumps(document, ensure_ascii=False).encode("utf-8")  # as the daemon publishes


# ---------------------------------------------------------------------- JSON text strategies

# Number literals that parse in Python yet break something downstream, and edge values.
NUMBER_LITERALS = [
    "1e400", "-1e400", "1E309", "NaN", "Infinity", "-Infinity", "1" + "0" * 400, "-0",
    "1e-400", "0", "90", "-90.0000001", "180.0000001", "100000.1", "4.9e-324",
]  # fmt: skip
hostile_char = st.one_of(
    st.characters(),  # includes U+0000 and other controls
    st.characters(categories=["Cs"]),  # lone surrogates: only reachable via \ud8xx escapes
    st.sampled_from(["\x00", "\ud800", "\udfff", "\u2028", "\ufeff"]),
)
string_literal = st.text(hostile_char, max_size=12).map(json.dumps)  # ASCII-escaped JSON
scalar_literal = st.one_of(
    st.sampled_from(NUMBER_LITERALS),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    string_literal,
    st.sampled_from(["true", "false", "null"]),
)
nested_literal = st.integers(1, 3 * MAX_JSON_DEPTH).map(lambda n: "[" * n + "1" + "]" * n)
json_literal = st.recursive(
    st.one_of(scalar_literal, nested_literal),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(string_literal, inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=10,
)
ts_literal = st.one_of(
    st.just(json.dumps(NOW.isoformat())),
    st.floats(NOW.timestamp() - 40 * 86400, NOW.timestamp() + 3600).map(repr),
    json_literal,
)


@st.composite
def message_text(draw: st.DrawFn) -> tuple[str, bytes]:
    """A device message whose known fields are mostly valid, with hostile extras, and
    sometimes a byte that breaks UTF-8 inside it."""
    channel = draw(st.sampled_from(["location", "event"]))
    fields: dict[str, str] = {"ts": draw(ts_literal)}
    if channel == "location":
        for key, good in (("lat", HOME_LAT), ("lon", HOME_LON), ("acc", 5.0)):
            fields[key] = draw(st.one_of(st.just(repr(good)), json_literal))
    else:
        fields["type"] = draw(
            st.one_of(st.sampled_from(['"strap_open"', '"checkin"']), json_literal)
        )
    extras = draw(st.lists(st.tuples(string_literal, json_literal), max_size=4))
    body = ",".join([*(f'"{k}":{v}' for k, v in fields.items()), *(f"{k}:{v}" for k, v in extras)])
    raw = ("{" + body + "}").encode("utf-8")
    if draw(st.booleans()) and raw:
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(0x80, 0xFF))]) + raw[at:]
    return f"emon/v1/devices/{DEVICE}/{channel}", raw


@FUZZ
@given(messages=st.lists(message_text(), min_size=1, max_size=6))
def test_fuzz_hostile_json_text_is_refused_by_reason_or_carriable(
    messages: list[tuple[str, bytes]],
) -> None:
    pipeline = Pipeline(make_config())
    for topic, raw in messages:
        assert_carriable(pipeline, topic, raw)
    assert sum(pipeline.rejections.values()) <= len(messages)


@settings(max_examples=150, deadline=None)
@given(
    topic=st.one_of(
        st.sampled_from([LOC, EVT, "emon/v1/devices/stranger/location"]),
        st.text(max_size=40).map(lambda t: f"emon/v1/devices/{t}/location"),
    ),
    raw=st.binary(max_size=200),
)
def test_fuzz_any_bytes_on_any_topic_are_counted(topic: str, raw: bytes) -> None:
    pipeline = Pipeline(make_config())
    assert_carriable(pipeline, topic, raw)
    assert_carriable(pipeline, topic, json.dumps(good_fields()).encode())


# ---------------------------------------------------------------------- decoder limits


def reason(topic: str, raw: bytes) -> RejectReason | None:
    try:
        decode(topic, raw, NOW)
    except WireError as error:
        return error.reason
    return None


def test_payload_size_limit_is_exact() -> None:
    base = json.dumps(good_fields(pad="")).encode()
    padded = json.dumps(good_fields(pad="p" * (MAX_PAYLOAD_BYTES - len(base)))).encode()
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert reason(LOC, padded) is None
    too_big = json.dumps(good_fields(pad="p" * (MAX_PAYLOAD_BYTES - len(base) + 1))).encode()
    assert reason(LOC, too_big) is RejectReason.PAYLOAD_TOO_LARGE


def test_nesting_depth_limit_is_exact() -> None:
    # The top-level object is depth 1, so MAX_JSON_DEPTH - 1 brackets just fit.
    def nested(levels: int) -> bytes:
        return json.dumps(good_fields()).encode()[:-1] + (
            b', "x": ' + b"[" * levels + b"]" * levels + b"}"
        )

    assert reason(LOC, nested(MAX_JSON_DEPTH - 1)) is None
    assert reason(LOC, nested(MAX_JSON_DEPTH)) is RejectReason.NOT_JSON
    # Deep enough that Python's own parser gives up: the same reason.
    assert reason(LOC, nested(1500)) is RejectReason.NOT_JSON


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (b'"speed": 1e400', RejectReason.NON_FINITE),
        (b'"speed": -1e400', RejectReason.NON_FINITE),
        (b'"meta": {"v": [1, 2, 1e999]}', RejectReason.NON_FINITE),
        (b'"note": "a\\u0000b"', RejectReason.NOT_JSON),
        (b'"a\\u0000b": 1', RejectReason.NOT_JSON),  # in a key, too
        (b'"note": "\\ud800"', RejectReason.NOT_JSON),
        (b'"note": "\\udc00x"', RejectReason.NOT_JSON),
        (b'"\\ud83d": 1', RejectReason.NOT_JSON),
        # UTF-8 bytes of a surrogate: json.loads(bytes) decodes with surrogatepass.
        (b'"note": "\xed\xa0\x80"', RejectReason.NOT_JSON),
        (b'"note": "\\ud83d\\ude00"', None),  # a proper surrogate pair is fine (an emoji)
        (b'"note": "\xe4\xb8\xad\xe6\x96\x87"', None),  # UTF-8 text is fine
        (b'"big": 1' + b"0" * 400, None),  # a long integer is storable (jsonb numeric)
        (b'"deep": {"a": {"b": [1, {"c": "d"}]}}', None),
    ],
)
def test_extra_fields_must_be_storable_and_publishable(
    extra: bytes, expected: RejectReason | None
) -> None:
    raw = json.dumps(good_fields()).encode()[:-1] + b", " + extra + b"}"
    assert reason(LOC, raw) is expected
    assert reason(EVT, b'{"ts": "2026-11-20T02:00:00Z", "type": "checkin", ' + extra + b"}") is (
        expected
    )
    if expected is None:
        assert_carriable(Pipeline(make_config()), LOC, raw)


def test_strap_event_with_a_lone_surrogate_attribute_raises_no_alert() -> None:
    """Regression: the alert built from such an event could not be published (the daemon's
    reader died on UnicodeEncodeError, and the unacknowledged message came back)."""
    pipeline = Pipeline(make_config())
    raw = b'{"ts": "2026-11-20T02:00:00Z", "type": "strap_open", "fw": "\\ud800"}'
    outcome = pipeline.handle(EVT, raw, NOW)
    assert outcome.rejection is not None
    assert outcome.rejection.reason is RejectReason.NOT_JSON
    assert outcome.transitions == []
    clean = pipeline.handle(EVT, raw.replace(b"\\ud800", b"1.2"), NOW)
    assert [t.kind.value for t in clean.transitions] == ["opened"]
    assert_carriable(pipeline, EVT, raw.replace(b"\\ud800", b"1.3"))


# ---------------------------------------------------------------------- config loader


def load_or_config_error(directory: Path, env: dict[str, str] | None = None) -> LoadedConfig | None:
    """Load; a ConfigError must name a file and a reason for every problem."""
    try:
        return load_config(directory, env=env or {})
    except ConfigError as error:
        problems, text = error.problems, str(error)
    assert problems
    for problem in problems:
        assert problem.file
        assert problem.reason
    assert text
    return None


def copy_config(root: Path) -> Path:
    target = root / "config"
    shutil.copytree(CONFIG_DIR, target, ignore=shutil.ignore_patterns("mosquitto", "*.md"))
    return target


CONFIG_FILES = [
    "settings.yaml", "subjects.yaml", "schedules.yaml",
    "zones/homes.wgs84.geojson", "zones/district-futian.gcj02.geojson",
    "zones/exclusions.wgs84.geojson",
]  # fmt: skip
hostile_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.sampled_from([10**400, -1, 0, 65536, 1e308]),
    st.floats(),  # NaN and infinities included
    st.text(hostile_char.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF), max_size=30),
    st.sampled_from(["", "Asia/Shanghai", "../../etc/passwd", "25:00", "2026-02-30"]),
    st.lists(st.integers(-200, 200), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.recursive(st.integers(), lambda inner: st.lists(inner, max_size=3), max_leaves=8),
)


def _mutate_tree(data: st.DataObject, tree: Any) -> Any:
    """Walk down a random path of `tree`; replace, delete or add what is there."""
    if not isinstance(tree, dict | list) or not tree or not data.draw(st.booleans()):
        return data.draw(hostile_value)
    keys: list[Any] = list(tree) if isinstance(tree, dict) else list(range(len(tree)))
    key = data.draw(st.sampled_from(keys))
    copy: Any = dict(tree) if isinstance(tree, dict) else list(tree)
    action = data.draw(st.sampled_from(["descend", "descend", "delete", "add"]))
    if action == "delete":
        del copy[key]
    elif action == "add" and isinstance(copy, dict):
        copy[data.draw(st.text(min_size=1, max_size=8))] = data.draw(hostile_value)
    else:
        copy[key] = _mutate_tree(data, tree[key])
    return copy


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), file=st.sampled_from(CONFIG_FILES), rounds=st.integers(1, 3))
def test_fuzz_config_tree_mutations(data: st.DataObject, file: str, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = copy_config(Path(tmp))
        path = config / file
        text = path.read_text(encoding="utf-8")
        tree = json.loads(text) if file.endswith(".geojson") else yaml.safe_load(text)
        for _ in range(rounds):
            tree = _mutate_tree(data, tree)
        if file.endswith(".geojson"):
            path.write_text(json.dumps(tree, default=str), encoding="utf-8")  # NaN -> NaN
        else:
            path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
        load_or_config_error(config)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    file=st.sampled_from(CONFIG_FILES),
    edits=st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=6), st.integers(0, 4)),
                   min_size=1, max_size=4),
)
def test_fuzz_config_byte_mutations(
    data: st.DataObject, file: str, edits: list[tuple[float, bytes, int]]
) -> None:
    """Truncated, spliced and corrupted files (a disk, an editor or a copy gone wrong)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = copy_config(Path(tmp))
        path = config / file
        raw = path.read_bytes()
        for where, insert, delete in edits:
            at = int(where * len(raw))
            raw = raw[:at] + insert + raw[at + delete :]
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        path.write_bytes(raw)
        load_or_config_error(config)


@settings(max_examples=40, deadline=None)
@given(
    env=st.dictionaries(
        st.sampled_from(["EMON_MQTT_HOST", "EMON_MQTT_PORT", "EMON_DATABASE_URL",
                         "EMON_HTTP_PORT"]),
        st.one_of(st.text(max_size=12), st.integers(-(10**6), 10**6).map(str)),
    )
)
def test_fuzz_environment_overrides(env: dict[str, str]) -> None:
    loaded = load_or_config_error(CONFIG_DIR, env)
    if loaded is not None:
        assert 1 <= loaded.settings.mqtt.port <= 65535
        assert 0 <= loaded.settings.http.port <= 65535


# Each of these crashed the loader (or hung it) before it was hardened.
LOADER_REGRESSIONS: list[tuple[str, str, bytes, str]] = [
    (
        "billion laughs",
        "subjects.yaml",
        (
            "a: &a [x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n"
                for i in range(7)
            )
            + "officers: *h\n"
        ).encode(),
        f"more than {MAX_ALIAS_EXPANDED_NODES} added",
    ),
    ("recursive alias", "subjects.yaml", b"officers: &a [*a]\n", "recursive alias"),
    ("recursive mapping", "schedules.yaml", b"x: &a {b: *a}\n", "recursive alias"),
    # libyaml's composer recursed on these until the process died (SIGSEGV): a config
    # edit, or a hot reload of one, killed the daemon.
    ("deep flow YAML", "subjects.yaml", b"officers: " + b"[" * 100_000 + b"]" * 100_000,
     "nested deeper than 64"),
    ("deep compact YAML", "subjects.yaml", b"officers:\n" + b"- " * 100_000 + b"x\n",
     "nested deeper than 64"),
    ("deep block YAML", "settings.yaml",
     "".join(" " * i + "a:\n" for i in range(3000)).encode(), "nested deeper than 64"),
    ("integer too long", "settings.yaml", b"http: {port: 1" + b"0" * 5000 + b"}\n",
     "invalid value"),
    ("time zone that is a tz directory", "subjects.yaml", b"", "unknown time zone 'Asia'"),
    ("not UTF-8 YAML", "subjects.yaml", b"\xff\xfeofficers: []\n", "codec can't decode"),
    ("not UTF-8 GeoJSON", "zones/homes.wgs84.geojson", b'{"a": "\xc3("}', "not UTF-8"),
    ("deep GeoJSON", "zones/homes.wgs84.geojson", b"[" * 100_000 + b"]" * 100_000,
     "nested too deeply"),
    ("NaN literal in GeoJSON", "zones/exclusions.wgs84.geojson", b"", "NaN is not a number"),
    ("infinite coordinate", "zones/exclusions.wgs84.geojson", b"", "finite numbers"),
    ("integer coordinate beyond a double", "zones/exclusions.wgs84.geojson", b"",
     "finite numbers "),
]


def _geojson_with(config: Path, file: str, coordinates: str) -> bytes:
    data = json.loads((config / file).read_text(encoding="utf-8"))
    data["features"][0]["geometry"]["coordinates"] = "@COORDS@"
    return json.dumps(data).replace('"@COORDS@"', coordinates).encode()


@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [r[1:] for r in LOADER_REGRESSIONS],
    ids=[r[0] for r in LOADER_REGRESSIONS],
)
def test_loader_regressions(tmp_path: Path, file: str, content: bytes, expected: str) -> None:
    config = copy_config(tmp_path)
    if expected == "NaN is not a number":
        content = _geojson_with(config, file, "[[[NaN, 22.5], [114.0, 22.6], [114.1, 22.5]]]")
    elif expected.startswith("unknown time zone"):
        content = (config / file).read_bytes().replace(b"Asia/Shanghai", b"Asia", 1)
    elif expected == "finite numbers":
        # 1e400 parses as infinity without any NaN literal.
        content = _geojson_with(config, file, "[[[1e400, 22.5], [114.0, 22.6], [114.1, 22.5]]]")
    elif expected == "finite numbers ":
        # A 400-digit integer: numpy and math.isfinite raised OverflowError on it.
        content = _geojson_with(
            config, file, f"[[[1{'0' * 400}, 22.5], [114.0, 22.6], [114.1, 22.5]]]"
        )
        expected = expected.strip()
    (config / file).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    assert any(expected in problem.reason and problem.file == file
               for problem in info.value.problems), info.value.problems


def test_yaml_anchors_within_bounds_still_work(tmp_path: Path) -> None:
    config = copy_config(tmp_path)
    path = config / "subjects.yaml"
    entry = "      - {zone: school-futian-1, approach_m: 100}\n"
    plain = "    exclusion_zones:\n" + entry
    text = path.read_text(encoding="utf-8")
    assert plain in text
    text = text.replace(plain, "    exclusion_zones: &school\n" + entry, 1)
    text = text.replace(plain, "    exclusion_zones: *school\n")
    assert "*school" in text
    path.write_text(text, encoding="utf-8")
    loaded = load_config(config, env={})
    assert all(s.exclusions for s in loaded.core.subjects.values())


@pytest.mark.parametrize(
    ("name", "value"), [("EMON_MQTT_PORT", "99999"), ("EMON_HTTP_PORT", "-5"),
                        ("EMON_MQTT_PORT", "x")],
)
def test_environment_overrides_are_validated(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR, env={name: value})
    assert info.value.problems[0].file == "(environment)"


def test_epoch_and_far_timestamps_are_bounded() -> None:
    for ts, expected in [
        (json.dumps((NOW + timedelta(days=36500)).isoformat()), RejectReason.TS_IN_FUTURE),
        ('"9999-12-31T23:59:59+00:00"', RejectReason.TS_IN_FUTURE),
        ('"0001-01-01T00:00:00+00:00"', RejectReason.TS_TOO_OLD),
        ("1e20", RejectReason.BAD_TIMESTAMP),
        ("-1e20", RejectReason.BAD_TIMESTAMP),
        ("1e400", RejectReason.NON_FINITE),
    ]:
        raw = f'{{"ts": {ts}, "lat": 1, "lon": 1, "acc": 1}}'.encode()
        assert reason(LOC, raw) is expected, ts
