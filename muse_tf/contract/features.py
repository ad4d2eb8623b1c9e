"""The model's input contract: the fixed feature names and the padding rule.

Every producer of model inputs (the TFRecord reader, the SavedModel's raw-ID front end, tests) builds
the dict of ``FeatureSpec.model_features`` (``muse_tf.contract.feature_spec``). Shapes use B = batch,
L = history length.

* IDs are vocabulary indices (int64 or int32): ``PAD = 0`` marks padding, ``OOV = 1`` an unknown ID.
* Histories are ordered oldest to newest and **left-padded**: the newest behaviour is always in the
  last column, so the ``R`` most recent behaviours are ``history[:, -R:]``.
* The frozen multimodal table is indexed by the ``item`` vocabulary (row ``i`` = item index ``i``; an
  all-zero row means "no multimodal vector").
"""

from __future__ import annotations

PAD = 0
OOV = 1

# The fixed features' model names (a feature spec, ``muse_tf.contract.feature_spec``, names their raw
# columns and adds any number of user profile and item attribute features). Scalars are (B,).
USER_ID = "user_id"
ITEM_ID = "item_id"
ITEM_CATEGORY = "item_category"

# Sequence features, shape (B, L), left-padded with PAD.
HISTORY_ITEMS = "history_items"
HISTORY_CATEGORIES = "history_categories"
SEQUENCE_FEATURES = (HISTORY_ITEMS, HISTORY_CATEGORIES)

# Not model inputs: the label (B,) in {0, 1}, and the raw user ID (B,) int64 used to group GAUC.
LABEL = "label"
USER_KEY = "user_key"
