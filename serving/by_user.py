"""``rank_by_user``: the caller sends a user ID and candidates, the server adds the user's lifelong
history (and profile) from a history store and runs ``rank`` with it.

``UserServable`` wraps the servable that runs ``rank`` (the loaded export, or ``forward.Remote``
for a TF Serving behind this server) and answers to the same front-end interface, plus the
signature ``rank_by_user`` (listed in the model metadata; the SavedModel itself is unchanged) and
the append and prefetch calls. Store reads go through the prefetch cache (``history.cache``) on a
bounded thread pool and each waits at most the store deadline: past it, or with the store down,
the request fails UNAVAILABLE (HTTP 503), never silently with an empty history, and no lock is
held meanwhile, so other requests go on.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from muse_tf.contract import features, signatures
from serving.history.cache import HistoryCache
from serving.history.store import CorruptRecord, HistoryStore, StoreUnavailable
from serving.servable import (
    DataLoss,
    InvalidArgument,
    NotFound,
    Servable,
    Unavailable,
    check_arrays,
    check_names,
)

# Response metadata of rank_by_user (gRPC trailing metadata; REST headers with the same names):
# how many behaviours were scored, whether the store knew the user, and the record's version.
HISTORY_LENGTH = "muse-history-length"
USER_KNOWN = "muse-user-known"
HISTORY_VERSION = "muse-history-version"

# The most users one prefetch may read: all of them are in memory at once before the cache's
# byte budget applies (1,000 x 1.6 MB at L = 100,000).
MAX_PREFETCH_USERS = 1_000
_T = TypeVar("_T")


def rank_by_user_signature(rank: meta_graph_pb2.SignatureDef) -> meta_graph_pb2.SignatureDef:
    """``rank``'s SignatureDef without the history inputs: what the metadata lists for
    ``rank_by_user`` (the profile inputs are optional there)."""
    signature = meta_graph_pb2.SignatureDef()
    signature.CopyFrom(rank)
    for name in features.SEQUENCE_FEATURES:
        del signature.inputs[name]
    return signature


class UserServable:
    """A servable that also serves ``rank_by_user`` from a history store.

    Args:
        inner: runs ``rank`` (and every other signature).
        store: where histories and profiles live.
        max_history_length: the most behaviours sent to ``rank`` (the export's limit).
        timeout_s: the deadline of each store call, queueing included.
        cache_bytes: the prefetch cache's byte budget (0: no cache).
        cache_ttl_s: how long a cached user stays (the staleness bound for outside writers).
        threads: store calls in progress at once.
    """

    def __init__(
        self,
        inner: Servable,
        store: HistoryStore,
        max_history_length: int,
        timeout_s: float,
        cache_bytes: int,
        cache_ttl_s: float,
        threads: int = 8,
    ):
        self.inner, self.store = inner, store
        self.name, self.version = inner.name, inner.version
        self.max_history_length, self.timeout_s = max_history_length, timeout_s
        self.cache = HistoryCache(self._read_many, cache_bytes, cache_ttl_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "history-store")
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        self.signature_defs.CopyFrom(inner.signature_defs)
        self.signature_defs.signature_def[signatures.RANK_BY_USER].CopyFrom(
            rank_by_user_signature(inner.signature_defs.signature_def[signatures.RANK])
        )
        # rank's user inputs are scalars, its candidates and history (C,) and (L,): the export's
        # feature spec decides which profile and candidate features there are.
        rank = inner.input_specs(signatures.RANK)
        self.profile_names = [n for n, s in rank.items() if s.shape.rank == 0 and n != features.USER_ID]
        self.required_names = {features.USER_ID} | {
            n for n, s in rank.items() if s.shape.rank == 1 and n not in features.SEQUENCE_FEATURES
        }

    # The front-end interface of Servable.

    def check_spec(self, name: str, version: int | None = None, label: str | None = None) -> None:
        self.inner.check_spec(name, version, label)

    def model_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        return self.inner.model_spec(signature_name)

    def status(self) -> get_model_status_pb2.GetModelStatusResponse:
        return self.inner.status()

    def warmup(self) -> int:
        return self.inner.warmup()

    def metadata(self) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The inner servable's metadata, with ``rank_by_user`` listed."""
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=self.model_spec())
        response.metadata["signature_def"].Pack(self.signature_defs)
        return response

    def input_specs(self, signature_name: str) -> dict[str, tf.TensorSpec]:
        if signature_name != signatures.RANK_BY_USER:
            return self.inner.input_specs(signature_name)
        rank = self.inner.input_specs(signatures.RANK)
        return {name: spec for name, spec in rank.items() if name not in features.SEQUENCE_FEATURES}

    def check_input_names(self, signature_name: str, names: Sequence[str]) -> None:
        """As the inner servable's; for ``rank_by_user`` the profile inputs may be left out."""
        if signature_name != signatures.RANK_BY_USER:
            return self.inner.check_input_names(signature_name, names)
        check_names(names, set(self.input_specs(signature_name)), self.required_names)

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = "") -> dict:
        return self.predict_annotated(inputs, signature_name)[0]

    def predict_annotated(
        self, inputs: Mapping[str, np.ndarray], signature_name: str = ""
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Runs the signature; ``rank_by_user`` also returns which history it used."""
        if signature_name != signatures.RANK_BY_USER:
            return self.inner.predict_annotated(inputs, signature_name)
        self.check_input_names(signature_name, inputs)
        check_arrays(self.input_specs(signature_name), inputs)
        rank_inputs, notes = self.rank_inputs(inputs)
        return self.inner.predict(rank_inputs, signatures.RANK), notes

    def rank_inputs(
        self, inputs: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """``rank``'s inputs for a ``rank_by_user`` request: the stored newest behaviours (up to
        ``max_history_length``) and the profile, each profile input the request holds winning.

        Raises:
            NotFound: a profile input neither the request nor the store holds.
            Unavailable: the store did not answer within the deadline.
            DataLoss: the user's stored record does not decode.
        """
        user = int(inputs[features.USER_ID])
        record = self._call(self.cache.get, user, user=user)
        stored = (record.profile if record is not None else None) or {}
        missing = [n for n in self.profile_names if n not in inputs and n not in stored]
        if missing:
            known = "has no stored profile" if not stored else f"has no stored {', '.join(missing)}"
            raise NotFound(
                f"user {user} {known}"
                + ("" if record is not None else " (unknown to the history store)")
                + f"; send {', '.join(missing)} with the request."
            )
        ranked = dict(inputs)
        for name in self.profile_names:
            if name not in ranked:
                ranked[name] = np.asarray(stored[name], np.int64)
        if record is None:
            items = categories = np.zeros(0, np.int64)
        else:
            items = record.items[-self.max_history_length:]
            categories = record.categories[-self.max_history_length:]
        ranked[features.HISTORY_ITEMS] = np.asarray(items, np.int64)
        ranked[features.HISTORY_CATEGORIES] = np.asarray(categories, np.int64)
        notes = {HISTORY_LENGTH: str(len(items)), USER_KNOWN: str(record is not None).lower()}
        if record is not None:
            notes[HISTORY_VERSION] = str(record.version)
        return ranked, notes

    # History calls.

    def append(self, user_id: int, items: Sequence[int], categories: Sequence[int]) -> int:
        """Appends behaviours to the user's stored history and evicts the user's cache entry
        (also when the store failed: it may have written); returns the new version."""
        try:
            return self._call(self.store.append, user_id, items, categories, user=user_id)
        finally:
            self.cache.evict(user_id)

    def prefetch(self, user_ids: Sequence[int]) -> int:
        """Loads users into the cache in one store read; returns how many were read."""
        if len(user_ids) > MAX_PREFETCH_USERS:
            raise InvalidArgument(
                f"prefetch takes at most {MAX_PREFETCH_USERS} user_ids, got {len(user_ids)}."
            )
        return self._call(self.cache.prefetch, user_ids)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def _read_many(self, user_ids: Sequence[int]) -> list:
        return self.store.read_many(user_ids, self.max_history_length)

    def _call(self, function: Callable[..., _T], *args: object, user: int | None = None) -> _T:
        """``function(*args)`` on the store's pool, within the deadline; store failures as
        serving errors (naming ``user``)."""
        future = self._pool.submit(function, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # still queued behind stalled calls: never run it
            raise Unavailable(
                f"the history store did not answer within {self.timeout_s * 1000:g} ms"
            ) from None
        except StoreUnavailable as error:
            raise Unavailable(f"the history store is unavailable: {error}") from None
        except CorruptRecord as error:
            whose = "" if user is None else f" of user {user}"
            raise DataLoss(f"corrupt history record{whose}: {error}") from None
