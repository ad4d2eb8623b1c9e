"""The feature spec: which raw tables and columns feed which model features, one versioned file
(YAML or JSON) per schema.

A conversion reads its raw columns through a spec and records the spec in the converted dataset's
manifest (``muse_tf.contract.dataset_dir.load_feature_spec``); from there one ``FeatureSpec``
object gives the records, the reader, the model, the export and the serving signatures their
feature lists. The Taobao-MM release is the packaged preset ``TAOBAO_MM`` (``specs/taobao_mm.yaml``),
the default wherever no spec is given. The model-side names of the fixed features (``user_id``,
``item_id``, ``item_category``, the history sequences, ``label``) are ``muse_tf.contract.features``;
a spec names the raw columns behind them and any number of user profile and item attribute
features (each a model name, a raw column, a vocabulary and an embedding width).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml

from muse_tf import cli
from muse_tf.contract import features

VERSION = 1
SPLIT = "{split}"  # placeholder of a per-split table name
VECTOR_DTYPES = ("int8", "float16", "float32")
HALF = "half"  # embedding_dim of a feature embedded at D // 2 (the official profile features 3-5)
# Vocabularies of the fixed features; a profile or attribute vocabulary must not reuse them.
FIXED_VOCABULARIES = {
    features.USER_ID: "user",
    features.ITEM_ID: "item",
    features.HISTORY_ITEMS: "item",
    features.ITEM_CATEGORY: "category",
    features.HISTORY_CATEGORIES: "category",
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_FIXED_NAMES = {*FIXED_VOCABULARIES, features.LABEL, features.USER_KEY}


class FeatureSpecError(cli.UsageError, ValueError):
    """A feature spec that cannot be used; the one-line message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Tables:
    """Raw table names; ``samples`` and ``users`` hold ``{split}`` (one table per split)."""

    samples: str
    users: str
    items: str
    vectors: str

    def per_split(self, table: str, split: str) -> str:
        """The name of ``table`` (``samples`` or ``users``) for ``split``."""
        return getattr(self, table).replace(SPLIT, split)


@dataclasses.dataclass(frozen=True)
class Feature:
    """A user profile or item attribute feature.

    Attributes:
        name: the model input, record and signature key.
        column: the raw column of integer IDs (in the users or the items table).
        vocabulary: the vocabulary (and so the embedding table) its IDs are looked up in.
        embedding_dim: the embedding width: an int, ``"half"`` (D // 2) or None (D, the model's
            ``embedding_dim``).
    """

    name: str
    column: str
    vocabulary: str
    embedding_dim: int | str | None = None

    def width(self, dim: int) -> int:
        """The embedding width when the model's D is ``dim``."""
        if self.embedding_dim is None:
            return dim
        return dim // 2 if self.embedding_dim == HALF else int(self.embedding_dim)


