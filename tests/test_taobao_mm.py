"""Conversion of Taobao-MM Parquet (the real demo heads) to vocabularies, tables and shards."""

import errno
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from muse_tf.contract import dataset_dir, features, lock, vocabulary
from muse_tf.contract.feature_spec import TAOBAO_MM
from pipelines import taobao_mm
from pipelines.common import output_dir, parquet_input
from pipelines.common.join_check import TablesDoNotJoin
from pipelines.common.options import ConversionOptions
from pipelines.common.parquet_input import InputError
from pipelines.common.summary import EmptyTrainingSplit
from pipelines.local import driver
from tests.pipeline_helpers import (
    DEMO_DIR,
    as_rows,
    demo_tables,
    index_maps,
    read_samples,
    reference_split,
    tiny_synthetic,
    write_tables,
)

HISTORY = 500


def _convert(input_dir, output, **kwargs):
    kwargs.setdefault("shards", {"train": 2, "test": 2})
    return driver.convert(ConversionOptions(str(input_dir), str(output), **kwargs), workers=1)


def _check_balanced(split):
    for part in [split, *split["shards"]]:
        assert part["samples_in"] == part["samples_written"] + sum(part["rejected"].values())
        rows = part["user_rows"]
        assert (
            rows["in"]
            == rows["written"] + rows["unmatched"] + rows["duplicate"] + rows["missing_id"]
        )


def _stitched_demo(tables):
    """The demo rows, re-pointed so that they join, plus one row for each data rule."""
    train_users = tables["train_user_features"].copy()
    test_users = tables["test_user_features"]
    items = tables["item_features"]["205"].tolist()
    scl_items = tables["scl_embedding_int8_p90"]["205"].tolist()
    once, twice = tables["train_samples"]["205"].tolist()[:2]
    users = train_users["129_1"].tolist()

    with_gaps = train_users.at[1, "150_2_180"].copy()
    with_gaps[10:15] = 0  # missing history values: dropped with their categories
    train_users.at[1, "150_2_180"] = with_gaps
    duplicate = train_users.iloc[[0]].assign(**{"130_1": 7})  # a second row: the first wins
    mismatched = train_users.iloc[[2]].assign(**{"129_1": 4242})
    mismatched.at[mismatched.index[0], "151_2_180"] = mismatched.iloc[0]["151_2_180"][:-1]
    train_users = pd.concat([train_users, duplicate, mismatched], ignore_index=True)

    good = [[1, 0], [0, 1]]
    train_items = [
        items[0],
        items[0],
        items[1],
        items[1],
        scl_items[0],
        scl_items[1],
        twice,
        twice,
        once,
        users[0],
    ]
    train = [(good[i % 2], users[i], item) for i, item in enumerate(train_items)]
    train += [
        ([1, 1], users[0], items[2]),  # malformed labels
        ([0, 0], users[1], items[2]),
        ([1], users[2], items[2]),
        ([1, 0], 0, scl_items[2]),  # missing IDs
        ([1, 0], users[3], 0),
        ([0, 1], 12345, scl_items[3]),  # user without features
        ([1, 0], 4242, scl_items[4]),  # mismatched history
    ]
    test_ids = test_users["129_1"].tolist()
    test_items = [items[0], items[5], scl_items[6], twice, once, 99, scl_items[0]]
    test = [(good[i % 2], test_ids[i], item) for i, item in enumerate(test_items)]
    test += [(good[0], 777, items[0])]

    item_rows = pd.concat(
        [
            tables["item_features"],
            tables["item_features"].iloc[[0]].assign(**{"206": 5}),
            tables["item_features"].iloc[[1]].assign(**{"205": 0}),
        ],
        ignore_index=True,
    )
    scl = tables["scl_embedding_int8_p90"]
    scl_rows = pd.concat(
        [
            scl,
            scl.iloc[[0]].assign(**{"205_c": [np.ones(128, np.int8)]}),
            pd.DataFrame({"205": [31337], "205_c": [np.ones(64, np.int8)]}),
        ],
        ignore_index=True,
    )

    def samples(rows):
        return pd.DataFrame(
            {
                "label_0": [np.array(r[0], np.int8) for r in rows],
                "129_1": [r[1] for r in rows],
                "205": [r[2] for r in rows],
            }
        )

    return {
        "train_samples": samples(train),
        "test_samples": samples(test),
        "train_user_features": train_users,
        "test_user_features": test_users,
        "item_features": item_rows,
        "scl_embedding_int8_p90": scl_rows,
    }


