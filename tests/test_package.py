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
