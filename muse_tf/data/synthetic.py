"""The planted synthetic world: items, users and clicks with a known truth, as raw Taobao-MM IDs.

Two forms are written from it: ``pipelines.synthetic`` writes the release's six Parquet tables (for
``pipelines.taobao_mm``, like the real data), and ``muse_tf.data.synthetic_dataset`` writes the converted
dataset directly (the embedded default of ``python -m muse_tf.train``). The same options give the
same users, items and clicks in both.

The planted world
-----------------
* Items belong to C latent semantic clusters. Item i has a latent unit vector z_i (its cluster's
  centre plus noise) and a quality q_i ~ N(0, 0.7) tied to nothing but its ID.
* SCL-like embeddings are noisy, normalised random projections of z to 128 dimensions, quantised as
  the release's are (trunc(127 * clip(v, -1, 1)), int8, scale 1/127); under another feature spec,
  to its ``multimodal.dim``, as its ``multimodal.dtype`` (float vectors are the unit vectors). A
  fraction of items (1 - ``scl_coverage``) has none.
* Each cluster owns 4 categories; 90% of items take one of their cluster's, 10% a random one.
  Attributes 213/214 are random. Popularity is Zipf (``zipf_exponent``) over a random ranking of
  all items: a real long tail, in the histories and in the impressions.
* A user holds 2-5 interest clusters (Dirichlet weights). The history, oldest to newest, is a run
  of sessions of 50-250 behaviours; each session follows one interest, consecutive sessions
  differ, and the newest session is at least 50 long, so the latest 50 behaviours show only the
  user's *current* interest while the others lie deeper. 10% of behaviours are random popular
  items. ``short_history_fraction`` of users have fewer than L behaviours (padding is exercised).
* Impressions: about ``samples_per_user`` per user, each in test with probability
  ``test_fraction``. Half target an item of one of the user's interests, chosen uniformly (not by
  recency); half a popular item. P(click) = sigmoid(-7 + 6 m + q_target + u_user), where m is the
  mean of the 20 highest latent cosine similarities between the target and ALL history items, and
  u_user ~ N(0, 0.3). The click rate is about 13%, as in Taobao-MM.

Why MUSE should beat DIN here
-----------------------------
A target from an older interest has many similar items deep in the history but none among the
latest 50: DIN (latest 50) sees no evidence, while MUSE's multimodal search over the whole history
finds them (the SCL vectors are noisy views of z). Rare items' q cannot be learnt from their few
impressions, but their SCL vector still places them: the long-tail gain. And q is learnable only
through the item ID embedding, so multimodal similarity alone is not enough either.

Memory is bounded: items live in memory (O(items x 144 bytes)); users are generated in chunks of
at most ~2M behaviours, each from its own seeded stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec, Multimodal
from muse_tf.contract.hashing import mix64

SPLITS = ("train", "test")
MISSING_ID = 0  # the release writes 0 for an empty field
LATENT_DIM = 16
ITEM_SPREAD = 0.6
SCL_NOISE = 0.5
QUALITY_STD = 0.7
USER_BIAS_STD = 0.3
CATEGORIES_PER_CLUSTER = 4
CATEGORY_NOISE = 0.1
ATTR_CARDINALITY = {"213": 60, "214": 12}
ATTRIBUTES = tuple(ATTR_CARDINALITY)  # a spec's attribute k is the world's ATTRIBUTES[k]
PROFILE_CARDINALITY = (2, 8, 30, 300, 10)  # a spec's profile feature j is the world's j-th
PROFILE_5_MISSING = 0.02
INTERESTS = (2, 5)
RECENT_WINDOW = 50  # DIN's short-term window: the newest session alone fills it
SESSION_LENGTH = (RECENT_WINDOW, 250)
RANDOM_BEHAVIOUR = 0.1
IN_INTEREST_TARGETS = 0.5
MATCH_TOP_K = 20
MATCH_WEIGHT = 6.0
BASE_LOGIT = -7.0
CHUNK_BEHAVIOURS = 2_000_000
_KIND = {"user": 1, "item": 2, "category": 3, "213": 4, "214": 5, "profile": 6}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and shape of the generated data (see the module docstring for the model)."""

    users: int = 2000
    behaviours_per_user: int = 1000
    samples_per_user: float = 10.0
    test_fraction: float = 0.2
    items: int = 20_000
    clusters: int = 50
    zipf_exponent: float = 1.1
    scl_coverage: float = 0.9
    short_history_fraction: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("users", "behaviours_per_user", "items", "clusters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.items < self.clusters:
            raise ValueError(f"`items` ({self.items}) must be >= `clusters` ({self.clusters}).")
        if self.samples_per_user < 1:
            raise ValueError(f"`samples_per_user` must be >= 1, got {self.samples_per_user}.")
        for name in ("test_fraction", "scl_coverage", "short_history_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}.")


def raw_ids(kind: str, index: np.ndarray) -> np.ndarray:
    """Hashed-looking int64 IDs, distinct per (kind, index) and never 0."""
    keys = np.asarray(index, np.uint64) + np.uint64(_KIND[kind] << 40)
    return mix64(keys).view(np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def quantise(vectors: np.ndarray) -> np.ndarray:
    """The release's int8 encoding of unit vectors."""
    return np.trunc(127 * np.clip(vectors, -1, 1)).astype(np.int8)


def check_spec(spec: FeatureSpec) -> None:
    """Refuses a spec with more profile or attribute features than the world has.

    Raises:
        ValueError: naming the count.
    """
    for key, count, most in (("user_profile", len(spec.user_profile), len(PROFILE_CARDINALITY)),
                             ("item_attributes", len(spec.item_attributes), len(ATTRIBUTES))):
        if count > most:
            raise ValueError(f"The synthetic world has {most} `{key}` features, the spec {count}.")


class Catalogue:
    """The items: cluster, latent vector, quality, category, attributes, popularity, SCL vector
    (``vectors``' width and dtype; Taobao-MM's by default)."""

    def __init__(self, config: SyntheticConfig, vectors: Multimodal = TAOBAO_MM.multimodal) -> None:
        rng = np.random.default_rng([config.seed, 0])
        n, clusters = config.items, config.clusters
        centres = _normalise(rng.normal(size=(clusters, LATENT_DIM)))
        self.cluster = rng.permutation(np.arange(n) % clusters)
        noise = rng.normal(size=(n, LATENT_DIM)) * ITEM_SPREAD / np.sqrt(LATENT_DIM)
        self.latent = _normalise(centres[self.cluster] + noise)
        self.quality = rng.normal(0, QUALITY_STD, n)
        own = self.cluster * CATEGORIES_PER_CLUSTER + rng.integers(CATEGORIES_PER_CLUSTER, size=n)
        random_category = rng.integers(clusters * CATEGORIES_PER_CLUSTER, size=n)
        self.category = np.where(rng.random(n) < CATEGORY_NOISE, random_category, own)
        self.attrs = {c: rng.integers(k, size=n) for c, k in ATTR_CARDINALITY.items()}
        self.popularity = (rng.permutation(n) + 1.0) ** -config.zipf_exponent
        self.has_scl = rng.random(n) < config.scl_coverage
        projection = rng.normal(size=(LATENT_DIM, vectors.dim))
        signal = _normalise(self.latent @ projection)
        scl_noise = SCL_NOISE * _normalise(rng.normal(size=(n, vectors.dim)))
        unit = _normalise(signal + scl_noise)
        self.scl = quantise(unit) if vectors.dtype == "int8" else unit.astype(vectors.dtype)
        self.ids = raw_ids("item", np.arange(n))
        self.category_ids = raw_ids("category", self.category)
        self.attr_ids = {c: raw_ids(c, values) for c, values in self.attrs.items()}
        # Samplers: items grouped by cluster with cumulative in-cluster popularity in (c, c + 1].
        self._by_cluster = np.argsort(self.cluster, kind="stable")
        weights = self.popularity[self._by_cluster]
        sorted_cluster = self.cluster[self._by_cluster]
        totals = np.bincount(sorted_cluster, weights=weights)
        starts = np.concatenate([[0], np.cumsum(totals)[:-1]])
        within = np.cumsum(weights) - starts[sorted_cluster]
        self._cluster_keys = sorted_cluster + within / totals[sorted_cluster]
        last = np.r_[np.flatnonzero(np.diff(sorted_cluster)), n - 1]
        self._cluster_keys[last] = sorted_cluster[last] + 1.0
        self._global_keys = np.cumsum(self.popularity) / self.popularity.sum()

    def sample_in_clusters(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``clusters``, by popularity within the cluster."""
        keys = clusters + rng.random(len(clusters))
        return self._by_cluster[np.searchsorted(self._cluster_keys, keys, side="right")]

    def sample_popular(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` item indices drawn by global (Zipf) popularity, with replacement."""
        picks = np.searchsorted(self._global_keys, rng.random(size), side="right")
        return np.minimum(picks, len(self.popularity) - 1)


def _history_clusters(
    interests: np.ndarray, weights: np.ndarray, length: int, rng: np.random.Generator
) -> np.ndarray:
    """The interest followed at each position, oldest to newest, as drifting sessions."""
    sessions, previous, covered = [], -1, 0
    while covered < length:  # built newest first
        choices = (interests != previous) | (len(interests) == 1)
        p = weights[choices] / weights[choices].sum()
        previous = rng.choice(interests[choices], p=p)
        size = int(rng.integers(SESSION_LENGTH[0], SESSION_LENGTH[1] + 1))
        sessions.append(np.full(size, previous))
        covered += size
    return np.concatenate(sessions)[:length][::-1]


def _match(catalogue: Catalogue, history: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mean of the top-k latent cosine similarities between each target and the whole history."""
    similarity = catalogue.latent[targets] @ catalogue.latent[history].T
    k = min(MATCH_TOP_K, len(history))
    return -np.partition(-similarity, k - 1, axis=1)[:, :k].mean(axis=1)


def generate_users(
    catalogue: Catalogue, config: SyntheticConfig, first_user: int, count: int, chunk: int
) -> dict[str, dict[str, list]]:
    """Samples and user features of users [first_user, first_user + count) by split: per user,
    ``samples`` gets (user ID, target item IDs, clicks) and ``users`` (user ID, profile IDs,
    history item indices)."""
    rng = np.random.default_rng([config.seed, 1, chunk])
    out = {split: {"samples": [], "users": []} for split in SPLITS}
    for user in range(first_user, first_user + count):
        count_interests = min(int(rng.integers(*INTERESTS, endpoint=True)), config.clusters)
        interests = rng.choice(config.clusters, count_interests, replace=False)
        weights = rng.dirichlet(np.ones(len(interests)))
        length = config.behaviours_per_user
        if rng.random() < config.short_history_fraction:
            length = int(rng.integers(1, max(config.behaviours_per_user, 2)))
        clusters = _history_clusters(interests, weights, length, rng)
        history = catalogue.sample_in_clusters(clusters, rng)
        noisy = rng.random(length) < RANDOM_BEHAVIOUR
        history[noisy] = catalogue.sample_popular(int(noisy.sum()), rng)
        n = 1 + int(rng.poisson(config.samples_per_user - 1))
        in_interest = rng.random(n) < IN_INTEREST_TARGETS
        targets = catalogue.sample_popular(n, rng)
        targets[in_interest] = catalogue.sample_in_clusters(
            rng.choice(interests, int(in_interest.sum())), rng
        )
        logit = BASE_LOGIT + MATCH_WEIGHT * _match(catalogue, history, targets)
        logit += catalogue.quality[targets] + rng.normal(0, USER_BIAS_STD)
        clicks = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        in_test = rng.random(n) < config.test_fraction
        profile = [int(rng.integers(k)) for k in PROFILE_CARDINALITY]
        profile_ids = [int(raw_ids("profile", [i * 1000 + v])[0]) for i, v in enumerate(profile)]
        if rng.random() < PROFILE_5_MISSING:
            profile_ids[4] = MISSING_ID
        user_id = int(raw_ids("user", [user])[0])
        for split, rows in (("train", ~in_test), ("test", in_test)):
            if not rows.any():
                continue
            out[split]["samples"].append((user_id, catalogue.ids[targets[rows]], clicks[rows]))
            out[split]["users"].append((user_id, profile_ids, history))
    return out


def user_chunks(
    catalogue: Catalogue, config: SyntheticConfig
) -> Iterator[tuple[int, int, dict[str, dict[str, list]]]]:
    """Every user, in chunks of at most ~2M behaviours: (first user, users, ``generate_users``'s
    rows). Each chunk has its own seeded stream, so every consumer sees the same users."""
    chunk_users = max(1, min(1024, CHUNK_BEHAVIOURS // config.behaviours_per_user))
    for chunk, first in enumerate(range(0, config.users, chunk_users)):
        count = min(chunk_users, config.users - first)
        yield first, count, generate_users(catalogue, config, first, count, chunk)
