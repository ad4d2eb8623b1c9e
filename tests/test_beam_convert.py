"""The Beam pipeline (DirectRunner) against the rules' reference and the local engine's output."""

import errno
import os
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from muse_tf.contract import dataset_dir, features
from muse_tf.contract.feature_spec import TAOBAO_MM
from muse_tf.data.synthetic import SyntheticConfig
from pipelines import beam_convert
from pipelines.common import output_dir, synthetic_parquet
from pipelines.common.join_check import TablesDoNotJoin
from pipelines.common.options import ConversionOptions
from pipelines.local import driver
from tests.pipeline_helpers import (
    DEMO_DIR,
    TABLES,
    as_rows,
    demo_tables,
    read_samples,
    reference_split,
    tiny_synthetic,
    write_tables,
)
from tests.test_taobao_mm import HISTORY, _stitched_demo

launcher = pytest.importorskip(
    "pipelines.beam.launcher", reason="apache-beam is not installed (pip install -e '.[beam]')"
)

metrics = launcher.metrics
DIRECT = ("--runner", "DirectRunner", "--direct_num_workers", "1")
# Manifest entries that depend on how records are spread over shards, not on what they hold.
SHARD_LAYOUT = ("shards", "bytes", "bytes_per_sample")


def _records(data_dir, split):
    """Every user record of a split as {user_key: {feature: values}}, read with TensorFlow alone."""
    manifest = dataset_dir.load_manifest(str(data_dir))
    files = [str(data_dir / s["file"]) for s in manifest["splits"][split]["shards"]]
    records = {}
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(raw)
        values = {k: tuple(v.int64_list.value) for k, v in example.features.feature.items()}
        (key,) = values[features.USER_KEY]
        assert key not in records, f"user {key} has two records in {split}"
        records[key] = values
    return records


def _without_layout(manifest):
    splits = {
        name: {k: v for k, v in split.items() if k not in SHARD_LAYOUT}
        for name, split in manifest["splits"].items()
    }
    return {**{k: v for k, v in manifest.items() if k != "source"}, "splits": splits}


def _convert_both(input_dir, tmp_path, history_cap, item_min_count):
    """The local engine from Python, the Beam one through its command line (Beam's own options
    mixed with the conversion's)."""
    local = driver.convert(
        ConversionOptions(
            str(input_dir),
            str(tmp_path / "local"),
            shards={"train": 2, "test": 2},
            history_cap=history_cap,
            min_count={"item": item_min_count},
        ),
        workers=1,
    )
    beam = beam_convert.main([
        "--input", str(input_dir), "--output", str(tmp_path / "beam"), DIRECT[0], DIRECT[1],
        "--train-shards", "3", "--test-shards", "1", "--history-cap", str(history_cap),
        *DIRECT[2:], "--min-count", f"item={item_min_count}",
    ])
    return local, beam


def _assert_same_tables(tmp_path, local, beam):
    """Same manifest (but for the shard layout), vocabularies and multimodal table."""
    assert _without_layout(beam) == _without_layout(local)
    for name in TAOBAO_MM.vocabularies:
        np.testing.assert_array_equal(
            dataset_dir.load_vocabulary(str(tmp_path / "beam"), name),
            dataset_dir.load_vocabulary(str(tmp_path / "local"), name),
            err_msg=name,
        )
    np.testing.assert_array_equal(
        dataset_dir.load_multimodal_table(str(tmp_path / "beam")),
        dataset_dir.load_multimodal_table(str(tmp_path / "local")),
    )


def _assert_same_output(tmp_path, local, beam):
    _assert_same_tables(tmp_path, local, beam)
    assert len(beam["splits"]["train"]["shards"]) == 3
    for split in ("train", "test"):
        assert _records(tmp_path / "beam", split) == _records(tmp_path / "local", split)


