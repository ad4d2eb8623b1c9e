"""The raw Taobao-MM release: its tables, columns and their types, and which feature each feeds.

Every module of ``pipelines/`` that reads or writes the release's Parquet names its tables and
columns through here (``muse_tf.contract.features`` holds the model's feature names, not the release's).
"""

from __future__ import annotations

from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM

MISSING = 0  # the release's "empty field": never a vocabulary ID
EMBEDDING_DIM = 128  # int8 values per SCL vector

SPLITS = ("train", "test")
SAMPLES_TABLE = {split: f"{split}_samples" for split in SPLITS}
USER_TABLE = {split: f"{split}_user_features" for split in SPLITS}
SAMPLES = tuple(SAMPLES_TABLE.values())
USER_FEATURES = tuple(USER_TABLE.values())
ITEM_FEATURES = "item_features"
SCL_EMBEDDINGS = "scl_embedding_int8_p90"

LABELS = "label_0"  # a list per sample row: its click labels
USER_ID = "129_1"
PROFILE_COLUMNS = tuple(f"130_{i}" for i in range(1, 6))
HISTORY_ITEMS = "150_2_180"
HISTORY_CATEGORIES = "151_2_180"
ITEM_ID = "205"
ITEM_CATEGORY = "206"
ATTRIBUTE_COLUMNS = ("213", "214")
SCL_VECTOR = "205_c"

ID = "integer"
ID_LIST = "list<integer>"
INT8_LIST = "list<int8>"
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    **{name: {LABELS: ID_LIST, USER_ID: ID, ITEM_ID: ID} for name in SAMPLES},
    **{
        name: {
            USER_ID: ID,
            **{column: ID for column in PROFILE_COLUMNS},
            HISTORY_ITEMS: ID_LIST,
            HISTORY_CATEGORIES: ID_LIST,
        }
        for name in USER_FEATURES
    },
    ITEM_FEATURES: {ITEM_ID: ID, ITEM_CATEGORY: ID, **{c: ID for c in ATTRIBUTE_COLUMNS}},
    SCL_EMBEDDINGS: {ITEM_ID: ID, SCL_VECTOR: INT8_LIST},
}

# Column -> the model feature its IDs become.
COLUMN_FEATURE = {
    USER_ID: features.USER_ID,
    **dict(zip(PROFILE_COLUMNS, TAOBAO_MM.profile_features)),
    ITEM_ID: features.ITEM_ID,
    ITEM_CATEGORY: features.ITEM_CATEGORY,
    **dict(zip(ATTRIBUTE_COLUMNS, TAOBAO_MM.attribute_features)),
    HISTORY_ITEMS: features.HISTORY_ITEMS,
    HISTORY_CATEGORIES: features.HISTORY_CATEGORIES,
}
