"""``rank_by_user``: the server reads the history and profile from a history store and runs
``rank``; its scores are bitwise those of ``rank`` called with the stored history (the reference:
the export's own ``rank`` on the arrays this test wrote), over REST and gRPC, with the model in
process and behind a second server (forward mode). Then the prefetch cache (single flight, TTL,
byte budget, eviction on append) and the failures (store down or slow, unknown user, no profile,
corrupt record, a history past the export's limit)."""

import contextlib
import dataclasses
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from muse_tf.contract import features, signatures
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.jobs import saved_model
from serving import by_user, forward, server
from serving.client import GrpcClient, RestClient
from serving.history.cache import ENTRY_OVERHEAD_BYTES, HistoryCache
from serving.history.store import (
    HistoryStore,
    StoreUnavailable,
    UserRecord,
    open_store,
)
from serving.launch import free_port
from serving.servable import InvalidArgument, Servable
from serving.server import ModelServer
from tests import history_backends
from tests import serving_case as sc

LIMIT = 64  # the export's max_history_length: stored histories longer than this are cut
TIMEOUT_S = 0.5  # the store deadline


class DictStore(HistoryStore):
    """A store in a dict that counts its reads, and fails or stalls on demand."""

    def __init__(self):
        super().__init__(cap=1000)
        self.users: dict[int, tuple[list, list, dict | None, int]] = {}
        self.reads = 0
        self.failure: Exception | None = None
        self.delay_s = 0.0

    def read_many(self, user_ids, newest):
        self.reads += 1
        time.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        records = []
        for user in user_ids:
            if user not in self.users:
                records.append(None)
                continue
            items, categories, profile, version = self.users[user]
            keep = slice(len(items) - min(newest, len(items)), None)
            records.append(UserRecord(np.array(items[keep], np.int64),
                                      np.array(categories[keep], np.int64), profile, version))
        return records

    def write(self, user_id, items, categories, profile=None):
        version = self.users.get(user_id, ([], [], None, 0))[3] + 1
        self.users[user_id] = (list(items)[-self.cap:], list(categories)[-self.cap:], profile, version)
        return version

    def append(self, user_id, items, categories):
        old_items, old_categories, profile, _ = self.users.get(user_id, ([], [], None, 0))
        return self.write(user_id, old_items + list(items), old_categories + list(categories),
                          profile)

    def close(self):
        pass


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=4)


@pytest.fixture(scope="module")
def model(case, tmp_path_factory):
    """The export (history limit LIMIT) loaded in process, and a plain server of it standing in
    for TF Serving: (Servable, its gRPC port)."""
    base = tmp_path_factory.mktemp("exports")
    saved_model.export_saved_model(case.model, case.vocabularies, str(base), "muse",
                                   max_history_length=LIMIT)
    servable = Servable("muse", str(base / "muse"))
    port = free_port()
    tf_serving = ModelServer(servable, "127.0.0.1", port)
    tf_serving.start()
    yield servable, port
    tf_serving.stop()


@dataclasses.dataclass
class Front:
    """A rank_by_user server: its store, its UserServable and ports."""

    store: DictStore
    servable: by_user.UserServable
    grpc_port: int
    rest_port: int


def start_front(model, mode, store, cache_bytes=1 << 20, ttl_s=60.0):
    servable, tf_serving_port = model
    inner = servable if mode == "in-process" else forward.Remote(
        "muse", f"127.0.0.1:{tf_serving_port}", LIMIT, timeout_s=30, wait_s=30
    )
    front = by_user.UserServable(inner, store, LIMIT, TIMEOUT_S, cache_bytes, ttl_s, threads=4)
    grpc_port, rest_port = free_port(), free_port()
    running = ModelServer(front, "127.0.0.1", grpc_port, rest_port)
    running.start()
    return running, Front(store, front, grpc_port, rest_port)