def test_stitched_demo_follows_every_rule_and_matches_the_local_engine(tmp_path):
    """Every reject reason, adjustment and first-row-wins case, against the row-by-row reference."""
    tables = _stitched_demo(demo_tables())
    write_tables(tmp_path / "in", tables)
    local, beam = _convert_both(tmp_path / "in", tmp_path, history_cap=HISTORY, item_min_count=2)
    for split in ("train", "test"):
        expected_rows, rejected = reference_split(tables, str(tmp_path / "beam"), split, HISTORY)
        read = read_samples(dataset_dir.split_files(str(tmp_path / "beam"), split), HISTORY)
        assert as_rows(read) == sorted(expected_rows)
        summary = beam["splits"][split]
        assert summary["rejected"] == {r: rejected[r] for r in summary["rejected"]}
        assert summary["samples_in"] == summary["samples_written"] + sum(rejected.values())
    assert sum(beam["splits"]["train"]["rejected"].values()) == 7
    assert beam["item_features"]["duplicate"] == 1 and beam["multimodal"]["malformed"] == 1
    _assert_same_output(tmp_path, local, beam)


def _with_malformed_histories(directory):
    """Synthetic tables in which a few users' category histories are longer or shorter than their
    item histories (rows the join must reject alone, among well-formed rows of the same batch)."""
    tables = {name: pd.read_parquet(directory / f"{name}.parquet") for name in TABLES}
    for split, rows in (("train", {3: 3, 40: -2, 41: 1}), ("test", {5: -5})):
        users = tables[f"{split}_user_features"]
        for row, change in rows.items():
            categories = list(users.at[row, "151_2_180"])
            users.at[row, "151_2_180"] = (
                categories + categories[:change] if change > 0 else categories[:change]
            )
    write_tables(directory, tables)
    return tables


PROGRESS = re.compile(r"^\[beam\] so far ([\d,]+) input rows read; train: ([\d,]+) samples of "
                      r"[\d,]+ users written; test: ([\d,]+) samples", re.MULTILINE)


def test_synthetic_data_with_malformed_histories_matches_the_reference_and_the_local_engine(
    tmp_path, capsys, monkeypatch,
):
    config = SyntheticConfig(
        users=120, behaviours_per_user=80, items=1500, clusters=8, short_history_fraction=0.2, seed=5
    )
    synthetic_parquet.generate(config, str(tmp_path / "in"))
    tables = _with_malformed_histories(tmp_path / "in")
    monkeypatch.setattr(metrics, "PROGRESS_EVERY_S", 0.0)  # a line at every count
    capsys.readouterr()
    local, beam = _convert_both(tmp_path / "in", tmp_path, history_cap=60, item_min_count=2)
    # The Beam conversion said how far it had got as it went: counts that only grow, up to the
    # input's rows and the samples written.
    progress = [[int(n.replace(",", "")) for n in m.groups()]
                for m in PROGRESS.finditer(capsys.readouterr().err)]
    assert progress == sorted(progress) and len(progress) > 10
    assert progress[-1] == [sum(len(t) for t in tables.values()),
                            beam["splits"]["train"]["samples_written"],
                            beam["splits"]["test"]["samples_written"]]
    for split in ("train", "test"):
        expected_rows, rejected = reference_split(tables, str(tmp_path / "local"), split, 60)
        read = read_samples(dataset_dir.split_files(str(tmp_path / "local"), split), 60)
        assert as_rows(read) == sorted(expected_rows)
        assert rejected["malformed_history"] > 0
        assert local["splits"][split]["rejected"] == {
            r: rejected[r] for r in local["splits"][split]["rejected"]
        }
    assert beam["splits"]["train"]["samples_written"] > 500
    assert beam["vocabularies"]["item"]["kept_by_scl"] > 0
    _assert_same_output(tmp_path, local, beam)
    with pytest.raises(FileExistsError, match="already holds a converted dataset"):
        launcher.convert(ConversionOptions(str(tmp_path / "in"), str(tmp_path / "beam")),
                         pipeline_args=DIRECT)