@dataclasses.dataclass(frozen=True)
class Multimodal:
    """The frozen multimodal vectors: a list column of ``dim`` values of ``dtype``."""

    column: str
    dim: int
    dtype: str

    @property
    def model_dtype(self) -> str:
        """How the model stores them (``ModelConfig.multimodal_dtype``): int8 or float32."""
        return "int8" if self.dtype == "int8" else "float32"


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """A whole schema; ``from_dict`` / ``load`` build and check one, ``to_dict`` inverts it."""

    version: int
    tables: Tables
    user_id: str
    item_id: str
    label: str
    item_category: str
    history_items: str
    history_categories: str
    user_profile: tuple[Feature, ...]
    item_attributes: tuple[Feature, ...]
    multimodal: Multimodal

    # -- the model's feature lists -------------------------------------------------------------
    @property
    def profile_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.user_profile)

    @property
    def attribute_features(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.item_attributes)

    @property
    def user_features(self) -> tuple[str, ...]:
        """Per-user scalars: the user ID, then the profile features."""
        return (features.USER_ID, *self.profile_features)

    @property
    def candidate_features(self) -> tuple[str, ...]:
        """Per-sample scalars: the item ID, its category, then the attributes."""
        return (features.ITEM_ID, features.ITEM_CATEGORY, *self.attribute_features)

    @property
    def scalar_features(self) -> tuple[str, ...]:
        """Scalar model inputs, shape (B,)."""
        return (*self.user_features, *self.candidate_features)

    @property
    def model_features(self) -> tuple[str, ...]:
        """Every model input: the scalars, then ``features.SEQUENCE_FEATURES`` (B, L)."""
        return self.scalar_features + features.SEQUENCE_FEATURES

    @property
    def vocabulary(self) -> dict[str, str]:
        """Model feature -> the vocabulary (embedding table) it is looked up in."""
        return {**FIXED_VOCABULARIES,
                **{f.name: f.vocabulary for f in self.user_profile + self.item_attributes}}

    @property
    def vocabularies(self) -> tuple[str, ...]:
        """Every vocabulary once: user, profile ones, item, category, attribute ones."""
        return tuple(dict.fromkeys(self.vocabulary[name] for name in self.model_features))

    def embedding_widths(self, dim: int) -> dict[str, int]:
        """Vocabulary -> its embedding width when the model's D is ``dim``."""
        widths = dict.fromkeys(self.vocabularies, dim)
        widths.update({f.vocabulary: f.width(dim) for f in self.user_profile + self.item_attributes})
        return widths

    # -- raw columns ---------------------------------------------------------------------------
    @property
    def column_feature(self) -> dict[str, str]:
        """Raw ID column -> the model feature its IDs become."""
        return {
            self.user_id: features.USER_ID,
            **{f.column: f.name for f in self.user_profile},
            self.item_id: features.ITEM_ID,
            self.item_category: features.ITEM_CATEGORY,
            **{f.column: f.name for f in self.item_attributes},
            self.history_items: features.HISTORY_ITEMS,
            self.history_categories: features.HISTORY_CATEGORIES,
        }

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values; ``from_dict`` inverts it."""
        values = dataclasses.asdict(self)
        for key in ("user_profile", "item_attributes"):
            values[key] = [{k: v for k, v in f.items() if v is not None} for f in values[key]]
        return values

    @classmethod
    def from_dict(cls, values: Any, source: str = "feature spec") -> FeatureSpec:
        """Builds and checks a spec.

        Raises:
            FeatureSpecError: one line naming ``source`` and the key that is wrong.
        """
        return _Parser(source).spec(values)

    @classmethod
    def load(cls, path: str) -> FeatureSpec:
        """Reads a spec file (YAML, of which JSON is a subset).

        Raises:
            FeatureSpecError: naming the file when it is missing or unreadable, or the key.
        """
        try:
            with open(path) as f:
                values = yaml.safe_load(f)
        except FileNotFoundError:
            raise FeatureSpecError(f"Feature spec {path} not found.") from None
        except OSError as err:
            raise FeatureSpecError(f"Feature spec {path} cannot be read: {err.strerror}.") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise FeatureSpecError(
                f"Feature spec {path} is not valid YAML or JSON: {cli.one_line(str(err))}"
            ) from None
        return cls.from_dict(values, source=path)

    def dumps(self) -> str:
        """The spec as JSON text."""
        return json.dumps(self.to_dict(), indent=2)


class _Parser:
    """Checks a spec mapping key by key; every error names ``source`` and the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> FeatureSpecError:
        return FeatureSpecError(f"{self.source}: `{key}` {problem}")

    def mapping(self, key: str, value: Any, fields: tuple[str, ...], optional: tuple[str, ...] = ()):
        if not isinstance(value, Mapping):
            raise self.fail(key or "(top level)", f"must be a mapping, got {type(value).__name__}.")
        unknown = sorted(set(value) - set(fields) - set(optional))
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                            f"is not a spec key; known: {', '.join(fields + optional)}.")
        for name in fields:
            if name not in value:
                raise self.fail(f"{key}.{name}" if key else name, "is missing.")
        return value

    def text(self, key: str, value: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML reads 205 as 205 but 150_2_180 as 1502180: a guess could be a wrong column.
            raise self.fail(key, f"must be a string, got the number {value!r}: quote numeric "
                                 "column names (\"205\").")
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}.")
        return value

    def name(self, key: str, value: Any) -> str:
        value = self.text(key, value)
        if not _NAME.match(value):
            raise self.fail(key, f"must be a letter then letters, digits or _, got {value!r}.")
        return value

    def positive(self, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be a positive integer, got {value!r}.")
        return value

    def feature(self, key: str, value: Any) -> Feature:
        self.mapping(key, value, ("name", "column"), ("vocabulary", "embedding_dim"))
        name = self.name(f"{key}.name", value["name"])
        if name in _FIXED_NAMES:
            raise self.fail(f"{key}.name", f"{name!r} is a fixed feature's name.")
        vocabulary = self.name(f"{key}.vocabulary", value.get("vocabulary", name))
        if vocabulary in FIXED_VOCABULARIES.values():
            raise self.fail(f"{key}.vocabulary", f"{vocabulary!r} is a fixed feature's vocabulary.")
        dim = value.get("embedding_dim")
        if dim is not None and dim != HALF:
            if isinstance(dim, str):
                raise self.fail(f"{key}.embedding_dim", f"must be a positive integer or {HALF!r}, "
                                                        f"got {dim!r}.")
            self.positive(f"{key}.embedding_dim", dim)
        return Feature(name, self.text(f"{key}.column", value["column"]), vocabulary, dim)

    def features(self, key: str, value: Any) -> tuple[Feature, ...]:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of features, got {type(value).__name__}.")
        return tuple(self.feature(f"{key}[{i}]", item) for i, item in enumerate(value))

    def spec(self, values: Any) -> FeatureSpec:
        columns = ("user_id", "item_id", "label", "item_category", "history_items",
                   "history_categories")
        self.mapping("", values, ("version", "tables", *columns, "multimodal"),
                     ("user_profile", "item_attributes"))
        if values["version"] != VERSION:
            raise self.fail("version", f"must be {VERSION} (this muse_tf's), got {values['version']!r}.")
        tables = self.mapping("tables", values["tables"], ("samples", "users", "items", "vectors"))
        for name in ("samples", "users"):
            if SPLIT not in self.text(f"tables.{name}", tables[name]):
                raise self.fail(f"tables.{name}", f"must hold {SPLIT} (one table per split), "
                                                  f"got {tables[name]!r}.")
        if tables["users"] == tables["samples"]:
            raise self.fail("tables.users", "must name another table than `tables.samples`.")
        multimodal = self.mapping("multimodal", values["multimodal"], ("column", "dim", "dtype"))
        dtype = multimodal["dtype"]
        if dtype not in VECTOR_DTYPES:
            raise self.fail("multimodal.dtype", f"must be one of {', '.join(VECTOR_DTYPES)}, "
                                                f"got {dtype!r}.")
        dim = self.positive("multimodal.dim", multimodal["dim"])
        if dtype == "int8" and dim % 4:
            raise self.fail("multimodal.dim", f"must be a multiple of 4 for int8 vectors, got {dim}.")
        spec = FeatureSpec(
            version=VERSION,
            tables=Tables(**{k: self.text(f"tables.{k}", v) for k, v in tables.items()}),
            **{k: self.text(k, values[k]) for k in columns},
            user_profile=self.features("user_profile", values.get("user_profile")),
            item_attributes=self.features("item_attributes", values.get("item_attributes")),
            multimodal=Multimodal(self.text("multimodal.column", multimodal["column"]), dim, dtype),
        )
        self.check_unique(spec)
        return spec

    def check_unique(self, spec: FeatureSpec) -> None:
        """Two features of one name would overwrite each other, and two features of one column
        in one table read it twice."""
        for key, names in (("name", [f.name for f in spec.user_profile + spec.item_attributes]),
                           ("column", [spec.user_id, *(f.column for f in spec.user_profile),
                                       spec.history_items, spec.history_categories]),
                           ("column", [spec.item_id, spec.item_category,
                                       *(f.column for f in spec.item_attributes)])):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise FeatureSpecError(f"{self.source}: the {key} {repeated[0]!r} is used twice.")


def _preset(name: str) -> FeatureSpec:
    path = resources.files("muse_tf.contract") / "specs" / f"{name}.yaml"
    return FeatureSpec.from_dict(yaml.safe_load(path.read_text()), source=f"the {name} preset")


TAOBAO_MM = _preset("taobao_mm")
