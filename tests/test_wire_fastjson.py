"""`daemon.wire.load_json_object` parses with orjson and falls back to Python's json: for
any payload it must give what the json path alone gives (the same object, types included,
or a refusal with the same reason). Hypothesis writes JSON documents with the awkward
parts (integers beyond 64 bits, overflowing and subnormal floats, U+0000, lone
surrogates, deep nesting, duplicate keys, a BOM, NaN) and damaged copies of them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.wire import WireError, _load_json_object_slow, load_json_object

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70).map(lambda n: n * st_sign(n)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", "é", "\u2028"]),
)


def st_sign(n: int) -> int:
    return -1 if n % 2 else 1


json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=12,
)

number_texts = st.sampled_from([
    "1e400", "-1e400", "1e-400", "123456789012345678901234567890", "-9223372036854775809",
    "18446744073709551616", "0.1e1", "-0", "NaN", "Infinity", "01", "1.", ".5",
    "2.2250738585072011e-308", "1.7976931348623157e308", "4.9e-324",
    "0.30000000000000004", "9007199254740993", "1234567890123456789",
])


def _outcome(parse: Any, payload: bytes) -> tuple[str, str]:
    try:
        return "ok", repr(parse(payload))
    except WireError as exc:
        return "refused", exc.reason.value


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    body = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=5))
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # a number json.dumps would not write
        text = text[:-1] + ("," if body else "") + f'"n": {draw(number_texts)}' + "}"
    if draw(st.booleans()):
        depth = draw(st.integers(1, 40))
        text = '{"deep": ' + "[" * depth + "1" + "]" * depth + "}"
    raw = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):  # damage: cut, splice a byte in, or prefix a BOM
        cut = draw(st.integers(0, len(raw)))
        raw = draw(st.sampled_from([
            raw[:cut],
            raw[:cut] + bytes([draw(st.integers(0, 255))]) + raw[cut:],
            b"\xef\xbb\xbf" + raw,
            raw + b" ",
            raw.replace(b'"', b"'", 1),
        ]))
    return raw


@settings(max_examples=400, deadline=None)
@given(payloads())
def test_fast_path_decides_as_json_alone(payload: bytes) -> None:
    assert _outcome(load_json_object, payload) == _outcome(_load_json_object_slow, payload)


def test_fast_path_refusals_keep_their_reasons() -> None:
    cases = {
        b'{"a": 1e400}': "non_finite",
        b'{"a": "\\u0000"}': "not_json",
        b'{"a": "\\ud800"}': "not_json",
        b'{"a": NaN}': "not_json",
        b"[1]": "not_object",
        b'{"a": ' + b"[" * 20 + b"]" * 20 + b"}": "not_json",
    }
    for payload, reason in cases.items():
        assert _outcome(load_json_object, payload) == ("refused", reason), payload
    big = load_json_object(b'{"n": 123456789012345678901234567890}')
    assert big["n"] == 123456789012345678901234567890  # an int, as json reads it
