"""The raw tables of a conversion, their columns and types, and which feature each column feeds:
a feature spec (``muse_tf.contract.feature_spec``) read as the conversion reads it.

Every module of ``pipelines/`` that reads or writes raw Parquet names its tables and columns
through a ``RawSchema`` (``muse_tf.contract.features`` holds the model's fixed feature names, the
spec the others). The default spec is the Taobao-MM release's (``TAOBAO_MM``).
"""

from __future__ import annotations

from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec

MISSING = 0  # the "empty field": never a vocabulary ID
SPLITS = ("train", "test")

ID = "integer"
ID_LIST = "list<integer>"
INT8_LIST = "list<int8>"
FLOAT_LIST = "list<floating point>"


class RawSchema:
    """The tables and columns of ``spec`` (attributes named after the spec's keys)."""

    def __init__(self, spec: FeatureSpec = TAOBAO_MM) -> None:
        self.spec = spec
        self.samples_table = {split: spec.tables.per_split("samples", split) for split in SPLITS}
        self.user_table = {split: spec.tables.per_split("users", split) for split in SPLITS}
        self.samples = tuple(self.samples_table.values())
        self.user_features = tuple(self.user_table.values())
        self.item_features = spec.tables.items
        self.scl_embeddings = spec.tables.vectors
        self.labels = spec.label  # a list per sample row: its one-hot click labels
        self.user_id = spec.user_id
        self.profile_columns = tuple(f.column for f in spec.user_profile)
        self.history_items = spec.history_items
        self.history_categories = spec.history_categories
        self.item_id = spec.item_id
        self.item_category = spec.item_category
        self.attribute_columns = tuple(f.column for f in spec.item_attributes)
        self.scl_vector = spec.multimodal.column
        self.embedding_dim = spec.multimodal.dim
        self.vector_dtype = spec.multimodal.dtype
        vector_type = INT8_LIST if self.vector_dtype == "int8" else FLOAT_LIST
        self.table_columns: dict[str, dict[str, str]] = {}
        for name in self.samples:
            self._add(name, {self.labels: ID_LIST, self.user_id: ID, self.item_id: ID})
        for name in self.user_features:
            self._add(name, {self.user_id: ID, **{c: ID for c in self.profile_columns},
                             self.history_items: ID_LIST, self.history_categories: ID_LIST})
        self._add(self.item_features, {self.item_id: ID, self.item_category: ID,
                                       **{c: ID for c in self.attribute_columns}})
        self._add(self.scl_embeddings, {self.item_id: ID, self.scl_vector: vector_type})
        self.column_feature = spec.column_feature  # raw column -> the model feature it feeds

    def _add(self, table: str, columns: dict[str, str]) -> None:
        """Adds ``columns`` to ``table`` (one table may hold, e.g., item features and vectors)."""
        self.table_columns.setdefault(table, {}).update(columns)
