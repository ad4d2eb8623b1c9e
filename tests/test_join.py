"""``join.ShardJoin`` against a pure-Python reference of the data rules, on random user batches
whose item and category histories sometimes differ in length (rows that must be rejected alone)."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from muse_tf.contract import features, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from pipelines.common import join
from pipelines.common.raw_schema import MISSING, RawSchema

HISTORY_CAP = 5
release = RawSchema(TAOBAO_MM)
KNOWN = np.arange(1, 16, dtype=np.int64)  # IDs 1..15 are in every vocabulary; 16..20 are OOV


def _lookups():
    rows = len(KNOWN) + vocabulary.RESERVED
    return join.TableLookups(
        vocabs={name: KNOWN for name in TAOBAO_MM.vocabularies},
        item_attributes=np.zeros((rows, 3), np.int32),
        multimodal=np.zeros((rows, release.embedding_dim), np.int8),
        spec=TAOBAO_MM,
    )


def _index(raw):
    return raw + 1 if 1 <= raw <= 15 else features.OOV  # position (raw - 1) + RESERVED


@st.composite
def user_rows(draw):
    """Users 1..n, each a row (history items with 0 = missing, categories, a length error that is
    mostly 0) and its samples (target items); the rows cut into consecutive batches."""
    n = draw(st.integers(1, 12))
    ids = st.integers(0, 20)
    rows = []
    for user in range(1, n + 1):
        items = draw(st.lists(ids, max_size=9))
        categories = draw(st.lists(ids, min_size=len(items), max_size=len(items)))
        error = draw(st.sampled_from([0, 0, 0, -1, -3, 1, 4]))
        if error > 0:
            categories = categories + draw(st.lists(ids, min_size=error, max_size=error))
        elif error < 0:
            categories = categories[: max(0, len(categories) + error)]
        samples = draw(st.lists(st.integers(1, 20), max_size=3))
        rows.append((user, items, categories, samples))
    cuts = sorted(draw(st.sets(st.integers(1, n), max_size=3)) | {n})
    return rows, cuts


def _reference(rows):
    """{user: (history items, history categories, sample items)} of the users the rules write, and
    the number of samples rejected as ``malformed_history``."""
    records, malformed = {}, 0
    for user, items, categories, samples in rows:
        if len(items) != len(categories):
            malformed += len(samples)
        elif samples:
            pairs = [(i, c) for i, c in zip(items, categories) if i != MISSING]
            pairs = pairs[-HISTORY_CAP:]
            records[user] = (
                [_index(i) for i, _ in pairs],
                [_index(c) for _, c in pairs],
                [_index(s) for s in samples],
            )
    return records, malformed


def _table(rows):
    lists = pa.list_(pa.int64())
    return pa.table({
        release.user_id: pa.array([r[0] for r in rows], pa.int64()),
        **{c: pa.array([r[0] for r in rows], pa.int64()) for c in release.profile_columns},
        release.history_items: pa.array([r[1] for r in rows], lists),
        release.history_categories: pa.array([r[2] for r in rows], lists),
    })


def _records(users):
    """A batch's ``UserRecords`` as {user: (history items, categories, sample items)}."""
    history = np.cumsum(np.concatenate([[0], users.history_lengths]))
    samples = np.cumsum(np.concatenate([[0], users.sample_counts]))
    items = users.history[features.HISTORY_ITEMS]
    categories = users.history[features.HISTORY_CATEGORIES]
    return {
        int(key): (
            items[history[u] : history[u + 1]].tolist(),
            categories[history[u] : history[u + 1]].tolist(),
            users.samples[features.ITEM_ID][samples[u] : samples[u + 1]].tolist(),
        )
        for u, key in enumerate(users.user[features.USER_KEY])
    }


@settings(max_examples=200, deadline=None)
@given(user_rows())
def test_a_length_mismatch_rejects_its_row_and_changes_no_other_user(case):
    rows, cuts = case
    samples = [(user, item) for user, _, _, items in rows for item in items]
    table = pa.table({
        release.labels: pa.array([[1, 0]] * len(samples), pa.list_(pa.int8())),
        release.user_id: pa.array([s[0] for s in samples], pa.int64()),
        release.item_id: pa.array([s[1] for s in samples], pa.int64()),
    })
    joiner = join.ShardJoin(join.sample_columns(table, release), _lookups(), HISTORY_CAP, release)
    written = {}
    for start, stop in zip([0, *cuts], cuts):
        written.update(_records(joiner.add_users(_table(rows[start:stop]))))
    stats = joiner.finish()

    expected, malformed = _reference(rows)
    assert written == expected
    assert stats["rejected"]["malformed_history"] == malformed
    assert stats["samples_in"] == len(samples)
    assert stats["samples_in"] == stats["samples_written"] + sum(stats["rejected"].values())
    assert stats["samples_written"] == sum(len(r[2]) for r in expected.values())
