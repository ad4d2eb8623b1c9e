"""Fresh items without retraining: a trained model exported again with the current item table.

An item created after training has no ID embedding and no row in the frozen multimodal table, so
the export scores it as an OOV item *without* a vector, and MUSE's multimodal search (GSU, SimTier,
SA-TA) ignores it. The refresh gives the export an item vocabulary extended by the new items and a
multimodal table holding the items file's vectors:

* every new item gets its own row whose ID embedding is a copy of the OOV row (so its ID scores
  exactly as OOV, as before) and whose multimodal vector is the file's: searched by its vector,
  as a candidate and in a history;
* a known item keeps its learned embedding; a vector in the file replaces its training one;
  known items the file lacks keep theirs;
* every other weight is the trained model's, unchanged.

The items file is Parquet with one row per item: ``item_id`` (int64), ``item_vector`` (a list of
``multimodal_dim`` values: int8 for an int8 model, floats for a float32 one) and optionally
``item_category``, whose IDs the training vocabulary lacks are counted (a request's
``item_category`` still decides the score, as OOV for such IDs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from muse_tf import cli
from muse_tf.config import ExperimentConfig, ModelConfig
from muse_tf.contract import features, vocabulary
from muse_tf.jobs import runs
from muse_tf.models import MuseModel

VECTOR = "item_vector"
COLUMNS = (features.ITEM_ID, VECTOR)


class ItemsFileError(cli.UsageError, ValueError):
    """An items file that cannot refresh the model; the message names the file and column."""


def _check_schema(path: str, schema: pa.Schema, config: ModelConfig) -> list[str]:
    """The columns to read, once their types fit a model of ``config``."""
    missing = [name for name in COLUMNS if name not in schema.names]
    if missing:
        raise ItemsFileError(f"items file {path}: column {missing[0]!r} missing; it needs "
                             f"{list(COLUMNS)} (and may have {features.ITEM_CATEGORY!r}).")
    id_columns = [name for name in (features.ITEM_ID, features.ITEM_CATEGORY) if name in schema.names]
    for name in id_columns:
        if not pa.types.is_integer(schema.field(name).type):
            raise ItemsFileError(f"items file {path}: column {name!r} is {schema.field(name).type}, "
                                 "expected int64 IDs.")
    vector_type = schema.field(VECTOR).type
    int8 = config.multimodal_dtype == "int8"
    is_list = pa.types.is_list(vector_type) or pa.types.is_large_list(vector_type)
    if not is_list or not (pa.types.is_int8 if int8 else pa.types.is_floating)(vector_type.value_type):
        expected = "list<int8>" if int8 else "a list of floats"
        raise ItemsFileError(f"items file {path}: column {VECTOR!r} is {vector_type}, expected "
                             f"{expected} (the model's multimodal_dtype is {config.multimodal_dtype}).")
    return [*id_columns, VECTOR]


def read_items(path: str, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads and checks an items file for a model of ``config``.

    Returns:
        (N,) int64 item IDs, (N, multimodal_dim) vectors in the model's storage dtype, and the
        (N,) int64 ``item_category`` IDs (None when the file has no such column).

    Raises:
        ItemsFileError: naming the file and the column: unreadable, a column missing or of the
            wrong type, a null, a duplicate ID, a vector of the wrong length, not finite or zero.
    """
    try:
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=_check_schema(path, schema, config))
    except (OSError, pa.ArrowException) as err:
        raise ItemsFileError(f"items file {path}: cannot be read as Parquet: {err}") from None
    for name in table.column_names:
        nulls = table.column(name).null_count
        if nulls:
            raise ItemsFileError(f"items file {path}: column {name!r} has {nulls} null value(s); "
                                 "every item needs an ID and a vector.")
    vectors = table.column(VECTOR).combine_chunks()
    lengths = pc.list_value_length(vectors).to_numpy()
    wrong = np.flatnonzero(lengths != config.multimodal_dim)
    if len(wrong):
        raise ItemsFileError(f"items file {path}: column {VECTOR!r} row {wrong[0]} has "
                             f"{lengths[wrong[0]]} values, the model's multimodal_dim is "
                             f"{config.multimodal_dim}.")
    flat = vectors.flatten()
    if flat.null_count:
        raise ItemsFileError(f"items file {path}: column {VECTOR!r} holds {flat.null_count} null "
                             "value(s) inside its vectors.")
    dtype = np.int8 if config.multimodal_dtype == "int8" else np.float32
    values = flat.to_numpy().astype(dtype).reshape(-1, config.multimodal_dim)
    if not np.isfinite(values).all():
        raise ItemsFileError(f"items file {path}: column {VECTOR!r} holds values that are not "
                             "finite as float32.")
    zero = np.flatnonzero(~values.any(axis=1))
    if len(zero):
        raise ItemsFileError(f"items file {path}: column {VECTOR!r} row {zero[0]} is all zeros, "
                             f"which the model reads as no vector ({len(zero)} such rows).")
    ids = table.column(features.ITEM_ID).to_numpy().astype(np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ItemsFileError(f"items file {path}: column {features.ITEM_ID!r} repeats item "
                             f"{unique[counts > 1][0]} ({int((counts > 1).sum())} duplicated IDs).")
    categories = (table.column(features.ITEM_CATEGORY).to_numpy().astype(np.int64)
                  if features.ITEM_CATEGORY in table.column_names else None)
    return ids, values, categories


def refreshed_items(
    item_vocabulary: np.ndarray, table: np.ndarray, ids: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The item vocabulary extended by the IDs it lacks, in the file's order, and the multimodal
    table with the file's vectors in their items' rows (the others as in ``table``).

    Returns:
        (extended vocabulary, extended table, mask over ``ids``: True for a new item).
    """
    index = vocabulary.lookup(item_vocabulary, ids)
    new = index == features.OOV
    extended = np.concatenate([np.asarray(item_vocabulary, np.int64), ids[new]])
    rows = np.concatenate([np.asarray(table), np.zeros((int(new.sum()), table.shape[1]), table.dtype)])
    index[new] = len(table) + np.arange(int(new.sum()))
    rows[index] = vectors
    return extended, rows, new


def extended_model(model: MuseModel, item_rows: int) -> MuseModel:
    """A copy of ``model`` whose item vocabulary has ``item_rows`` rows: its weights, with the
    item embedding's added rows copies of the OOV row (the multimodal table is left to the caller).
    """
    sizes = {**model.config.vocab_sizes, "item": item_rows}
    extended = runs.build_model(ExperimentConfig(model=dataclasses.replace(model.config, vocab_sizes=sizes)))
    item_embedding = model.embeddings.tables["item"].embeddings
    frozen = {id(model.multimodal.table), id(model.multimodal.inverse_norms)}
    for old, new in zip(model.variables, extended.variables, strict=True):
        if id(old) in frozen:
            continue
        value = old.numpy()
        if old is item_embedding:
            added = np.repeat(value[features.OOV : features.OOV + 1], item_rows - len(value), axis=0)
            value = np.concatenate([value, added])
        new.assign(value)
    return extended


def refresh(
    model: MuseModel,
    vocabularies: Mapping[str, np.ndarray],
    ids: np.ndarray,
    vectors: np.ndarray,
    categories: np.ndarray | None = None,
) -> tuple[MuseModel, dict[str, np.ndarray], dict[str, int]]:
    """``model`` and its ``vocabularies`` with the items of ``read_items`` (module docstring).

    Returns:
        The refreshed model and vocabularies (for ``saved_model.export_saved_model``), and counts:
        ``items``, ``new``, and with ``categories`` ``new_with_unknown_category``.
    """
    item_ids, table, new = refreshed_items(
        vocabularies["item"], model.multimodal.get_table(), ids, vectors
    )
    refreshed = extended_model(model, vocabulary.table_rows(item_ids))
    refreshed.set_multimodal_table(table)
    counts = {"items": len(ids), "new": int(new.sum())}
    if categories is not None:
        category_index = vocabulary.lookup(vocabularies["category"], categories[new])
        counts["new_with_unknown_category"] = int((category_index == features.OOV).sum())
    return refreshed, {**vocabularies, "item": item_ids}, counts


def describe(counts: Mapping[str, int], path: str) -> str:
    """One line on what a refresh took from the items file at ``path``."""
    line = f"Items: {counts['items']:,} in {path}, {counts['new']:,} new since training"
    if "new_with_unknown_category" in counts:
        line += f" ({counts['new_with_unknown_category']:,} of them in a category it lacks: OOV)"
    return line
