"""The packaged configs: taobao_mm.yaml holds the official code's settings and is the real-data default."""

import dataclasses
import inspect

import pytest

from muse_tf import train
from muse_tf.config import (
    TAOBAO_MM_CONFIG,
    TAOBAO_MM_TUNED_CONFIG,
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_yaml,
    packaged_config_path,
)
from muse_tf.layers.attention import SemanticAwareTargetAttention
from muse_tf.layers.simtier import tier_count

# The official code's settings (alimama-tech/MUSE at commit 85eea15), written out as the reference.
OFFICIAL_GPUS = 8  # script/run_exp.sh:4 GPU_LIST="0,1,2,3,4,5,6,7"
OFFICIAL = {
    "model": {
        "variant": "muse",  # config/muse.json:14 "method": "muse"
        "embedding_dim": 16,  # config/muse.json:13 "embedding_dim": 16
        "multimodal_dim": 128,  # model/muse.py:24 n_dim=128
        "multimodal_dtype": "int8",  # config/muse.json:21 "scl_emb_p90": the int8 SCL file
        "top_k": 50,  # config/muse.json:15 "keep_top": 50
        "recent_length": 50,  # model/muse.py:14 RT_STEPS=50
        "attention_heads": 1,  # model/base_model/layers.py:197 int(max(2D // 2D, 1))
        "short_term_attention": "linear",  # model/muse.py:30 realtime_att = multi_head_att(...)
        "mlp_units": [256, 128, 64],  # model/muse.py:46 shape=[256, 128, 64, 2]
        "simtier_eps": 0.1,  # model/muse.py:26 eps_list=[0.1, 0.1]
        "simtier_dim": 1,  # model/muse.py:27 dim_list=[1, 1]
    },
    "train": {
        "per_replica_batch_size": 1000,  # config/muse.json:9 "batch_size": 1000 (per GPU, DDP)
        "epochs": 1,  # config/muse.json:10
        "embedding_optimizer": "sparse_adam",  # main.py:124 optim.SparseAdam
        "dense_optimizer": "adamw",  # main.py:123 optim.AdamW
        "embedding_learning_rate": 2e-3,  # config/muse.json:12 "sparse_lr"
        "dense_learning_rate": 2e-4,  # config/muse.json:11 "dense_lr"
        "history_length": 1000,  # main.py:85 max_seq_len=1000
        "shuffle": False,  # config/muse.json:17
        "eval_batch_size": 1000,  # main.py:95 the test loader's batch_size
    },
}
OFFICIAL_TIERS = 22  # model/base_model/simtier.py:56 2 * int(1 / 0.1) + 2 tier embeddings
OFFICIAL_TAU_INIT = 0.1  # model/base_model/layers.py:217 constant_(cosine_tau1, 0.1)


@pytest.fixture(scope="module")
def taobao_mm():
    return load_yaml(packaged_config_path(TAOBAO_MM_CONFIG))


def test_taobao_mm_yaml_holds_the_official_settings(taobao_mm):
    assert taobao_mm == OFFICIAL
    experiment = from_dict(ExperimentConfig, taobao_mm)  # valid, and typed as the dataclasses say
    assert tier_count(experiment.model.simtier_eps) == OFFICIAL_TIERS


def test_the_official_settings_are_the_dataclass_defaults(taobao_mm):
    """The YAML records the defaults; a default that drifts from the paper fails here."""
    defaults = ExperimentConfig()
    for section, values in taobao_mm.items():
        for key, value in values.items():
            assert getattr(getattr(defaults, section), key) == value, f"{section}.{key}"
    tau_init = inspect.signature(SemanticAwareTargetAttention).parameters["tau_init"].default
    assert tau_init == OFFICIAL_TAU_INIT


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--data", "some/dir"], OFFICIAL),
        (["--data", "some/dir", "--set", "train.epochs=3"],
         {**OFFICIAL, "train": {**OFFICIAL["train"], "epochs": 3}}),
    ],
)
def test_real_data_without_a_config_trains_with_the_paper_settings(argv, expected):
    experiment = train.build_experiment(train.arguments().parse_args(argv))
    resolved = dataclasses.asdict(experiment)
    for section, values in expected.items():
        assert {key: resolved[section][key] for key in values} == values


def test_the_embedded_default_keeps_the_synthetic_settings():
    experiment = train.build_experiment(train.arguments().parse_args([]))
    synthetic = load_yaml(packaged_config_path())
    assert experiment.train.batch_size == synthetic["train"]["batch_size"]
    assert experiment.train.global_batch_size(1) != OFFICIAL["train"]["per_replica_batch_size"]


def test_the_tuned_preset_is_the_official_one_with_ten_times_the_rates(taobao_mm):
    """Measured against the official preset with the same model (docs/experiments.md#presets):
    only the two learning rates differ, each ten times the official."""
    tuned = load_yaml(packaged_config_path(TAOBAO_MM_TUNED_CONFIG))
    assert tuned["model"] == OFFICIAL["model"]
    rates = ("embedding_learning_rate", "dense_learning_rate")
    assert {key: value for key, value in tuned["train"].items() if key not in rates} == {
        key: value for key, value in OFFICIAL["train"].items() if key not in rates}
    for rate in rates:
        assert tuned["train"][rate] == pytest.approx(10 * OFFICIAL["train"][rate])


@pytest.mark.parametrize("name", ["taobao_mm", "taobao_mm_tuned", "synthetic"])
def test_config_takes_a_packaged_presets_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    experiment = train.build_experiment(train.arguments().parse_args(["--config", name]))
    assert experiment == from_dict(ExperimentConfig, load_yaml(packaged_config_path(f"{name}.yaml")))


def test_an_unknown_config_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="synthetic, taobao_mm, taobao_mm_tuned"):
        train.build_experiment(train.arguments().parse_args(["--config", "taobao_mm_tunde"]))
