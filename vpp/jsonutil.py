"""JSON-ready data: numpy arrays to lists, NaN to null, datetimes to ISO 8601 strings."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def jsonable(o: Any) -> Any:
    """Recursively convert ``o`` into data ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [jsonable(float(x)) for x in o.tolist()]
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    if hasattr(o, "isoformat"):
        return o.isoformat()
    return o


def dumps(o: Any) -> str:
    """Strict JSON (no NaN, no Infinity) of ``o``."""
    return json.dumps(jsonable(o), allow_nan=False)
