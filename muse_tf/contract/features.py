"""The model's input contract: feature names, vocabularies and the padding rule.

Every producer of model inputs (the TFRecord reader, the SavedModel's raw-ID front end, tests) builds
exactly this dict. Shapes use B = batch, L = history length.

* IDs are vocabulary indices (int64 or int32): ``PAD = 0`` marks padding, ``OOV = 1`` an unknown ID.
* Histories are ordered oldest to newest and **left-padded**: the newest behaviour is always in the
  last column, so the ``R`` most recent behaviours are ``history[:, -R:]``.
* The frozen multimodal table is indexed by the ``item`` vocabulary (row ``i`` = item index ``i``; an
  all-zero row means "no multimodal vector").
"""

from __future__ import annotations

PAD = 0
OOV = 1

# Scalar features, shape (B,).
USER_ID = "user_id"
USER_PROFILE = tuple(f"user_profile_{i}" for i in range(1, 6))
ITEM_ID = "item_id"
ITEM_CATEGORY = "item_category"
ITEM_ATTRS = ("item_attr_213", "item_attr_214")

# Sequence features, shape (B, L), left-padded with PAD.
HISTORY_ITEMS = "history_items"
HISTORY_CATEGORIES = "history_categories"

# Not model inputs: the label (B,) in {0, 1}, and the raw user ID (B,) int64 used to group GAUC.
LABEL = "label"
USER_KEY = "user_key"

SCALAR_FEATURES = (USER_ID, *USER_PROFILE, ITEM_ID, ITEM_CATEGORY, *ITEM_ATTRS)
SEQUENCE_FEATURES = (HISTORY_ITEMS, HISTORY_CATEGORIES)
MODEL_FEATURES = SCALAR_FEATURES + SEQUENCE_FEATURES

# Which vocabulary (and so which embedding table) each feature is looked up in.
VOCABULARY = {
    USER_ID: "user",
    **{name: f"profile_{i}" for i, name in enumerate(USER_PROFILE, start=1)},
    ITEM_ID: "item",
    HISTORY_ITEMS: "item",
    ITEM_CATEGORY: "category",
    HISTORY_CATEGORIES: "category",
    "item_attr_213": "attr_213",
    "item_attr_214": "attr_214",
}
VOCABULARIES = tuple(dict.fromkeys(VOCABULARY.values()))