@pytest.fixture(params=["in-process", "forward"])
def front(request, model, tmp_path):
    """A rank_by_user server on a real SQLite store, with the model in process or forwarded to."""
    store = open_store(f"sqlite:///{tmp_path / 'history.db'}", cap=1000, timeout_s=TIMEOUT_S)
    running, made = start_front(model, request.param, store)
    yield made
    running.stop()
    made.servable.close()


@pytest.fixture
def fake_front(model):
    """A rank_by_user server on a DictStore: store reads counted, failures injected."""
    running, made = start_front(model, "in-process", DictStore())
    yield made
    running.stop()
    made.servable.close()


def user_inputs(case, rng, candidates=5):
    """A rank request (user scalars, history, candidates) of raw IDs."""
    return sc.rank_request(rng, case, int(rng.integers(1, LIMIT)), candidates)


def store_user(store, request, user=None, profile=True):
    """Writes the request's history and profile as user ``user`` (default: its user_id)."""
    user = int(request[features.USER_ID]) if user is None else user
    stored = {n: int(request[n]) for n in TAOBAO_MM.profile_features} if profile else None
    store.write(user, request[features.HISTORY_ITEMS].tolist(),
                request[features.HISTORY_CATEGORIES].tolist(), stored)
    return user


def by_user_inputs(request, **extra):
    inputs = {name: request[name] for name in (features.USER_ID, *signatures.CANDIDATE_FEATURES)}
    return {**inputs, **extra}


def rank_reference(model, request, **changes):
    """The export's own ``rank`` on the given (explicit) history and profile."""
    servable, _ = model
    return servable.predict({**request, **changes}, signatures.RANK)


def assert_bitwise(outputs, reference):
    for name in signatures.OUTPUTS:
        assert outputs[name].dtype == reference[name].dtype == np.float32
        np.testing.assert_array_equal(outputs[name], reference[name])