def _expected_vocabularies(tables, item_min_count):
    train, users, items = (
        tables["train_samples"],
        tables["train_user_features"],
        tables["item_features"],
    )
    scl = tables["scl_embedding_int8_p90"]

    def kept(values, min_count=1):
        counts = pd.Series(np.asarray(values, np.int64)).value_counts()
        return set(counts[(counts >= min_count) & (counts.index != 0)].index)

    item_counts = np.concatenate([train["205"], np.concatenate(users["150_2_180"].to_numpy())])
    with_vector = set(scl["205"][scl["205_c"].map(len) == 128])
    expected = {
        "user": kept(train["129_1"]),
        "item": kept(item_counts, item_min_count) | with_vector,
        "category": kept(
            np.concatenate([np.concatenate(users["151_2_180"].to_numpy()), items["206"]])
        ),
        "attr_213": kept(items["213"]),
        "attr_214": kept(items["214"]),
    }
    expected.update({f"profile_{i}": kept(users[f"130_{i}"]) for i in range(1, 6)})
    return {name: np.array(sorted(ids), np.int64) for name, ids in expected.items()}


def _expected_adjustments(tables, split, vocabs, history_length):
    """Counts of the documented adjustments, from the written samples of the reference rules."""
    users = tables[f"{split}_user_features"].drop_duplicates("129_1").set_index("129_1")
    scl = tables["scl_embedding_int8_p90"]
    with_vector = set(scl["205"][scl["205_c"].map(len) == 128])
    known_items = set(tables["item_features"]["205"])
    counts, written_users = Counter(), set()
    for sample in tables[f"{split}_samples"].to_dict("records"):
        user = sample["129_1"]
        if (
            user == 0
            or sample["205"] == 0
            or list(sample["label_0"]) not in ([1, 0], [0, 1])
            or user not in users.index
            or len(users.at[user, "150_2_180"]) != len(users.at[user, "151_2_180"])
        ):
            continue
        length = int(np.count_nonzero(users.at[user, "150_2_180"]))
        counts["history_truncated"] += length > history_length
        counts["history_short"] += length < history_length
        in_vocab = sample["205"] in vocabs["item"]
        counts["item_without_features"] += in_vocab and sample["205"] not in known_items
        counts["item_without_scl"] += sample["205"] not in with_vector
        if user not in written_users:
            written_users.add(user)
            counts["history_missing_values"] += int(
                np.count_nonzero(users.at[user, "150_2_180"] == 0)
            )
    return counts


def _refusal(tables, input_dir, split="train"):
    """The one line a split that does not join is refused with, its counts from pandas."""
    samples, users = tables[f"{split}_samples"]["129_1"], tables[f"{split}_user_features"]["129_1"]
    assert not set(samples) & set(users), "the input must not join"
    return (f"{input_dir}: {split}_samples and {split}_user_features share no user ID (129_1): "
            f"{len(samples):,} sample rows of {samples.nunique():,} users, {len(users):,} user "
            f"feature rows of {users.nunique():,} users, 0 users in both; refused before any "
            "shard was written (no sample of the split would join).")


