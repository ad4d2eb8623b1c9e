"""The history store's contract (``serving.history.store``), one suite run on SQLite and on a real
Redis server: every read is checked against a plain list of the behaviours written, trimmed to the
cap by slicing."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time

import numpy as np
import pytest

from serving.history import chunks
from serving.history.store import CorruptRecord, StoreUnavailable, open_store
from tests.history_backends import TIMEOUT_S, RedisBackend, SqliteBackend

C = chunks.CHUNK
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# What a failure may take beyond the deadline.
SLACK_S = 0.5


def ids(count: int, seed: int) -> np.ndarray:
    """``count`` int64 IDs over the whole range, the extremes included when there is room."""
    values = np.random.default_rng(seed).integers(INT64_MIN, INT64_MAX, count, np.int64,
                                                  endpoint=True)
    values[: min(count, 3)] = [INT64_MIN, INT64_MAX, 0][: min(count, 3)]
    return values


def newest_of(values: list, newest: int) -> list:
    return values[-newest:] if newest else []


def assert_history(record, items, categories):
    assert record.items.dtype == np.int64 and record.categories.dtype == np.int64
    assert record.items.tolist() == list(items)
    assert record.categories.tolist() == list(categories)


def test_extreme_int64_ids_round_trip_in_order(backend):
    store = backend.open()
    items = [INT64_MIN, INT64_MAX, 0, -1, 1, INT64_MIN]
    categories = [0, INT64_MAX, INT64_MIN, 5, -5, INT64_MAX]
    for user in (INT64_MIN, INT64_MAX, 0):
        store.write(user, items, categories, {"user_profile_1": INT64_MIN})
    for user in (INT64_MIN, INT64_MAX, 0):
        record = store.read(user, 100)
        assert_history(record, items, categories)
        assert record.profile == {"user_profile_1": INT64_MIN}
    assert_history(store.read(0, 4), items[-4:], categories[-4:])


def test_empty_history_is_stored_and_read_as_empty(backend):
    store = backend.open()
    assert store.write(1, [], [], {"user_profile_1": 3}) == 1
    assert store.append(2, [], []) == 1
    for user, profile in ((1, {"user_profile_1": 3}), (2, None)):
        record = store.read(user, 100)
        assert_history(record, [], [])
        assert record.profile == profile and record.version == 1
    store.append(1, [7], [8])
    assert_history(store.read(1, 0), [], [])
    assert_history(store.read(1, 5), [7], [8])


def test_history_of_100k_round_trips_and_appends_trim_to_the_cap(backend):
    cap = 100_000
    store = backend.open(cap=cap)
    items, categories = ids(cap, 1), ids(cap, 2)
    store.write(5, items, categories)
    assert_history(store.read(5, cap), items, categories)
    assert_history(store.read(5, 1000), items[-1000:], categories[-1000:])
    more_items, more_categories = ids(C + 5, 3), ids(C + 5, 4)
    store.append(5, more_items, more_categories)
    expected_items = np.concatenate([items, more_items])[-cap:]
    expected_categories = np.concatenate([categories, more_categories])[-cap:]
    assert_history(store.read(5, 10 * cap), expected_items, expected_categories)


@pytest.mark.parametrize("length", [C - 1, C, C + 1, 2 * C])
def test_histories_at_chunk_boundaries_read_back_at_every_cut(backend, length):
    store = backend.open(cap=3 * C)
    reference_items, reference_categories = [], []
    for step, count in enumerate([length, 1, C - 1, C, C + 1]):
        items, categories = ids(count, 10 + step), ids(count, 20 + step)
        if step == 0:
            store.write(9, items, categories)
        else:
            store.append(9, items, categories)
        reference_items = (reference_items + items.tolist())[-3 * C:]
        reference_categories = (reference_categories + categories.tolist())[-3 * C:]
        for newest in (0, 1, C - 1, C, C + 1, length, 3 * C, 4 * C):
            assert_history(store.read(9, newest), newest_of(reference_items, newest),
                           newest_of(reference_categories, newest))


def test_cap_keeps_exactly_the_newest_behaviours(backend):
    cap = C + 3
    store = backend.open(cap=cap)
    rng = np.random.default_rng(7)
    reference_items, reference_categories = [], []
    for step in range(40):
        count = int(rng.choice([0, 1, 2, 5, C - 2, C, cap, cap + 7, 3 * C]))
        items, categories = ids(count, 100 + step), ids(count, 200 + step)
        if step % 13 == 0:
            store.write(3, items, categories)
            reference_items, reference_categories = [], []
        else:
            store.append(3, items, categories)
        reference_items = (reference_items + items.tolist())[-cap:]
        reference_categories = (reference_categories + categories.tolist())[-cap:]
        assert_history(store.read(3, 10 * cap), reference_items, reference_categories)
    assert len(reference_items) == cap  # the cap was reached, and not only by a write


def test_versions_strictly_increase_with_every_write_and_append(backend):
    store = backend.open()
    versions = [store.append(4, [1], [1])]
    versions += [store.write(4, [2], [2]), store.append(4, [], []), store.write(4, [], [])]
    versions += [store.append(4, [3] * (C + 1), [3] * (C + 1))]
    versions.append(store.read(4, 1).version)
    assert versions[:-1] == sorted(set(versions[:-1])) and versions[0] >= 1
    assert versions[-1] == versions[-2]


def _append_rounds(url: str, worker: int, rounds: int, start, results) -> None:
    """Appends ``rounds`` batches tagged by ``worker`` to user 1 once every worker is ready;
    puts the versions on ``results``."""
    store = open_store(url, cap=10**6, timeout_s=30.0)
    start.wait()
    results.put((worker, [store.append(1, [worker * 1000 + r] * 3, [worker] * 3)
                          for r in range(rounds)]))
    store.close()


def check_concurrent_appends(store, versions_by_worker, workers, rounds):
    """Nothing lost: every batch is there, whole, in its worker's order; one version per append."""
    record = store.read(1, 10**6)
    assert len(record.items) == 3 * workers * rounds
    batches = record.items.reshape(-1, 3)
    assert (batches == batches[:, :1]).all()
    for worker in range(workers):
        mine = batches[batches[:, 0] // 1000 == worker][:, 0]
        assert mine.tolist() == [worker * 1000 + r for r in range(rounds)]
        assert (record.categories.reshape(-1, 3)[batches[:, 0] // 1000 == worker] == worker).all()
    versions = sorted(v for vs in versions_by_worker for v in vs)
    assert versions == list(range(1, workers * rounds + 1)) == [record.version - i for i in
                                                                 range(workers * rounds)][::-1]


def test_concurrent_appenders_in_threads_lose_nothing(backend):
    workers, rounds = 4, 100
    store = backend.open(cap=10**6, timeout_s=30.0)
    start, results = threading.Barrier(workers), queue.Queue()

    def run(worker):
        start.wait()
        results.put((worker, [store.append(1, [worker * 1000 + r] * 3, [worker] * 3)
                              for r in range(rounds)]))

    threads = [threading.Thread(target=run, args=(worker,), daemon=True)
               for worker in range(workers)]
    for thread in threads:
        thread.start()
    versions = [results.get(timeout=60)[1] for _ in range(workers)]  # Empty: a worker failed
    check_concurrent_appends(store, versions, workers, rounds)


def test_concurrent_appenders_in_processes_lose_nothing(backend):
    workers, rounds = 3, 100
    backend.open()  # the schema exists before the workers race
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_append_rounds,
                                 args=(backend.url, worker, rounds, start, results))
                 for worker in range(workers)]
    for process in processes:
        process.start()
    versions = [results.get(timeout=60)[1] for _ in range(workers)]
    for process in processes:
        process.join()
        assert process.exitcode == 0
    check_concurrent_appends(backend.open(), versions, workers, rounds)


def test_read_many_answers_known_and_unknown_users_in_request_order(backend):
    store = backend.open()
    store.write(10, [1, 2], [3, 4], {"user_profile_2": 9})
    store.append(30, [5], [6])
    records = store.read_many([30, 20, 10, 30, INT64_MAX], 1)
    assert records[1] is None and records[4] is None
    assert_history(records[0], [5], [6])
    assert_history(records[3], [5], [6])
    assert_history(records[2], [2], [4])
    assert records[2].profile == {"user_profile_2": 9} and records[0].profile is None
    assert store.read_many([], 5) == []


def test_unknown_user_reads_as_none(backend):
    store = backend.open()
    assert store.read(123, 10) is None
    store.write(124, [1], [1])
    assert store.read(123, 10) is None


def test_profile_round_trips_survives_appends_and_is_replaced_by_a_write(backend):
    store = backend.open()
    profile = {f"user_profile_{i}": value for i, value in
               enumerate([INT64_MIN, INT64_MAX, 0, -7, 12345], start=1)}
    store.write(8, [1], [2], profile)
    store.append(8, [3], [4])
    assert store.read(8, 5).profile == profile
    store.write(8, [5], [6])
    assert store.read(8, 5).profile is None


def test_misaligned_or_out_of_range_behaviours_are_refused_naming_the_user(backend):
    store = backend.open()
    with pytest.raises(ValueError, match="user 77: 2 items but 1 categories"):
        store.append(77, [1, 2], [3])
    with pytest.raises(ValueError, match="user 77: behaviours must be int64"):
        store.write(77, [2**63], [0])
    with pytest.raises(ValueError, match="user ID 18446744073709551616: outside int64"):
        store.read(2**64, 5)
    assert store.read(77, 5) is None


@pytest.mark.parametrize("damage", ["corrupt_chunk", "corrupt_profile"])
def test_corrupt_record_is_an_error_naming_the_user(backend, damage):
    store = backend.open()
    store.write(-42, list(range(10)), list(range(10)), {"user_profile_1": 1})
    store.write(43, [1], [1])
    getattr(backend, damage)(-42)
    with pytest.raises(CorruptRecord, match="user -42: "):
        store.read_many([43, -42], 5)
    if damage == "corrupt_chunk":
        with pytest.raises(CorruptRecord, match="user -42: "):
            store.append(-42, [1], [1])
    assert_history(store.read(43, 5), [1], [1])


def assert_unavailable_within_deadline(operation):
    start = time.monotonic()
    with pytest.raises(StoreUnavailable, match="history store (sqlite|redis)://"):
        operation()
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S


def test_sqlite_write_lock_held_elsewhere_fails_writes_in_time_and_delays_no_reader(tmp_path):
    backend = SqliteBackend(f"sqlite:///{tmp_path / 'history.db'}")
    store = backend.open()
    store.write(1, [1], [2])
    with contextlib.closing(backend.raw()) as other:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE users SET version = version")
        start = time.monotonic()
        assert_history(store.read(1, 5), [1], [2])
        assert time.monotonic() - start < TIMEOUT_S / 2
        assert_unavailable_within_deadline(lambda: store.append(1, [3], [4]))
        assert_unavailable_within_deadline(lambda: store.write(1, [3], [4]))
        other.execute("COMMIT")
    assert store.append(1, [3], [4]) == 2


def test_redis_down_or_frozen_is_unavailable_in_time_and_the_next_request_after_restart_works(
    redis_server,
):
    store = RedisBackend(redis_server).open()
    store.write(1, [1], [2])
    with redis_server.frozen():
        assert_unavailable_within_deadline(lambda: store.read_many([1, 2], 5))
        assert_unavailable_within_deadline(lambda: store.append(1, [3], [4]))
    # the timed-out append was sent: the server may still apply it when it resumes
    assert store.read(1, 5).items.tolist() in ([1], [1, 3])
    redis_server.kill()
    try:
        assert_unavailable_within_deadline(lambda: store.read(1, 5))
        assert_unavailable_within_deadline(lambda: store.write(1, [3], [4]))
    finally:
        redis_server.start()
    # a restarted server without persistence has forgotten the user and the scripts
    assert store.read(1, 5) is None
    assert store.append(1, [3], [4]) == 1
    assert_history(store.read_many([1], 5)[0], [3], [4])


@pytest.mark.parametrize("url", [
    "sqlite://relative.db", "sqlite:///", "postgres://host/db", "history.db",
    "redis://localhost:port/0", "redis://localhost:6379/first",
])
def test_bad_url_is_a_one_line_value_error_naming_it(url):
    with pytest.raises(ValueError) as error:
        open_store(url)
    assert url in str(error.value) and "\n" not in str(error.value)


def test_an_append_rewrites_at_most_the_last_chunk_and_trims_whole_chunks():
    data = np.arange(2 * 5, dtype="<i8").tobytes()  # 5 behaviours
    end = 100 * C + 3
    plan = chunks.plan_append(head=7, length=end - 7, last_chunk=b"x" * 3 * 16, data=data,
                              cap=end - 7 - 2)
    assert sorted(plan.put) == [100] and plan.put[100][:48] == b"x" * 48
    assert plan.head == 7 + 5 + 2 and plan.drop == range(0, 0)
    plan = chunks.plan_append(head=7, length=end - 7, last_chunk=b"x" * 48, data=data,
                              cap=end - 2 * C)
    assert plan.head == 2 * C + 5 and plan.drop == range(0, 2)
