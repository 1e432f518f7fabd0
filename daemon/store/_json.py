"""JSON encoding shared by the store: compact, and tolerant of datetimes and enums.

Observations and evidence are built by the core from wire data, but may carry a
datetime or an enum; those have one obvious JSON form. Anything else is an error
raised where the value is handed in, not inside a batch.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from enum import Enum
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder for the process: json.dumps with any option builds a new encoder per
# call, which costs more than encoding a small dict (this runs for every ping).
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False)


def dumps(value: Any) -> str:
    """Compact JSON text; TypeError/ValueError for values JSON cannot represent."""
    return _ENCODER.encode(value)
