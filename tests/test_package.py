"""Package set-up: the Keras 2 guard and the configuration loader."""

import os
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