def grpc_rank_by_user(port, inputs):
    """Predict over gRPC; returns (outputs, trailing metadata) or raises grpc.RpcError."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
        name="muse", signature_name=signatures.RANK_BY_USER))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, np.int64)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response, call = stub.Predict.with_call(request, timeout=30)
    outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    return outputs, dict(call.trailing_metadata())


def rest_rank_by_user(port, inputs):
    """Predict over REST (columnar); returns (status, JSON body, headers)."""
    body = {"signature_name": signatures.RANK_BY_USER,
            "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()}}
    reply = requests.post(f"http://127.0.0.1:{port}/v1/models/muse:predict", json=body, timeout=30)
    return reply.status_code, reply.json(), reply.headers


def rank_by_user(front, protocol, inputs):
    """(outputs as float32 arrays, response metadata) over ``protocol``."""
    if protocol == "grpc":
        return grpc_rank_by_user(front.grpc_port, inputs)
    status, body, headers = rest_rank_by_user(front.rest_port, inputs)
    assert status == 200, body
    outputs = {name: np.asarray(value, np.float32) for name, value in body["outputs"].items()}
    return outputs, {name: headers[name] for name in headers if name.lower().startswith("muse-")}


def note(metadata, key):
    return {name.lower(): value for name, value in metadata.items()}[key]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_rank_by_user_scores_bitwise_equal_rank_with_the_stored_history(front, model, case,
                                                                        protocol):
    rng = np.random.default_rng(1)
    for _ in range(3):
        request = user_inputs(case, rng)
        store_user(front.store, request)
        outputs, metadata = rank_by_user(front, protocol, by_user_inputs(request))
        assert_bitwise(outputs, rank_reference(model, request))
        assert note(metadata, by_user.HISTORY_LENGTH) == str(len(request[features.HISTORY_ITEMS]))
        assert note(metadata, by_user.USER_KNOWN) == "true"
    # Profile inputs in the request win over the stored ones.
    other = {name: np.int64(v) for name, v in zip(TAOBAO_MM.profile_features,
                                                  sc.rank_request(rng, case, 0, 1).values())}
    outputs, _ = rank_by_user(front, protocol, by_user_inputs(request, **other))
    assert_bitwise(outputs, rank_reference(model, request, **other))
    assert not np.array_equal(outputs[signatures.LOGIT],
                              rank_reference(model, request)[signatures.LOGIT])


def test_a_stored_history_past_the_export_limit_scores_its_newest_behaviours(front, model, case):
    rng = np.random.default_rng(2)
    request = sc.rank_request(rng, case, LIMIT + 40, candidates=6)
    store_user(front.store, request)
    newest = {name: request[name][-LIMIT:] for name in features.SEQUENCE_FEATURES}
    oldest = {name: request[name][:LIMIT] for name in features.SEQUENCE_FEATURES}
    with RestClient(port=front.rest_port) as client:
        outputs = client.predict(by_user_inputs(request), signatures.RANK_BY_USER)
    assert_bitwise(outputs, rank_reference(model, request, **newest))
    assert not np.array_equal(outputs[signatures.LOGIT],
                              rank_reference(model, request, **oldest)[signatures.LOGIT])


def test_metadata_lists_rank_by_user_and_the_export_is_unchanged(front, model):
    servable, _ = model
    assert set(servable.signature_defs.signature_def) - {"__saved_model_init_op"} == set(
        signatures.SIGNATURES)
    with GrpcClient(port=front.grpc_port) as client:
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        client.metadata().metadata["signature_def"].Unpack(signature_map)
    listed = signature_map.signature_def[signatures.RANK_BY_USER]
    assert set(listed.inputs) == {*signatures.USER_FEATURES, *signatures.CANDIDATE_FEATURES}
    assert set(listed.outputs) == set(signatures.OUTPUTS)
    rest = requests.get(f"http://127.0.0.1:{front.rest_port}/v1/models/muse/metadata").json()
    assert signatures.RANK_BY_USER in rest["metadata"]["signature_def"]["signature_def"]


def test_unknown_user_scores_an_empty_history_and_says_so(front, model, case):
    request = sc.rank_request(np.random.default_rng(3), case, 0, candidates=4)
    profile = {name: request[name] for name in TAOBAO_MM.profile_features}
    for protocol in ("rest", "grpc"):
        outputs, metadata = rank_by_user(front, protocol, by_user_inputs(request, **profile))
        assert_bitwise(outputs, rank_reference(model, request))
        assert note(metadata, by_user.USER_KNOWN) == "false"
        assert note(metadata, by_user.HISTORY_LENGTH) == "0"


def test_a_user_without_a_profile_is_not_found(front, case):
    request = user_inputs(case, np.random.default_rng(4))
    known = store_user(front.store, request, profile=False)
    for user in (known, known + 1):  # stored without profile; unknown to the store
        inputs = by_user_inputs(request, user_id=np.int64(user))
        status, body, _ = rest_rank_by_user(front.rest_port, inputs)
        assert status == 404 and f"user {user} has no stored profile" in body["error"], body
        with pytest.raises(grpc.RpcError) as error:
            grpc_rank_by_user(front.grpc_port, inputs)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_rank_by_user_requests_name_the_input(front, case):
    request = user_inputs(case, np.random.default_rng(5))
    inputs = by_user_inputs(request)
    for bad, message in [
        ({k: v for k, v in inputs.items() if k != features.ITEM_ID}, "Missing input(s) item_id"),
        ({**inputs, features.HISTORY_ITEMS: request[features.HISTORY_ITEMS]},
         "not found in signature: history_items"),
        ({**inputs, features.USER_ID: request[features.ITEM_ID]}, "'user_id' must have shape []"),
    ]:
        status, body, _ = rest_rank_by_user(front.rest_port, bad)
        assert status == 400 and message in body["error"], body


def test_store_down_or_slow_is_unavailable_within_the_deadline_and_the_next_request_succeeds(
    fake_front, model, case
):
    request = user_inputs(case, np.random.default_rng(6))
    store_user(fake_front.store, request)
    reference = rank_reference(model, request)
    inputs = by_user_inputs(request)
    # A store that refuses, then one that stalls past the deadline (ignoring its own timeout).
    for failure, delay_s in ((StoreUnavailable("connection refused"), 0.0), (None, 3 * TIMEOUT_S)):
        fake_front.store.failure, fake_front.store.delay_s = failure, delay_s
        started = time.monotonic()
        status, body, _ = rest_rank_by_user(fake_front.rest_port, inputs)
        assert status == 503 and "history store" in body["error"], body
        with pytest.raises(grpc.RpcError) as error:
            grpc_rank_by_user(fake_front.grpc_port, inputs)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 2 * TIMEOUT_S + 1.0
        if delay_s:  # while the store stalls, requests that need no store are served at once
            started = time.monotonic()
            with GrpcClient(port=fake_front.grpc_port) as client:
                assert_bitwise(client.predict(request, signatures.RANK), reference)
            assert time.monotonic() - started < 1.0
    fake_front.store.failure, fake_front.store.delay_s = None, 0.0
    time.sleep(3 * TIMEOUT_S)  # the stalled reads end
    outputs, _ = rank_by_user(fake_front, "grpc", inputs)
    assert_bitwise(outputs, reference)


def test_append_through_the_server_updates_the_scores(front, model, case):
    rng = np.random.default_rng(8)
    request = user_inputs(case, rng)
    user = store_user(front.store, request)
    inputs = by_user_inputs(request)
    rank_by_user(front, "grpc", inputs)  # cached now
    items, categories = sc.raw_history(rng, case, 3)
    version = front.store.read(user, 1).version
    with RestClient(port=front.rest_port) as client:
        assert client.append(user, items, categories) > version
        outputs = client.predict(inputs, signatures.RANK_BY_USER)
    appended = {
        features.HISTORY_ITEMS: np.concatenate([request[features.HISTORY_ITEMS], items]),
        features.HISTORY_CATEGORIES: np.concatenate([request[features.HISTORY_CATEGORIES],
                                                     categories]),
    }
    assert_bitwise(outputs, rank_reference(model, request, **appended))
    reply = requests.post(f"http://127.0.0.1:{front.rest_port}/v1/models/muse:append",
                          json={"user_id": user, "item_id": [1, 2], "category": [1]})
    assert reply.status_code == 400 and "category" in reply.json()["error"]


def test_prefetch_reads_many_users_at_once_and_rank_by_user_then_reads_no_store(fake_front, model,
                                                                                case):
    rng = np.random.default_rng(9)
    requests_ = [user_inputs(case, rng) for _ in range(3)]
    users = [store_user(fake_front.store, request) for request in requests_]
    with RestClient(port=fake_front.rest_port) as client:
        assert client.prefetch(users + [users[0]]) == 3
        assert fake_front.store.reads == 1
        assert client.prefetch(users) == 0
        for request in requests_:
            outputs = client.predict(by_user_inputs(request), signatures.RANK_BY_USER)
            assert_bitwise(outputs, rank_reference(model, request))
    assert fake_front.store.reads == 1
    too_many = list(range(by_user.MAX_PREFETCH_USERS + 1))
    reply = requests.post(f"http://127.0.0.1:{fake_front.rest_port}/v1/models/muse:prefetch",
                          json={"user_ids": too_many})
    assert reply.status_code == 400 and "at most" in reply.json()["error"]
    assert fake_front.store.reads == 1


def test_the_history_calls_need_a_store(model):
    servable, port = model
    plain = ModelServer(servable, "127.0.0.1", free_port(), rest_port := free_port())
    plain.start()
    try:
        reply = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/muse:prefetch",
                              json={"user_ids": [1]})
        assert reply.status_code == 404 and "--history_store" in reply.json()["error"]
    finally:
        plain.stop()


# Both real stores, damaged from outside; and a real Redis killed and frozen.


@pytest.fixture(params=["sqlite", "redis"])
def real_backend(request, tmp_path):
    """The store tests' backends (``tests.history_backends``): a SQLite file, a real Redis."""
    if request.param == "sqlite":
        return history_backends.SqliteBackend(f"sqlite:///{tmp_path / 'history.db'}")
    return history_backends.RedisBackend(request.getfixturevalue("redis_server"))


