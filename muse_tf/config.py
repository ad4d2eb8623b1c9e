"""Typed configuration: dataclasses loadable from YAML with ``key=value`` overrides.

Unknown keys are errors (a misspelt key must never be silently ignored), and every model variant of
the paper is a named preset of three choices: the general search unit, the attention over the
retrieved behaviours, and whether SimTier features are used.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import yaml

from muse_tf import cli
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec

ATTENTION_CHOICES = ("ta", "sata")
SHORT_TERM_ATTENTIONS = ("linear", "din")
EMBEDDING_OPTIMIZERS = ("sparse_adam", "adam")
VALIDATION_MONITORS = ("gauc", "auc")
DENSE_OPTIMIZERS = ("adam", "adamw")
LEARNING_RATE_SCHEDULES = ("constant", "warmup_cosine")


class ConfigError(cli.UsageError, ValueError):
    """A config value, file or override that cannot be used; the message names the key or file.
    A ``ValueError`` for library callers, one line and exit 2 on a command line."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the paper's comparisons: which features the tower receives.

    Every variant feeds the tower the official model's input layout (docs/fidelity.md); a feature
    the variant lacks is a block of zeros, as the official ``din`` method zeroes the lifelong ones.

    Attributes:
        gsu: which general search unit picks the top-K behaviours, a name in
            ``muse_tf.layers.search.SEARCH_UNITS``; None = no lifelong branch (its three features
            are zeros). ``mm``: cosine of frozen multimodal embeddings (MUSE); ``id``: cosine of the
            learned item ID embedding; ``id_category``: cosine of learned item+category embeddings
            (SIM-soft); ``category``: most recent behaviours of the target's category (SIM-hard);
            ``mm_id``: sum of the multimodal and item-ID cosines.
        attention: attention over the K found: ``ta`` (ID target attention), ``sata``
            (semantic-aware) or None (zeros).
        simtier: SimTier of the K found behaviours' multimodal similarities (else zeros).
        recent_simtier: SimTier of the R most recent behaviours' multimodal similarities (else
            zeros); part of the official short-term branch, so only ``din_id_only`` lacks it.
    """

    gsu: str | None
    attention: str | None
    simtier: bool
    recent_simtier: bool = True


VARIANTS: dict[str, Variant] = {
    "din": Variant(gsu=None, attention=None, simtier=False),
    "din_id_only": Variant(gsu=None, attention=None, simtier=False, recent_simtier=False),
    "sim_hard": Variant(gsu="category", attention="sata", simtier=True),
    "sim_soft": Variant(gsu="id_category", attention="sata", simtier=True),
    "muse": Variant(gsu="mm", attention="sata", simtier=True),
    "ta": Variant(gsu="mm", attention="ta", simtier=False),
    "simtier": Variant(gsu="mm", attention=None, simtier=True),
    "ta_simtier": Variant(gsu="mm", attention="ta", simtier=True),
    "sata": Variant(gsu="mm", attention="sata", simtier=False),
    "sata_simtier": Variant(gsu="mm", attention="sata", simtier=True),
}


def _refuse_non_finite(config: Any, prefix: str) -> None:
    """NaN passes every ``<= 0`` check (a NaN learning rate trains a run of NaN losses), so every
    float field is checked for NaN and infinity first; ``prefix`` is the section's key prefix."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"`{prefix}{field.name}` must be a finite number, got {value}.")


