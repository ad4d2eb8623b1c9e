"""Fresh items (``python -m muse_tf.export --items``): a new version whose new items are searched by
their vectors, scores equal to a Keras model that already held those vectors, learned weights kept,
and one-line refusals of bad items files."""

import contextlib
import io
import os
import re
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from muse_tf import export
from muse_tf.config import ModelConfig
from muse_tf.contract import features, signatures, vocabulary
from muse_tf.jobs import item_refresh, runs
from tests import serving_case as sc
from tests.cli_helpers import assert_usage_error

NEW_ITEM = 4_242_424_242_424


def write_items(path, ids, vectors, **columns):
    vector_type = pa.list_(pa.from_numpy_dtype(np.asarray(vectors).dtype))
    table = pa.table({"item_id": pa.array(ids, pa.int64()),
                      "item_vector": pa.array(list(vectors), vector_type), **columns})
    pq.write_table(table, path)
    return str(path)


def unpacked_table(model):
    """The model's int8 multimodal table, from its packed int32 weight (``pack_int8``'s layout)."""
    return model.multimodal.table.numpy().view(np.int8).copy()


def reference_case(case, rows):
    """``case`` with a copy of its model whose multimodal table has ``rows`` (index -> vector) set:
    putting the new item's vector in the OOV row gives what an OOV item with that vector scores."""
    model = runs.build_model(runs.ExperimentConfig(model=case.model.config))
    model.set_weights(case.model.get_weights())
    table = unpacked_table(case.model)
    for index, vector in rows.items():
        table[index] = vector
    model.set_multimodal_table(table)
    return sc.Case(model, case.vocabularies, case.item_category)


def run(export_dir, signature, request):
    outputs = tf.saved_model.load(export_dir).signatures[signature](
        **{name: tf.constant(np.asarray(value)) for name, value in request.items()}
    )
    return outputs[signatures.LOGIT].numpy()


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    """A run exported as version 1, then again with an items file (two new items, a known item's
    new vector) as version 2, what the refresh printed, and the requests that score them."""
    tmp = tmp_path_factory.mktemp("refresh")
    case = sc.make_case(seed=0)
    data_dir = sc.write_dataset(tmp / "data", case.vocabularies)
    run_dir = sc.write_finished_run(tmp / "run", case, data_dir)
    rng = np.random.default_rng(11)
    known = case.vocabularies["item"][7]
    vectors = rng.integers(-127, 128, (3, 128)).astype(np.int8)
    # Categories: the first new item's and the known item's are unknown; only new items count.
    items = write_items(tmp / "items.parquet", [NEW_ITEM, known, NEW_ITEM + 1], vectors,
                        item_category=pa.array([11, 12, case.vocabularies["category"][0]]))
    common = ["--model-dir", run_dir.root, "--data", data_dir, "--export-dir", str(tmp / "exports")]
    before = export.main(common)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        after = export.main([*common, "--items", items])
    # The new item among the candidates and in the history; no other unknown item (the reference
    # gives the OOV row the new item's vector, which would reach any other unknown item too).
    history, categories = sc.raw_history(rng, case, 300, unknown_share=0)
    history[[40, 120, 299]] = NEW_ITEM
    request = sc.rank_request(rng, case, 0, candidates=6)
    request.update(history_items=history, history_categories=categories)
    request["item_id"] = np.array([NEW_ITEM, *case.vocabularies["item"][[3, 7, 8, 9]], known])
    rows = sc.rows_request(rng, case, [300, 17], width=300)
    rows["item_id"][:] = NEW_ITEM
    rows["history_items"][:] = history
    rows["history_categories"][:] = categories
    reference = reference_case(case, {features.OOV: vectors[0], vocabulary.RESERVED + 7: vectors[1]})
    return types.SimpleNamespace(
        case=case, reference=reference, before=before, after=after, request=request, rows=rows,
        items=items, printed=printed.getvalue(), common=common,
    )


