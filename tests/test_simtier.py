"""SimTier against a loop-based NumPy reference."""

import numpy as np
import pytest
import tf_keras

from muse_tf.layers import SimTier
from tests import reference


def test_simtier_matches_reference_including_edges():
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, size=(4, 50)).astype(np.float32)
    # exact zero, exact tier boundaries, the extremes and a rounding overflow above 1
    sims[0, :8] = [0.0, 0.1, -0.1, 0.3, 1.0, -1.0, 1.00001, -0.95]
    mask = rng.random((4, 50)) > 0.25
    mask[3] = False  # nothing to count: all-zero output
    layer = SimTier(eps=0.1, dim=3)
    out = layer(sims, mask).numpy()
    assert out.shape == (4, 22 * 3)
    weights = layer.tier_embeddings.numpy()
    np.testing.assert_allclose(out, reference.simtier(sims, mask, 0.1, weights), rtol=1e-6)
    np.testing.assert_array_equal(out[3], 0.0)


def test_tier_assignment_follows_the_official_rule():
    layer = SimTier()
    one = np.float32(1)
    sims = [0.0, 0.05, 0.1, -0.05, -1.0, 0.95, 1 - 2e-5, -1.2,
            1.0, np.nextafter(one, np.float32(2)), np.nextafter(one, np.float32(0)), 1.2]
    tiers = layer.tiers(np.array([sims], np.float32)).numpy()
    # tier = ceil(10 r) + 10 with r clipped to [-1, 1]; identical vectors (r within 1e-5 of 1,
    # whichever way rounding went) all in tier 21
    np.testing.assert_array_equal(tiers[0], [10, 11, 11, 10, 0, 20, 20, 0, 21, 21, 21, 21])


def test_masked_positions_do_not_count():
    layer = SimTier(eps=0.5, dim=1)
    sims = np.array([[0.2, 0.2, 0.9]], np.float32)
    full = layer(sims, np.ones((1, 3), bool)).numpy()
    partial = layer(sims, np.array([[True, False, True]])).numpy()
    assert not np.allclose(full, partial)
    np.testing.assert_allclose(partial, reference.simtier(sims, [[True, False, True]], 0.5,
                                                          layer.tier_embeddings.numpy()), rtol=1e-6)


def test_config_round_trip_and_validation():
    layer = SimTier(eps=0.25, dim=2)
    clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
    assert (clone.eps, clone.dim, clone.num_tiers) == (0.25, 2, 10)
    with pytest.raises(ValueError, match="eps"):
        SimTier(eps=0.3)
    with pytest.raises(ValueError, match="dim"):
        SimTier(dim=0)