def test_demo_heads_that_do_not_join_are_refused_before_any_work(tmp_path, capsys):
    """The demo heads share no user between samples and user features: the conversion stops with
    the counts before it claims the output (no shard, no work directory); the command line says
    it in one line."""
    message = _refusal(demo_tables(), DEMO_DIR)
    with pytest.raises(TablesDoNotJoin) as err:
        _convert(DEMO_DIR, tmp_path / "out")
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(["--input", str(DEMO_DIR), "--output", str(tmp_path / "out"),
                        "--workers", "1", "--train-shards", "2", "--test-shards", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "out").exists()


def test_synthetic_tables_that_do_not_join_are_refused_before_any_work(tmp_path):
    """Synthetic train user features re-keyed (no user in common; the test split still joins):
    refused with the counts, nothing written. With one user's ID kept, the conversion runs (one
    user in common is enough) and writes that user's samples."""
    tiny_synthetic(tmp_path / "in")
    path = tmp_path / "in" / "train_user_features.parquet"
    users = pd.read_parquet(path)
    users.assign(**{"129_1": users["129_1"] + 10**12}).to_parquet(path, index=False)
    tables = {"train_samples": pd.read_parquet(tmp_path / "in" / "train_samples.parquet"),
              "train_user_features": pd.read_parquet(path)}
    with pytest.raises(TablesDoNotJoin) as err:
        _convert(tmp_path / "in", tmp_path / "out")
    assert str(err.value) == _refusal(tables, tmp_path / "in")
    assert not (tmp_path / "out").exists()
    kept = tables["train_samples"]["129_1"][0]
    rekeyed = users["129_1"].where(users["129_1"] == kept, users["129_1"] + 10**12)
    users.assign(**{"129_1": rekeyed}).to_parquet(path, index=False)
    manifest = _convert(tmp_path / "in", tmp_path / "out")
    assert manifest["splits"]["train"]["samples_written"] == int(
        (tables["train_samples"]["129_1"] == kept).sum())


def test_tables_that_join_but_write_no_training_sample_are_refused_after_the_join(tmp_path):
    """The late check still stands behind the early one: users that join, every train label
    malformed."""
    tiny_synthetic(tmp_path / "in")
    path = tmp_path / "in" / "train_samples.parquet"
    samples = pd.read_parquet(path)
    samples.assign(label_0=[[1, 1]] * len(samples)).to_parquet(path, index=False)
    with pytest.raises(EmptyTrainingSplit, match="no training sample was written") as err:
        _convert(tmp_path / "in", tmp_path / "out")
    assert f"{len(samples)} malformed_label" in str(err.value)
    assert not (tmp_path / "out" / dataset_dir.MANIFEST).exists()


def test_stitched_demo_reads_back_the_source_values_and_counts_every_rule(tmp_path, monkeypatch):
    tables = _stitched_demo(demo_tables())
    monkeypatch.setattr(
        parquet_input, "BATCH_BYTES", 40_000
    )  # ~2 users a batch: rules span batches
    write_tables(tmp_path / "in", tables)
    out = tmp_path / "out"
    manifest = _convert(tmp_path / "in", out, history_cap=HISTORY, min_count={"item": 2})

    vocabs = dataset_dir.load_vocabularies(str(out))
    expected_vocabs = _expected_vocabularies(tables, item_min_count=2)
    for name in TAOBAO_MM.vocabularies:
        np.testing.assert_array_equal(vocabs[name], expected_vocabs[name], err_msg=name)
    maps = index_maps(str(out))
    for split in ("train", "test"):
        summary = manifest["splits"][split]
        _check_balanced(summary)
        expected_rows, rejected = reference_split(tables, str(out), split, HISTORY)
        read = read_samples(dataset_dir.split_files(str(out), split), HISTORY)
        assert as_rows(read) == sorted(expected_rows)
        assert summary["rejected"] == {r: rejected[r] for r in summary["rejected"]}
        expected_adjusted = _expected_adjustments(tables, split, maps, HISTORY)
        assert summary["adjusted"] == {a: expected_adjusted[a] for a in summary["adjusted"]}
        for name, count in summary["oov"].items():
            values = read[name]
            if values.ndim == 2:  # stored once per user record
                _, first = np.unique(read[features.USER_KEY], return_index=True)
                values = values[first]
            assert count == np.count_nonzero(values == features.OOV), (split, name)
    assert sum(manifest["splits"]["train"]["rejected"].values()) == 7
    assert manifest["splits"]["train"]["adjusted"]["history_missing_values"] == 5
    assert manifest["item_features"]["duplicate"] == 1
    assert manifest["item_features"]["missing_id"] == 1
    assert manifest["multimodal"]["duplicate"] == 1
    assert manifest["multimodal"]["malformed"] == 1
    table = dataset_dir.load_multimodal_table(str(out))
    scl = tables["scl_embedding_int8_p90"].iloc[:10]
    rows = vocabulary.lookup(vocabs["item"], scl["205"].to_numpy())
    np.testing.assert_array_equal(table[rows], np.stack(scl["205_c"].to_numpy()))


def test_rerun_resumes_only_unfinished_shards(tmp_path, capsys):
    tables = _stitched_demo(demo_tables())
    write_tables(tmp_path / "in", tables)
    out = tmp_path / "out"
    first = _convert(tmp_path / "in", out, history_cap=HISTORY, keep_work=True)
    shard = out / first["splits"]["train"]["shards"][1]["file"]
    original = shard.read_bytes()
    shard.unlink()
    (out / dataset_dir.MANIFEST).unlink()
    capsys.readouterr()
    second = _convert(tmp_path / "in", out, history_cap=HISTORY, keep_work=True)
    log = capsys.readouterr().err
    assert shard.read_bytes() == original
    assert second == first
    redone = [line for line in log.splitlines() if "[shards" in line and "done before" not in line]
    assert len(redone) == 1 and first["splits"]["train"]["shards"][1]["file"] in redone[0]
    (out / dataset_dir.MANIFEST).unlink()
    with pytest.raises(FileExistsError, match="other inputs or options"):
        _convert(tmp_path / "in", out, history_cap=HISTORY + 1)
    _convert(tmp_path / "in", out, history_cap=HISTORY)
    with pytest.raises(FileExistsError, match="already holds a converted dataset"):
        _convert(tmp_path / "in", out, history_cap=HISTORY)
    assert _convert(tmp_path / "in", out, history_cap=HISTORY, overwrite=True) == first


def _demo_copy(tmp_path):
    """The demo rows, stitched so that they join (the join is checked before the scan)."""
    tables = _stitched_demo(demo_tables())
    write_tables(tmp_path / "in", tables)
    return tables


def test_wrong_schema_names_the_file_and_column(tmp_path):
    tables = _demo_copy(tmp_path)
    path = tmp_path / "in" / "train_samples.parquet"
    tables["train_samples"].assign(**{"205": "x"}).to_parquet(path, index=False)
    with pytest.raises(InputError, match=r"train_samples\.parquet: column '205' is string"):
        _convert(tmp_path / "in", tmp_path / "out")
    tables["train_samples"].drop(columns="label_0").to_parquet(path, index=False)
    with pytest.raises(InputError, match=r"train_samples\.parquet: column 'label_0' missing"):
        _convert(tmp_path / "in", tmp_path / "out")


def test_unreadable_or_missing_file_stops_with_its_name(tmp_path):
    _demo_copy(tmp_path)
    (tmp_path / "in" / "item_features.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(InputError, match=r"item_features\.parquet: unreadable"):
        _convert(tmp_path / "in", tmp_path / "out")
    (tmp_path / "in" / "item_features.parquet").unlink()
    with pytest.raises(InputError, match="no Parquet file for table 'item_features'"):
        _convert(tmp_path / "in", tmp_path / "out")


def test_command_line_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(["--help"])
    assert exit_info.value.code == 0
    assert "--input" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(["--input", str(tmp_path / "absent"), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_ids_above_the_int64_range_name_their_file_and_column(tmp_path):
    tables = _demo_copy(tmp_path)
    ids = tables["item_features"]["205"].to_numpy().astype(np.uint64) >> np.uint64(1)  # < 2^63
    ids[3] = 2**63 + 5
    path = tmp_path / "in" / "item_features.parquet"
    tables["item_features"].assign(**{"205": ids}).to_parquet(path, index=False)
    with pytest.raises(InputError, match=r"item_features\.parquet: column '205' holds the ID "
                       f"{2**63 + 5}"):
        _convert(tmp_path / "in", tmp_path / "out")
    ids[3] = 2**63 - 1  # the largest int64: an ordinary ID
    tables["item_features"].assign(**{"205": ids}).to_parquet(path, index=False)
    manifest = _convert(tmp_path / "in", tmp_path / "out2")
    assert manifest["input_rows"]["item_features"] == len(ids)


def test_a_damaged_page_is_caught_by_its_checksum_and_named(tmp_path):
    tables = _demo_copy(tmp_path)
    path = tmp_path / "in" / "item_features.parquet"
    table = pa.Table.from_pandas(tables["item_features"], preserve_index=False)
    pq.write_table(
        table, path, compression="NONE", use_dictionary=False, write_page_checksum=True
    )
    raw = bytearray(path.read_bytes())
    column = pq.ParquetFile(path).metadata.row_group(0).column(1)  # '206': one plain int64 page
    raw[column.data_page_offset + column.total_compressed_size - 1] ^= 0x40  # the last value
    path.write_bytes(bytes(raw))
    # Unverified, the damage decodes silently into other IDs; that is what the checksum prevents.
    unverified = pq.ParquetFile(path).read().column("206").to_numpy()
    assert (unverified != tables["item_features"]["206"].to_numpy()).sum() == 1
    with pytest.raises(InputError, match=r"item_features\.parquet: unreadable Parquet data"):
        _convert(tmp_path / "in", tmp_path / "out")


def test_a_full_disk_names_the_path_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """The item tables are memory-mapped: their blocks are reserved first, so a full disk is an
    error naming the file (not SIGBUS on a later write), and the next run picks up from there."""
    write_tables(tmp_path / "in", _stitched_demo(demo_tables()))
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--workers", "1",
            "--train-shards", "2", "--test-shards", "2", "--history-cap", str(HISTORY)]

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(args)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "out of disk space" in message and "run the same command again to resume" in message
    assert str(tmp_path / "out" / "_work" / "item_attributes.npy") in message
    monkeypatch.undo()
    taobao_mm.main(args)
    log = capsys.readouterr().err
    assert "[scan" in log and all(
        "done before" in line for line in log.splitlines() if line.startswith("[scan")
    )
    resumed = dataset_dir.load_manifest(str(tmp_path / "out"))
    clean = _convert(tmp_path / "in", tmp_path / "clean", history_cap=HISTORY)
    assert resumed["splits"]["train"]["samples_written"] > 0
    assert {k: v for k, v in resumed.items() if k != "source"} == {
        k: v for k, v in clean.items() if k != "source"
    }


def test_files_of_another_conversion_are_refused_and_overwrite_lists_only_its_own(tmp_path):
    """A killed conversion's shards (another shard count, another engine) never join a manifest."""
    tiny_synthetic(tmp_path / "in")
    out = tmp_path / "out"
    stale = out / "train" / "part-00004-of-00005.tfrecord.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a shard of a killed run")
    with pytest.raises(FileExistsError, match=f"{out} holds {stale}, which no unfinished"):
        _convert(tmp_path / "in", out, history_cap=8)
    (out / output_dir.BEAM_WORK).mkdir()
    with pytest.raises(FileExistsError, match="unfinished conversion of the other engine"):
        _convert(tmp_path / "in", out, history_cap=8)
    manifest = _convert(tmp_path / "in", out, history_cap=8, overwrite=True)
    listed = sorted(s["file"] for split in manifest["splits"].values() for s in split["shards"])
    assert listed == [f"{split}/part-0000{k}-of-00002.tfrecord.gz"
                      for split in ("test", "train") for k in (0, 1)]
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/part-*")) == listed
    assert not (out / output_dir.BEAM_WORK).exists() and (out / output_dir.LOCK).read_text() == ""


def _lock_of(output, pid, host):
    output.mkdir(parents=True, exist_ok=True)
    (output / output_dir.LOCK).write_text(json.dumps(
        {"pid": pid, "host": host, "command": "python -m pipelines.taobao_mm", "started": "then"}
    ))


def test_a_second_writer_is_refused_by_the_lock_and_a_dead_holders_lock_is_taken_over(
    tmp_path, capsys
):
    args = _tiny_args(tmp_path)
    out, lock_file = tmp_path / "out", tmp_path / "out" / output_dir.LOCK
    out.mkdir()
    with lock.hold(str(lock_file), "the first", command="python -m pipelines.taobao_mm --first"):
        with pytest.raises(SystemExit) as stop:  # a writer at work: one line, exit status 2
            taobao_mm.main(args)
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(
        f"python -m pipelines.taobao_mm: error: {out} is in use by pid {os.getpid()} on "
        f"{socket.gethostname()}, running `python -m pipelines.taobao_mm --first` since "
    ) and line.endswith("; wait for it to end, or choose another --output.")
    _lock_of(out, 1, "elsewhere")  # another host's: not guessed about
    with pytest.raises(lock.BusyError, match=re.escape(f"If that process is gone, delete {lock_file}")):
        _convert(tmp_path / "in", out, history_cap=8)
    assert not (out / "_work").exists()  # refused before anything was written

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = int(finished.stdout)
    _lock_of(out, dead, socket.gethostname())  # a killed run's
    capsys.readouterr()
    manifest = _convert(tmp_path / "in", out, history_cap=8)
    assert (f"Taking over the stale lock {lock_file}: pid {dead} on {socket.gethostname()}"
            in capsys.readouterr().out)
    assert manifest["splits"]["train"]["samples_written"] > 0
    assert lock_file.read_text() == ""  # free after a normal exit
    again = _convert(tmp_path / "in", out, history_cap=8, overwrite=True)  # not blocked by it
    assert again["splits"] == manifest["splits"]


def test_a_remote_outputs_lock_refuses_a_second_writer_and_is_removed_after_it(tmp_path):
    """``ram://`` stands in for ``gs://``: the same ``tf.io.gfile`` calls, no ``os.open``."""
    import tensorflow as tf

    output = "ram://muse_tf_test_remote_lock/out"
    params = {"inputs": "x"}
    with output_dir.claimed(output, output_dir.BEAM_WORK, params, overwrite=False, resumable=False):
        with pytest.raises(lock.BusyError, match=re.escape(
            f"{output} is in use by pid {os.getpid()} on {socket.gethostname()}, running "
        )):
            with output_dir.claimed(
                output, output_dir.BEAM_WORK, params, overwrite=False, resumable=False
            ):
                pass
    assert not tf.io.gfile.exists(f"{output}/{output_dir.LOCK}")
    with output_dir.claimed(output, output_dir.BEAM_WORK, params, overwrite=True, resumable=False):
        pass


def _tiny_args(tmp_path):
    tiny_synthetic(tmp_path / "in")
    return ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--workers", "1",
            "--train-shards", "2", "--test-shards", "1", "--history-cap", "8"]


class _FullDiskWriter:
    """A TFRecordWriter on a full disk: TensorFlow reports ENOSPC as ResourceExhaustedError."""

    def __init__(self, path, options):
        self.path = path

    def write(self, record):
        import tensorflow as tf

        raise tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left on device")

    def close(self):
        pass


def test_a_full_disk_while_writing_a_shard_names_the_shard(tmp_path, monkeypatch, capsys):
    """TensorFlow's own write error becomes the one line naming the shard; the next run resumes."""
    import tensorflow as tf

    args = _tiny_args(tmp_path)
    monkeypatch.setattr(tf.io, "TFRecordWriter", _FullDiskWriter)
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(args)
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    shard = tmp_path / "out" / dataset_dir.shard_name("train", 0, 2)
    assert line == (f"python -m pipelines.taobao_mm: error: out of disk space writing {shard} (No "
                    "space left on device); free some space and run the same command again to "
                    "resume.")
    monkeypatch.undo()
    assert taobao_mm.main(args)["splits"]["train"]["samples_written"] > 0


def test_a_failed_manifest_write_names_the_manifest(tmp_path, monkeypatch, capsys):
    """A buffered write fails without a file name; the line names the manifest all the same."""
    args = _tiny_args(tmp_path)
    real = json.dump

    def read_only(value, f, **kwargs):
        if f.name.endswith(f"{dataset_dir.MANIFEST}.tmp"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(value, f, **kwargs)

    monkeypatch.setattr(json, "dump", read_only)
    with pytest.raises(SystemExit) as exit_info:
        taobao_mm.main(args)
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"python -m pipelines.taobao_mm: error: {tmp_path / 'out' / dataset_dir.MANIFEST}"
                    f": {os.strerror(errno.EROFS)}; fix that and run the same command again to "
                    "resume.")