@pytest.fixture
def real_front(model, real_backend):
    running, made = start_front(model, "in-process", real_backend.open(cap=10_000,
                                                                      timeout_s=TIMEOUT_S))
    yield made, real_backend
    running.stop()
    made.servable.close()


@pytest.mark.parametrize("real_backend", ["redis"], indirect=True)  # SQLite: the tests above
def test_rank_by_user_on_redis_is_bitwise_rank_with_the_newest_history_and_appends(
    real_front, model, case
):
    front, _ = real_front
    rng = np.random.default_rng(11)
    short, long = user_inputs(case, rng), sc.rank_request(rng, case, LIMIT + 40, candidates=5)
    store_user(front.store, short)
    store_user(front.store, long)
    for protocol in ("grpc", "rest"):
        assert_bitwise(rank_by_user(front, protocol, by_user_inputs(short))[0],
                       rank_reference(model, short))
        newest = {name: long[name][-LIMIT:] for name in features.SEQUENCE_FEATURES}
        assert_bitwise(rank_by_user(front, protocol, by_user_inputs(long))[0],
                       rank_reference(model, long, **newest))
    items, categories = sc.raw_history(rng, case, 2)
    with RestClient(port=front.rest_port) as client:
        client.append(int(short[features.USER_ID]), items, categories)
    appended = {
        features.HISTORY_ITEMS: np.concatenate([short[features.HISTORY_ITEMS], items]),
        features.HISTORY_CATEGORIES: np.concatenate([short[features.HISTORY_CATEGORIES],
                                                     categories]),
    }
    assert_bitwise(rank_by_user(front, "grpc", by_user_inputs(short))[0],
                   rank_reference(model, short, **appended))