def test_a_new_items_vector_changes_its_score_to_that_of_a_model_holding_the_vector(refreshed):
    r = refreshed
    assert (os.path.basename(r.before), os.path.basename(r.after)) == ("1", "2")
    old, new = run(r.before, signatures.RANK, r.request), run(r.after, signatures.RANK, r.request)
    np.testing.assert_allclose(old, sc.keras_rank(r.case, r.request), rtol=0, atol=1e-5)
    np.testing.assert_allclose(new, sc.keras_rank(r.reference, r.request), rtol=0, atol=1e-5)
    assert abs(new[0] - old[0]) > 1e-3 and abs(new[-1] - old[-1]) > 1e-3  # new item, new vector
    old_rows = run(r.before, signatures.SERVING_DEFAULT, r.rows)
    new_rows = run(r.after, signatures.SERVING_DEFAULT, r.rows)
    np.testing.assert_allclose(old_rows, sc.keras_rows(r.case, r.rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(new_rows, sc.keras_rows(r.reference, r.rows), rtol=0, atol=1e-5)
    assert np.abs(new_rows - old_rows).min() > 1e-3


def test_a_refresh_keeps_every_learned_weight(refreshed):
    def weights(path):  # keyed by path below the model's (process-unique) name
        variables = tf.saved_model.load(path).model_variables
        return {re.sub(r"^muse_model(_\d+)?/", "", v.name): v.numpy() for v in variables}

    old, new = weights(refreshed.before), weights(refreshed.after)
    assert old.keys() == new.keys()
    changed = {"item_embedding/embeddings:0", "multimodal/table:0", "multimodal/inverse_norms:0"}
    for name in old.keys() - changed:
        np.testing.assert_array_equal(new[name], old[name], err_msg=name)
    item_old, item_new = old["item_embedding/embeddings:0"], new["item_embedding/embeddings:0"]
    assert item_new.shape == (len(item_old) + 2, item_old.shape[1])
    np.testing.assert_array_equal(item_new[: len(item_old)], item_old)
    np.testing.assert_array_equal(item_new[-2:], item_old[[features.OOV] * 2])  # new items: OOV's


def test_the_refresh_reports_new_items_and_their_unknown_categories(refreshed):
    assert (f"Items: 3 in {refreshed.items}, 2 new since training (1 of them in a category it "
            "lacks: OOV)\n") in refreshed.printed


def bad_items(tmp_path):
    """(file, message) for items files a refresh must refuse."""
    ones = np.ones((2, 128), np.int8)
    path = str(tmp_path / "bad.parquet")
    cases = [
        (lambda: pq.write_table(pa.table({"item_id": [1, 2]}), path), "column 'item_vector' missing"),
        (lambda: write_items(path, [1, 2], ones.astype(np.float64)),
         "column 'item_vector' is list<.*double>, expected list<int8>"),
        (lambda: write_items(path, [1, 2], np.ones((2, 64), np.int8)),
         "column 'item_vector' row 0 has 64 values, the model's multimodal_dim is 128"),
        (lambda: write_items(path, [5, 5], ones), "column 'item_id' repeats item 5"),
        (lambda: pq.write_table(pa.table({"item_id": [1, 2], "item_vector": pa.array(
            [list(ones[0]), None], pa.list_(pa.int8()))}), path),
         "column 'item_vector' has 1 null value(s)"),
        (lambda: write_items(path, [1, 2], ones, item_category=pa.array(["a", "b"])),
         "column 'item_category' is string, expected int64 IDs"),
        (lambda: write_items(path, [1, 2], (ones * [[1], [0]]).astype(np.int8)),
         "column 'item_vector' row 1 is all zeros, which the model reads as no vector (1 such rows)"),
        (lambda: open(path, "w").write("item_id,item_vector\n"), "cannot be read as Parquet"),
    ]
    return path, cases


def test_bad_items_files_are_refused_with_the_column_named(tmp_path):
    config = ModelConfig()  # int8 vectors of 128
    path, cases = bad_items(tmp_path)
    for write, message in cases:
        write()
        pattern = re.escape(f"items file {path}: ") + re.escape(message).replace(r"\.\*", ".*")
        with pytest.raises(item_refresh.ItemsFileError, match=pattern):
            item_refresh.read_items(path, config)


def test_float32_models_take_float_vectors_and_refuse_non_finite_ones(tmp_path):
    config = ModelConfig(multimodal_dtype="float32", multimodal_dim=8)
    vectors = np.full((2, 8), 0.5, np.float16)
    path = write_items(tmp_path / "a.parquet", [3, 1], vectors)
    ids, read, categories = item_refresh.read_items(path, config)
    assert read.dtype == np.float32 and categories is None
    np.testing.assert_array_equal(ids, [3, 1])
    np.testing.assert_array_equal(read, vectors.astype(np.float32))
    vectors[1, 2] = np.inf
    with pytest.raises(item_refresh.ItemsFileError, match="not finite"):
        item_refresh.read_items(write_items(tmp_path / "b.parquet", [3, 1], vectors), config)


def test_the_cli_refuses_a_bad_items_file_in_one_line_before_loading_the_model(
    refreshed, tmp_path, capsys, monkeypatch
):
    items = write_items(tmp_path / "items.parquet", [1, 1], np.ones((2, 128), np.int8))

    def build_model(*args, **kwargs):
        raise AssertionError("the model was built before the items file was checked")

    monkeypatch.setattr(runs, "build_model", build_model)
    message = f"items file {items}: column 'item_id' repeats item 1 (1 duplicated IDs)."
    assert_usage_error(capsys, export.main, "muse_tf.export", re.escape(message) + "$",
                       [*refreshed.common, "--items", items])
