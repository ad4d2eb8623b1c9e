"""The vocabulary index rule (PAD = 0, OOV = 1, position p -> p + 2) in NumPy and in the graph,
against a dictionary built from the documented rule."""

import numpy as np
import pytest
import tensorflow as tf

from muse_tf.contract import features, vocabulary


def reference(ids, raw_ids):
    """The rule written out: the ID at position p has index p + 2; any other ID is OOV."""
    index = {raw: position + 2 for position, raw in enumerate(ids.tolist())}
    return np.array([index.get(raw, features.OOV) for raw in raw_ids.ravel().tolist()]).reshape(
        raw_ids.shape
    )


@pytest.fixture
def ids_and_queries():
    rng = np.random.default_rng(3)
    ids = rng.choice(10**12, 500, replace=False).astype(np.int64)
    unknown = rng.integers(10**13, 10**14, 200)
    queries = rng.permutation(np.concatenate([rng.choice(ids, 300), unknown, [0, -5]]))
    return ids, queries.reshape(2, -1)


def test_table_rows_adds_pad_and_oov():
    assert vocabulary.table_rows(np.arange(7)) == 7 + 2
    assert features.PAD == 0 and features.OOV == 1


def test_numpy_lookup_follows_the_rule(ids_and_queries):
    ids, queries = ids_and_queries
    np.testing.assert_array_equal(vocabulary.lookup(ids, queries), reference(ids, queries))
    ascending = np.sort(ids)
    np.testing.assert_array_equal(
        vocabulary.lookup(ascending, queries, assume_sorted=True), reference(ascending, queries)
    )


def test_empty_vocabulary_maps_everything_to_oov():
    out = vocabulary.lookup(np.zeros(0, np.int64), np.array([3, 4]))
    np.testing.assert_array_equal(out, [features.OOV, features.OOV])


def test_graph_table_follows_the_rule(ids_and_queries, tmp_path):
    ids, queries = ids_and_queries
    path = str(tmp_path / "vocab.txt")
    vocabulary.write_table_file(path, ids, chunk=64)  # several chunks
    table = vocabulary.lookup_table(path)
    out = vocabulary.lookup_in_graph(table, tf.constant(queries, tf.int64)).numpy()
    np.testing.assert_array_equal(out, reference(ids, queries))


@pytest.mark.parametrize(
    "ids, expected", [([5, 9, 7], 0), ([0, 3], -1), ([0, -1, -3, 4], -2), ([-2, 0, -1], -3)]
)
def test_unknown_id_is_free_and_looks_up_as_oov(ids, expected):
    ids = np.array(ids, np.int64)
    unknown = vocabulary.unknown_id(ids)
    assert unknown == expected  # 0 when free, else the largest free ID below
    assert vocabulary.lookup(ids, [unknown])[0] == features.OOV


def test_raw_ids_invert_the_lookup(ids_and_queries):
    ids, queries = ids_and_queries
    indices = vocabulary.lookup(ids, queries)
    raw = vocabulary.raw_ids(ids, indices, unknown=vocabulary.unknown_id(ids))
    known = np.isin(queries, ids)
    np.testing.assert_array_equal(raw[known], np.asarray(queries)[known])
    np.testing.assert_array_equal(vocabulary.lookup(ids, raw), indices)  # OOV stays OOV
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocabulary.raw_ids(ids, [len(ids) + 2], unknown=0)