def test_a_corrupt_record_in_a_real_store_is_an_error_naming_the_user(real_front, case):
    front, backend = real_front
    request = user_inputs(case, np.random.default_rng(12))
    user = store_user(front.store, request)
    backend.corrupt_chunk(user)
    status, body, _ = rest_rank_by_user(front.rest_port, by_user_inputs(request))
    assert status == 500 and f"user {user}" in body["error"] and "corrupt" in body["error"], body


def test_killing_redis_is_unavailable_within_the_deadline_and_the_next_request_after_its_restart_succeeds(
    model, case, redis_server
):
    running, front = start_front(model, "in-process",
                                 open_store(redis_server.url, timeout_s=TIMEOUT_S), cache_bytes=0)
    try:
        user_request = user_inputs(case, np.random.default_rng(13))
        store_user(front.store, user_request)
        inputs = by_user_inputs(user_request)
        reference = rank_reference(model, user_request)
        assert_bitwise(rank_by_user(front, "grpc", inputs)[0], reference)
        for stop in ("kill", "freeze"):
            context = redis_server.frozen() if stop == "freeze" else contextlib.nullcontext()
            if stop == "kill":
                redis_server.kill()
            with context:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as error:
                    grpc_rank_by_user(front.grpc_port, inputs)
                assert error.value.code() == grpc.StatusCode.UNAVAILABLE, stop
                assert rest_rank_by_user(front.rest_port, inputs)[0] == 503, stop
                assert time.monotonic() - started < 2 * TIMEOUT_S + 1.0, stop
            if stop == "kill":
                redis_server.start()  # empty: persistence is off
                store_user(front.store, user_request)
                assert_bitwise(rank_by_user(front, "grpc", inputs)[0], reference)
        assert_bitwise(rank_by_user(front, "grpc", inputs)[0], reference)
    finally:
        running.stop()
        front.servable.close()


# The cache on its own.


def record(length, version=1):
    return UserRecord(np.arange(length, dtype=np.int64), np.zeros(length, np.int64), None, version)


