"""Strict JSON outputs: undefined metrics are null, and what is written parses without NaN."""

import io
import json
import math

import numpy as np

from muse_tf import strict_json


def _strict_load(text):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_everywhere():
    value = {
        "gauc": float("nan"),
        "auc": 0.71,
        "by_history_length": [{"gauc": float("nan"), "examples": 3}, {"gauc": 0.5}],
        "bounds": (float("inf"), -float("inf"), 1.0),
        "numpy": np.float64("nan"),  # a float subclass, as metrics return them
    }
    buffer = io.StringIO()
    strict_json.dump(value, buffer, indent=2)
    assert _strict_load(buffer.getvalue()) == {
        "gauc": None,
        "auc": 0.71,
        "by_history_length": [{"gauc": None, "examples": 3}, {"gauc": 0.5}],
        "bounds": [None, None, 1.0],
        "numpy": None,
    }
    assert _strict_load(strict_json.dumps(value)) == _strict_load(buffer.getvalue())
    assert "NaN" in json.dumps(value)  # what the standard library would have written
    assert math.isnan(value["gauc"])  # the caller's value is left as it was