def test_the_command_hands_unknown_options_to_beam(tmp_path, capsys):
    tiny_synthetic(tmp_path / "in")
    with pytest.raises(SystemExit) as stop:
        beam_convert.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--runner", "NoSuchRunner"])
    assert stop.value.code == 2  # Beam's own refusal of the runner, as a one-line usage error
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("python -m pipelines.beam_convert: error: ")
    assert "pipeline runner: NoSuchRunner" in line  # Beam's words: the option reached Beam


class _FullDisk:
    """A file whose writes fail as on a full disk (no file name, as a buffered write's)."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_an_unfinished_runs_leftovers_are_refused_or_cleared(tmp_path, monkeypatch, capsys):
    """A Beam run stopped by a full disk writing its manifest (named) leaves its shards, like a
    killed run; they never join another run's manifest: with other options they are refused before
    the pipeline runs, with the same options cleared and the run redone (Beam cannot resume)."""
    tiny_synthetic(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), *DIRECT, "--test-shards", "1",
            "--train-shards", "3"]
    create = launcher.FileSystems.create
    monkeypatch.setattr(launcher.FileSystems, "create", lambda path, *a, **kw: (
        _FullDisk if path.endswith(f"{dataset_dir.MANIFEST}.tmp") else lambda f: f)(create(path, *a, **kw)))
    with pytest.raises(SystemExit) as stop:
        beam_convert.main(args)
    assert stop.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"out of disk space writing {out / dataset_dir.MANIFEST} (No space left" in line
    monkeypatch.undo()
    (out / "train" / "beam-temp-part-0").mkdir()  # what a killed WriteToTFRecord leaves
    (out / "train" / "beam-temp-part-0" / "junk").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        beam_convert.main([*args, "--train-shards", "2"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out} holds an unfinished conversion of other inputs or options" in line
    beam_convert.main(args)
    assert f"{out}: clearing the unfinished conversion" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"part-0000{k}-of-00003.tfrecord.gz" for k in range(3)
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        dataset_dir.MANIFEST, dataset_dir.MULTIMODAL_TABLE, dataset_dir.VOCAB_DIR, "train", "test",
        output_dir.LOCK,
    ])
    assert (out / output_dir.LOCK).read_text() == ""  # the lock, free


def test_a_mistyped_beam_option_is_refused_naming_it(tmp_path, capsys):
    tiny_synthetic(tmp_path / "in")
    with pytest.raises(SystemExit) as stop:
        beam_convert.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                           "--runer", "DirectRunner"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == ("python -m pipelines.beam_convert: error: --runer: neither an option of this "
                    "command nor a Beam pipeline option (did you mean --runner?).")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["demo", "synthetic"])
def test_tables_that_do_not_join_are_refused_alike_before_any_work(source, tmp_path):
    """Train samples and user features that share no user (the demo's heads; synthetic ones
    re-keyed): both engines refuse them with the same line before the output is created."""
    if source == "demo":
        if not DEMO_DIR.is_dir():
            pytest.skip(f"Taobao-MM demo data not found at {DEMO_DIR}.")
        input_dir = DEMO_DIR
    else:
        input_dir = tmp_path / "in"
        tiny_synthetic(input_dir)
        path = input_dir / "train_user_features.parquet"
        users = pd.read_parquet(path)
        users.assign(**{"129_1": users["129_1"] + 10**12}).to_parquet(path, index=False)
    with pytest.raises(TablesDoNotJoin, match="share no user ID") as local:
        driver.convert(ConversionOptions(str(input_dir), str(tmp_path / "local"),
                                         history_cap=HISTORY), workers=1)
    with pytest.raises(TablesDoNotJoin, match="share no user ID") as beam:
        launcher.convert(ConversionOptions(str(input_dir), str(tmp_path / "beam"),
                                           history_cap=HISTORY), pipeline_args=DIRECT)
    assert str(beam.value) == str(local.value)
    assert not (tmp_path / "local").exists() and not (tmp_path / "beam").exists()