def _default_vocab_sizes() -> dict[str, int]:
    return {name: 1000 for name in TAOBAO_MM.vocabularies}


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to build a model (and to rebuild it from a saved config).

    Attributes:
        variant: the model, a key of ``VARIANTS``: ``muse``, a baseline (``din``, ``sim_hard``,
            ``sim_soft``, as the official code defines them; ``din_id_only``: DIN without the
            recent SimTier) or an ablation (``ta``, ``simtier``, ``ta_simtier``, ``sata``).
        gsu: overrides the variant's search unit (``mm``, ``id``, ``id_category``, ``category``,
            ``mm_id``; the paper's Table 1/2 studies); None keeps it.
        feature_spec: the profile and attribute features the model embeds and their widths
            (``muse_tf.contract.feature_spec``); None = the Taobao-MM preset. The training CLI
            sets it from the converted data (with ``multimodal_dim`` and, for float vectors,
            ``multimodal_dtype``).
        vocab_sizes: rows of each embedding table, by vocabulary name (``FeatureSpec.vocabularies``),
            including the PAD and OOV rows; the training CLI sets them from the converted data.
        embedding_dim: D, the width of every ID embedding the feature spec does not size otherwise
            (Taobao-MM's profile features 3-5 use D // 2 as in the official code).
        multimodal_dim: width of the frozen multimodal (SCL) vectors.
        multimodal_dtype: ``int8`` (stored quantised, e.g. Taobao-MM's trunc(127 v)) or ``float32``.
            Only cosines of the vectors are used, so an int8 scale does not matter.
        top_k: K, behaviours kept by the search unit.
        recent_length: R, most recent behaviours in the short-term branch.
        attention_heads: heads of the lifelong attention (1 in the paper).
        short_term_attention: the attention over the R most recent behaviours: ``linear`` (the
            official code's: linear query and key projections, dot-product scores, softmax;
            ``LinearTargetAttention``) or ``din`` (DIN's activation unit, an MLP with Dice
            scoring [q, k, q - k, q * k], as the paper's text describes it; ``TargetAttention``).
        din_attention_units: hidden widths of the DIN attention MLP (``short_term_attention: din``).
        mlp_units: hidden widths of the tower (a final 1-unit logit layer is added).
        simtier_eps: SimTier tier width.
        simtier_dim: width of each tier's learned embedding.
        use_cross: put a DCN cross layer in front of the tower.
    """

    variant: str = "muse"
    gsu: str | None = None
    feature_spec: FeatureSpec | None = None
    vocab_sizes: dict[str, int] = dataclasses.field(default_factory=_default_vocab_sizes)
    embedding_dim: int = 16
    multimodal_dim: int = 128
    multimodal_dtype: str = "int8"
    top_k: int = 50
    recent_length: int = 50
    attention_heads: int = 1
    short_term_attention: str = "linear"
    din_attention_units: list[int] = dataclasses.field(default_factory=lambda: [64, 32])
    mlp_units: list[int] = dataclasses.field(default_factory=lambda: [256, 128, 64])
    simtier_eps: float = 0.1
    simtier_dim: int = 1
    use_cross: bool = False

    def __post_init__(self) -> None:
        _refuse_non_finite(self, "")
        if self.variant not in VARIANTS:
            raise ConfigError(f"Unknown `variant` {self.variant!r}; choose one of {sorted(VARIANTS)}.")
        if self.gsu is not None:
            # The registry of search units owns the names; imported here, as it needs TensorFlow.
            from muse_tf.layers.search.units import SEARCH_UNITS

            if self.gsu not in SEARCH_UNITS:
                raise ConfigError(f"Unknown `gsu` {self.gsu!r}; choose one of {list(SEARCH_UNITS)}.")
        missing = set(self.features.vocabularies) - set(self.vocab_sizes)
        if missing:
            raise ConfigError(f"`vocab_sizes` lacks {sorted(missing)}.")
        for name, size in self.vocab_sizes.items():
            if size < 2:
                raise ConfigError(f"`vocab_sizes[{name!r}]` must be >= 2 (PAD and OOV), got {size}.")
        for name in ("embedding_dim", "multimodal_dim", "top_k", "recent_length", "attention_heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.short_term_attention not in SHORT_TERM_ATTENTIONS:
            raise ConfigError(f"Unknown `short_term_attention` {self.short_term_attention!r}; choose "
                              f"one of {list(SHORT_TERM_ATTENTIONS)}.")
        if self.multimodal_dtype not in ("int8", "float32"):
            raise ConfigError(f"`multimodal_dtype` must be int8 or float32, got {self.multimodal_dtype!r}.")
        if self.multimodal_dtype == "int8" and self.multimodal_dim % 4:
            raise ConfigError(f"int8 `multimodal_dim` must be a multiple of 4, got {self.multimodal_dim}.")
        if self.feature_spec is not None:
            vectors = self.feature_spec.multimodal
            if self.multimodal_dim != vectors.dim:
                raise ConfigError(f"`multimodal_dim` ({self.multimodal_dim}) differs from the feature "
                                  f"spec's `multimodal.dim` ({vectors.dim}).")
            if vectors.model_dtype == "float32" and self.multimodal_dtype != "float32":
                raise ConfigError(f"`multimodal_dtype` must be float32 for the feature spec's "
                                  f"{vectors.dtype} vectors, got {self.multimodal_dtype!r}.")
        if (2 * self.embedding_dim) % self.attention_heads:
            raise ConfigError(
                f"`attention_heads` ({self.attention_heads}) must divide 2 * embedding_dim "
                f"({2 * self.embedding_dim})."
            )

    @property
    def features(self) -> FeatureSpec:
        """The feature spec (``feature_spec``, else the Taobao-MM preset)."""
        return self.feature_spec or TAOBAO_MM

    @property
    def spec(self) -> Variant:
        """The variant with the ``gsu`` override applied."""
        base = VARIANTS[self.variant]
        if self.gsu is None or base.gsu is None:
            return base
        return dataclasses.replace(base, gsu=self.gsu)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML- and JSON-serialisable); ``from_dict`` inverts it. A config without
        a feature spec has no ``feature_spec`` key, as before specs existed (its digest is the same)."""
        values = dataclasses.asdict(self)
        if self.feature_spec is None:
            del values["feature_spec"]
        else:
            values["feature_spec"] = self.feature_spec.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds and validates a config; unknown keys raise ConfigError."""
        return from_dict(cls, values)


@dataclasses.dataclass
class TrainConfig:
    """How to train and evaluate (defaults: the paper's optimiser settings).

    Attributes:
        batch_size: global batch size, split across replicas; None = ``per_replica_batch_size``
            on every replica, as the official code's DDP run (1,000 per device).
        per_replica_batch_size: samples per replica and step when ``batch_size`` is None
            (official: 1,000 per device, so 1,000 on one device and 8,000 on 8).
        epochs: passes over the training split.
        steps_per_epoch: None = one pass over the training split's samples (from the manifest).
        embedding_optimizer: ``sparse_adam`` (only the rows a batch looks up are updated, as the
            official code's torch SparseAdam) or ``adam`` (tf-keras Adam: every row, every step).
        dense_optimizer: ``adamw`` (the official code's, weight decay 0.01; measured best, see the
            README) or ``adam`` for every other weight.
        embedding_learning_rate: learning rate of the embedding tables (paper: 2e-3).
        dense_learning_rate: learning rate of every other weight (paper: 2e-4).
        learning_rate_schedule: ``constant`` (the official code's) or ``warmup_cosine``: both
            rates rise linearly from 0 over the first ``warmup_fraction`` of the run's steps, then
            fall to 0 along a cosine by its last step.
        warmup_fraction: share of the run's optimizer steps spent warming up (``warmup_cosine``).
        history_length: L, behaviours per sample fed to the model (the most recent kept); the
            converted shards hold at most the conversion's ``--history-cap``.
        shuffle: shuffle the shard files and user records each epoch (a user's samples stay
            together; the official config does not shuffle).
        seed: seeds TensorFlow, NumPy and the input order.
        deterministic: reproducible input order (slower).
        eval_batch_size: batch size for evaluation.
        backup_every_seconds: mid-epoch backup interval in seconds (BackupAndRestore), so a
            killed run resumes mid-epoch; a backup also ends every epoch but the last (the final
            weights hold it). None = by steps only.
        backup_every_steps: mid-epoch backup interval in steps, beside the time interval
            (whichever comes first); None = by time only.
        log_every_steps: TensorBoard scalar interval.
        validation_fraction: share of the training users held out (chosen by a stable hash of the
            raw user ID, never trained on) and scored after every epoch: ``val_loss``, ``val_auc``
            and exact ``val_gauc`` in ``history.csv`` and TensorBoard. 0 = no validation.
        validation_split: a split of the converted dataset's manifest to score after every epoch
            instead (choosing epochs by ``test`` makes the final test figures optimistic); None =
            none.
        validation_monitor: what early stopping and the best epoch go by: ``gauc`` or ``auc``.
        early_stopping_patience: stop after this many epochs without a better validation
            ``validation_monitor``, then keep the best epoch's weights (for evaluation and export);
            None = train every epoch and keep the last one's. Needs validation.
        ps_min_shard_bytes: on a parameter-server cluster, a variable is split row-wise across
            the parameter servers only if every shard keeps at least this many bytes (the
            embedding and multimodal tables are; dense weights stay whole).
        warn_below_steps: before training, say so when a pass over the data makes fewer optimizer
            steps than this (a model learns little from a few steps); 0 = never.
    """

    batch_size: int | None = None
    per_replica_batch_size: int = 1000
    epochs: int = 1
    steps_per_epoch: int | None = None
    embedding_optimizer: str = "sparse_adam"
    dense_optimizer: str = "adamw"
    embedding_learning_rate: float = 2e-3
    dense_learning_rate: float = 2e-4
    learning_rate_schedule: str = "constant"
    warmup_fraction: float = 0.1
    history_length: int = 1000
    shuffle: bool = False
    seed: int = 0
    deterministic: bool = False
    eval_batch_size: int = 1000
    backup_every_seconds: float | None = 600.0
    backup_every_steps: int | None = None
    log_every_steps: int = 50
    validation_fraction: float = 0.0
    validation_split: str | None = None
    validation_monitor: str = "gauc"
    early_stopping_patience: int | None = None
    ps_min_shard_bytes: int = 1 << 20
    warn_below_steps: int = 50

    def __post_init__(self) -> None:
        _refuse_non_finite(self, "train.")
        for name in ("per_replica_batch_size", "epochs", "history_length", "eval_batch_size",
                     "log_every_steps", "embedding_learning_rate",
                     "dense_learning_rate", "ps_min_shard_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`train.{name}` must be positive, got {getattr(self, name)}.")
        for name, choices in (("embedding_optimizer", EMBEDDING_OPTIMIZERS),
                              ("dense_optimizer", DENSE_OPTIMIZERS),
                              ("learning_rate_schedule", LEARNING_RATE_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"`train.{name}` must be one of {choices}, got {getattr(self, name)!r}.")
        for name in ("batch_size", "steps_per_epoch", "backup_every_seconds", "backup_every_steps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"`train.{name}` must be positive or null, got {getattr(self, name)}.")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"`train.warmup_fraction` must be in [0, 1), got {self.warmup_fraction}.")
        if self.warn_below_steps < 0:
            raise ConfigError(f"`train.warn_below_steps` must be >= 0, got {self.warn_below_steps}.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(
                f"`train.validation_fraction` must be in [0, 1), got {self.validation_fraction}."
            )
        if self.validation_fraction and self.validation_split:
            raise ConfigError("Set `train.validation_fraction` or `train.validation_split`, not both.")
        if self.validation_monitor not in VALIDATION_MONITORS:
            raise ConfigError(f"`train.validation_monitor` must be one of {VALIDATION_MONITORS}, "
                              f"got {self.validation_monitor!r}.")
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience <= 0:
                raise ConfigError(f"`train.early_stopping_patience` must be positive or null, "
                                  f"got {self.early_stopping_patience}.")
            if not self.validates:
                raise ConfigError("`train.early_stopping_patience` needs validation: set "
                                  "`train.validation_fraction` or `train.validation_split`.")

    def global_batch_size(self, replicas: int) -> int:
        """Samples per optimizer step over all ``replicas``: ``batch_size`` if set, else
        ``per_replica_batch_size`` on each (the official code's 1,000 per device)."""
        return self.batch_size or self.per_replica_batch_size * replicas

    @property
    def validates(self) -> bool:
        """Whether the model is scored on held-out data after every epoch."""
        return bool(self.validation_fraction or self.validation_split)


@dataclasses.dataclass
class ExperimentConfig:
    """A whole run: ``model`` and ``train`` sections, as in the YAML files under muse_tf/configs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """``{"model": {...}, "train": {...}}``, as written to a run's ``config.yaml``."""
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train)}


T = typing.TypeVar("T")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(hint: Any) -> str:
    """A type hint in words, for error messages: ``list[int]`` -> "a list of an integer"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe(arg) for arg in args)
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against ``hint`` (ints widen to float; "1e-3", which YAML 1.1 reads as a
    string, is a float where a float is expected).

    Raises:
        ConfigError: naming ``key``, the expected type and the value.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is FeatureSpec:
        if isinstance(value, FeatureSpec):
            return value
        return FeatureSpec.from_dict(value, source=f"`{key}`")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        try:
            return _typed(key, value, inner)
        except ConfigError:
            raise ConfigError(f"`{key}` must be {_describe(hint)}, got {value!r}.") from None
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    elif hint in (bool, str) and isinstance(value, hint):
        return value
    elif hint is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    elif origin is list and isinstance(value, list | tuple):
        return [_typed(f"{key}[{i}]", item, args[0]) for i, item in enumerate(value)]
    elif origin is dict and isinstance(value, Mapping):
        return {
            _typed(f"{key} key", name, args[0]): _typed(f"{key}[{name!r}]", item, args[1])
            for name, item in value.items()
        }
    raise ConfigError(f"`{key}` must be {_describe(hint)}, got {value!r}.")


def from_dict(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """Builds dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Args:
        prefix: the section's dotted path (``"train."``), for error messages.

    Raises:
        ConfigError: naming any key ``cls`` does not have, or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} key(s) {sorted(unknown)}; known: {sorted(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"`{prefix}{name}` must be a section (a mapping), got {value!r}.")
            kwargs[name] = from_dict(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _typed(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


DEFAULT_WORK_DIR = "runs"  # where the commands put the default dataset and runs (--work-dir)
SYNTHETIC_CONFIG = "synthetic.yaml"  # the embedded default's settings
TAOBAO_MM_CONFIG = "taobao_mm.yaml"  # the paper's settings, the default for real data (--data)
TAOBAO_MM_TUNED_CONFIG = "taobao_mm_tuned.yaml"  # measured better than the paper's (docs/experiments.md)


def packaged_config_path(name: str = SYNTHETIC_CONFIG) -> str:
    """Path of a YAML config shipped in ``muse_tf/configs``."""
    return str(resources.files("muse_tf.configs").joinpath(name))


def presets() -> list[str]:
    """The names of the packaged configs (``--config NAME``)."""
    return sorted(entry.name[:-len(".yaml")] for entry in resources.files("muse_tf.configs").iterdir()
                  if entry.name.endswith(".yaml"))


def load_yaml(path: str) -> dict[str, Any]:
    """Reads a YAML mapping from a file, or from the packaged preset of that name (``presets``)
    when no such file exists; an empty file is an empty mapping.

    Raises:
        ConfigError: when the file is missing or unreadable, is not YAML or holds no mapping.
    """
    if not os.path.exists(path) and path in presets():
        path = packaged_config_path(f"{path}.yaml")
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"Config file {path} not found; pass an existing YAML file with `model:` and `train:` "
            f"sections or the name of a packaged preset ({', '.join(presets())})."
        ) from None
    except OSError as err:  # a directory, an unreadable file
        raise ConfigError(f"Config file {path} cannot be read: {err.strerror}.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {cli.one_line(str(err))}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}.")
    return loaded


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``a.b=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value.")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r}: {part!r} is not a section.")
        node[leaf] = yaml.safe_load(raw)
    return values
