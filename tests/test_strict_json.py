"""Strict JSON: undefined metrics are written as null, so outputs parse without NaN; JSON values are
read as arrays only when NumPy would not silently convert them."""

import io
import json
import math
import re

import numpy as np
import pytest

from muse_tf.contract import strict_json


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



@pytest.mark.parametrize("value, expected", [
    ([[1, -2], [3, 4]], np.array([[1, -2], [3, 4]], np.int64)),
    ([-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], np.int64)),  # the int64 bounds
    (7, np.int64(7)),
    ([1.5, 2], np.array([1.5, 2.0])),
    ([True, False], np.array([True, False])),
    (["a", "b"], np.array(["a", "b"])),
])
def test_json_arrays_of_one_type_are_read_exactly(value, expected):
    array = strict_json.array("x", value)
    assert array.dtype == expected.dtype and array.tolist() == expected.tolist()


@pytest.mark.parametrize("value, message", [
    ([1, True, 3], "holds true or false among numbers"),  # NumPy: [1, 1, 3]
    ([[1, 2], [False, 3]], "holds true or false among numbers"),
    ([1.5, True], "holds true or false among numbers"),
    (2**63, "holds 9223372036854775808, outside the int64 range [-2^63, 2^63 - 1]"),  # uint64
    ([2**63, 1], "holds 9223372036854775808, outside"),  # NumPy: float64, rounded
    ([-(2**63) - 1, 0], "holds -9223372036854775809, outside"),  # NumPy: objects
    ([[2**70]], "holds 1180591620717411303424, outside"),
    ([1, None], "holds null or an object"),
    ([1, [2]], "is not a rectangular array"),
])
def test_json_values_numpy_would_silently_convert_are_refused_naming_the_field(value, message):
    with pytest.raises(ValueError, match=re.escape(f"Input 'item_id' {message}")):
        strict_json.array("Input 'item_id'", value)