class Reads:
    """read_many for the cache: counts calls, optionally waits for ``release``."""

    def __init__(self, length=10):
        self.calls, self.length, self.release = [], length, None

    def __call__(self, user_ids):
        self.calls.append(list(user_ids))
        if self.release is not None:
            assert self.release.wait(10)
        return [record(self.length, version=len(self.calls)) for _ in user_ids]


def test_concurrent_misses_for_one_user_do_one_store_read():
    reads = Reads()
    reads.release = threading.Event()
    cache = HistoryCache(reads, max_bytes=1 << 20, ttl_s=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(7))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    reads.release.set()
    for thread in threads:
        thread.join()
    assert reads.calls == [[7]]
    assert len(results) == 8 and all(result is results[0] for result in results)


def test_entries_expire_after_the_ttl():
    now = [0.0]
    reads = Reads()
    cache = HistoryCache(reads, max_bytes=1 << 20, ttl_s=5, clock=lambda: now[0])
    cache.get(1)
    now[0] = 4.9
    cache.get(1)
    assert len(reads.calls) == 1
    now[0] = 5.1
    assert cache.get(1).version == 2
    assert len(reads.calls) == 2


def test_the_byte_budget_evicts_the_least_recently_used():
    reads = Reads(length=100)  # 2 x 800 bytes + overhead per entry
    entry = 1600 + ENTRY_OVERHEAD_BYTES
    cache = HistoryCache(reads, max_bytes=3 * entry, ttl_s=60)
    for user in (1, 2, 3):
        cache.get(user)
    cache.get(1)  # 2 is now the least recently used
    cache.get(4)
    assert len(cache) == 3 and cache.bytes == 3 * entry
    calls = len(reads.calls)
    cache.get(1), cache.get(3), cache.get(4)
    assert len(reads.calls) == calls
    cache.get(2)
    assert len(reads.calls) == calls + 1
    small = HistoryCache(Reads(length=1000), max_bytes=entry, ttl_s=60)
    small.get(1)  # larger than the whole budget: served, not cached
    assert len(small) == 0 and small.bytes == 0


def test_an_eviction_during_a_read_keeps_the_older_record_out_of_the_cache():
    reads = Reads()
    reads.release = threading.Event()
    cache = HistoryCache(reads, max_bytes=1 << 20, ttl_s=60)
    thread = threading.Thread(target=cache.get, args=(5,))
    thread.start()
    time.sleep(0.2)
    cache.evict(5)  # an append landed while the read was in flight
    reads.release.set()
    thread.join()
    assert len(cache) == 0
    assert cache.get(5).version == 2


def test_a_failed_read_reaches_every_waiter_and_is_not_cached():
    calls = []

    def failing(user_ids):
        calls.append(user_ids)
        raise StoreUnavailable("down")

    cache = HistoryCache(failing, max_bytes=1 << 20, ttl_s=60)
    for _ in range(2):
        with pytest.raises(StoreUnavailable):
            cache.get(3)
    assert len(calls) == 2 and len(cache) == 0


def test_the_server_needs_a_model_or_a_forward_target(capsys):
    for argv, message in [
        ([], "exactly one of --model_base_path and --forward_to"),
        (["--model_base_path", "x", "--forward_to", "h:1"], "exactly one of"),
        (["--forward_to", "nohost"], "--forward_to: expected HOST:PORT"),
    ]:
        with pytest.raises(SystemExit) as stop:
            server.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.count("\n") == 1, err


def test_forward_mode_passes_on_the_other_servers_errors(model, case):
    _, port = model
    remote = forward.Remote("muse", f"127.0.0.1:{port}", LIMIT, timeout_s=30, wait_s=30)
    request = sc.rank_request(np.random.default_rng(10), case, LIMIT + 1, candidates=2)
    with pytest.raises(InvalidArgument, match=f"max_history_length={LIMIT}"):
        remote.predict(request, signatures.RANK)
    remote.close()
