"""The serving contract of an exported muse-tf SavedModel: signature names, input and output keys.

``muse_tf.jobs.saved_model`` builds its signatures from these definitions; the serving stand-in, the clients,
the tests and the benchmarks name signatures and tensors through them, so a renamed key changes in
one place. Every input is int64 raw IDs as in the raw files; the user and candidate features are the
feature spec's (``FeatureSpec.user_features``, ``candidate_features``; an export records its spec,
``export_feature_spec``; ``muse_tf.jobs.saved_model`` documents the shapes and padding of each
signature). Command lines read these names before TensorFlow loads, so TensorFlow is imported
only to build the input specs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from muse_tf.contract import features
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec

if TYPE_CHECKING:
    import tensorflow as tf

# The served model's name wherever none is given: the export's model directory
# (EXPORT_DIR/NAME/VERSION), the serving stand-in, the clients and serving/models.config.
DEFAULT_MODEL_NAME = "muse"

# Where an export records the feature spec its inputs follow (an export without one is Taobao-MM's).
FEATURE_SPEC_FILE = os.path.join("assets.extra", "feature_spec.json")

# B independent rows with right-padded histories (B, W) and their valid lengths; TensorFlow's
# tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY, the signature TF Serving runs when none is named.
SERVING_DEFAULT = "serving_default"
# One user, one unpadded history (L,) searched once, C candidate items.
RANK = "rank"
SIGNATURES = (SERVING_DEFAULT, RANK)
# Not in the export: the serving tier's `rank` with the history (and profile) read from its
# history store by user ID (serving/by_user.py); inputs: user_id, the candidates, the profile optional.
RANK_BY_USER = "rank_by_user"

# serving_default's extra input: valid entries per history row (0..W); the rest is padding.
VALID_HISTORY_LENGTH = "history_length"

# The Taobao-MM preset's per-user and per-candidate inputs (another spec's: its properties).
USER_FEATURES = TAOBAO_MM.user_features
CANDIDATE_FEATURES = TAOBAO_MM.candidate_features

# Outputs of both signatures, float32, one per row / candidate.
PROBABILITY = "probability"
LOGIT = "logit"
OUTPUTS = (PROBABILITY, LOGIT)


def export_feature_spec(export_dir: str) -> FeatureSpec:
    """The feature spec of the export in ``export_dir`` (a version directory)."""
    path = os.path.join(export_dir, FEATURE_SPEC_FILE)
    return FeatureSpec.load(path) if os.path.exists(path) else TAOBAO_MM


def _spec(shape: list[int | None], name: str) -> tf.TensorSpec:
    import tensorflow as tf

    return tf.TensorSpec(shape, tf.int64, name=name)


def serving_default_spec(feature_spec: FeatureSpec = TAOBAO_MM) -> dict[str, tf.TensorSpec]:
    """Inputs of ``serving_default``: per-row features (B,), right-padded histories (B, W)."""
    spec = {name: _spec([None], name) for name in feature_spec.scalar_features}
    spec.update({name: _spec([None, None], name) for name in features.SEQUENCE_FEATURES})
    spec[VALID_HISTORY_LENGTH] = _spec([None], VALID_HISTORY_LENGTH)
    return spec


def rank_spec(feature_spec: FeatureSpec = TAOBAO_MM) -> dict[str, tf.TensorSpec]:
    """Inputs of ``rank``: user scalars, an unpadded history (L,), candidates (C,)."""
    spec = {name: _spec([], name) for name in feature_spec.user_features}
    spec.update({name: _spec([None], name) for name in features.SEQUENCE_FEATURES})
    spec.update({name: _spec([None], name) for name in feature_spec.candidate_features})
    return spec
