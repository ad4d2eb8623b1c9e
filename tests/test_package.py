"""Package set-up: the Keras 2 guard and the configuration loader."""

import os
import re
import subprocess
import sys

import pytest

from muse_tf import config


def _python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


def test_import_sets_legacy_keras_before_tensorflow():
    run = _python("import muse_tf, tensorflow as tf; print(tf.keras.__name__)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith("tf_keras")


def test_import_after_keras3_fails_with_instructions():
    run = _python("import tensorflow as tf; tf.keras.layers; import muse_tf")
    assert run.returncode != 0
    assert "ImportError" in run.stderr and "TF_USE_LEGACY_KERAS=1" in run.stderr


def test_model_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="top_kk"):
        config.ModelConfig.from_dict({"top_kk": 3})
    with pytest.raises(ValueError, match="variant"):
        config.ModelConfig(variant="twin")
    with pytest.raises(ValueError, match="attention_heads"):
        config.ModelConfig(attention_heads=3)
    with pytest.raises(ValueError, match="`short_term_attention` 'mlp'.*'linear', 'din'"):
        config.ModelConfig(short_term_attention="mlp")


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("variant: sim_soft\nmlp_units: [32, 16]\n")
    values = config.apply_overrides(config.load_yaml(str(path)), ["top_k=20", "gsu=id"])
    cfg = config.ModelConfig.from_dict(values)
    assert (cfg.variant, cfg.mlp_units, cfg.top_k, cfg.spec.gsu) == ("sim_soft", [32, 16], 20, "id")
    assert config.ModelConfig(variant="din", gsu="mm").spec.gsu is None
    with pytest.raises(ValueError, match="key=value"):
        config.apply_overrides({}, ["top_k"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", "`train.batch_size` must be an integer or null, got 'abc'"),
        ("train.batch_size=2.5", "`train.batch_size` must be an integer or null, got 2.5"),
        ("train.per_replica_batch_size=0", "`train.per_replica_batch_size` must be positive, got 0"),
        ("train.warn_below_steps=-1", "`train.warn_below_steps` must be >= 0, got -1"),
        ("train.epochs=true", "`train.epochs` must be an integer, got True"),
        ("train.batch_size=-8", "`train.batch_size` must be positive or null, got -8"),
        ("train.eval_batch_size=0", "`train.eval_batch_size` must be positive"),
        ("train.dense_learning_rate=-1e-3", "`train.dense_learning_rate` must be positive"),
        ("train.embedding_learning_rate=0", "`train.embedding_learning_rate` must be positive"),
        ("train.dense_learning_rate=fast", "`train.dense_learning_rate` must be a number"),
        ("train.steps_per_epoch=-1", "`train.steps_per_epoch` must be positive or null"),
        ("train.steps_per_epoch=x", "`train.steps_per_epoch` must be an integer or null"),
        ("model.use_cross=maybe", "`model.use_cross` must be true or false, got 'maybe'"),
        ("model.gsu=3", "`model.gsu` must be a string or null, got 3"),
        ("model.mlp_units=[8, x]", "`model.mlp_units[1]` must be an integer, got 'x'"),
        ("model.mlp_units=8", "`model.mlp_units` must be a list of an integer, got 8"),
        ("model.vocab_sizes={user: 1.5}", "`model.vocab_sizes['user']` must be an integer"),
        ("train=3", "`train` must be a section (a mapping), got 3"),
    ],
)
def test_override_errors_name_the_key_and_the_expected_type(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config.from_dict(config.ExperimentConfig, config.apply_overrides({}, [override]))


def test_overrides_of_the_right_type_are_taken_as_given():
    overrides = ["train.dense_learning_rate=1e-3", "train.embedding_learning_rate=3",
                 "train.steps_per_epoch=null", "model.use_cross=true", "model.mlp_units=[8, 4]"]
    experiment = config.from_dict(config.ExperimentConfig, config.apply_overrides({}, overrides))
    train, model = experiment.train, experiment.model
    # PyYAML reads "1e-3" as a string; where a float is expected it is the number 0.001.
    assert train.dense_learning_rate == 0.001 and isinstance(train.dense_learning_rate, float)
    assert train.embedding_learning_rate == 3.0 and isinstance(train.embedding_learning_rate, float)
    assert train.steps_per_epoch is None
    assert model.use_cross is True and model.mlp_units == [8, 4]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.embedding_learning_rate=nan", "train.embedding_learning_rate"),  # a string to float
        ("train.dense_learning_rate=.nan", "train.dense_learning_rate"),  # YAML's NaN
        ("train.dense_learning_rate=.inf", "train.dense_learning_rate"),
        ("train.embedding_learning_rate=1e999", "train.embedding_learning_rate"),  # overflows to inf
        ("train.validation_fraction=-.inf", "train.validation_fraction"),
        ("model.simtier_eps=.nan", "simtier_eps"),
    ],
)
def test_non_finite_float_values_are_refused_naming_the_key(override, key):
    with pytest.raises(config.ConfigError, match=re.escape(f"`{key}` must be a finite number")):
        config.from_dict(config.ExperimentConfig, config.apply_overrides({}, [override]))


def test_non_finite_floats_are_refused_when_configs_are_built_directly():
    with pytest.raises(config.ConfigError, match="`train.dense_learning_rate` must be a finite"):
        config.TrainConfig(dense_learning_rate=float("nan"))
    with pytest.raises(config.ConfigError, match="`simtier_eps` must be a finite"):
        config.ModelConfig(simtier_eps=float("inf"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.validation_fraction=2"], "`train.validation_fraction` must be in [0, 1)"),
        (["train.validation_fraction=0.1", "train.validation_split=test"],
         "Set `train.validation_fraction` or `train.validation_split`, not both."),
        (["train.validation_monitor=loss"], "`train.validation_monitor` must be one of"),
        (["train.early_stopping_patience=0"], "`train.early_stopping_patience` must be positive"),
        (["train.early_stopping_patience=2"], "`train.early_stopping_patience` needs validation"),
    ],
)
def test_validation_settings_that_cannot_work_end_the_command_in_one_line(overrides, message,
                                                                          capsys):
    """Config mistakes are ``ConfigError``s, which a command line prints as one line, exit 2."""
    from muse_tf import train

    argv = [arg for override in overrides for arg in ("--set", override)]
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("python -m muse_tf.train: error: ") and message in err, err


@pytest.mark.parametrize("kind, words", [
    ("directory", "cannot be read: Is a directory."),
    ("latin-1", "is not valid YAML: 'utf-8' codec can't decode byte 0xe9"),
])
def test_a_config_file_that_cannot_be_read_as_text_ends_the_command_in_one_line(kind, words,
                                                                                 tmp_path, capsys):
    from muse_tf import train

    path = tmp_path / "config.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes("model: {variant: 'caf\u00e9'}\n".encode("latin-1"))
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m muse_tf.train: error: Config file {path} {words}"), err
