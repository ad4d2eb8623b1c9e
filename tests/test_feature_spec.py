"""The feature spec: the Taobao-MM preset gives the feature lists the model had before specs, a
spec survives its files, and a bad spec is one line naming its key (exit status 2 on a command)."""

import json

import pytest
import yaml

from muse_tf.config import ConfigError, ModelConfig
from muse_tf.contract.feature_spec import TAOBAO_MM, FeatureSpec, FeatureSpecError
from pipelines import taobao_mm
from tests.cli_helpers import assert_usage_error

# The Taobao-MM feature lists as muse_tf.contract.features spelt them before specs existed.
OLD_SCALAR_FEATURES = (
    "user_id", "user_profile_1", "user_profile_2", "user_profile_3", "user_profile_4",
    "user_profile_5", "item_id", "item_category", "item_attr_213", "item_attr_214",
)
OLD_VOCABULARIES = ("user", "profile_1", "profile_2", "profile_3", "profile_4", "profile_5",
                    "item", "category", "attr_213", "attr_214")
OLD_HALF_WIDTH = ("profile_3", "profile_4", "profile_5")


def test_the_taobao_mm_preset_has_the_feature_lists_and_widths_of_the_model_before_specs():
    assert TAOBAO_MM.scalar_features == OLD_SCALAR_FEATURES
    assert TAOBAO_MM.model_features == OLD_SCALAR_FEATURES + ("history_items", "history_categories")
    assert TAOBAO_MM.vocabularies == OLD_VOCABULARIES
    for dim in (16, 17):
        assert TAOBAO_MM.embedding_widths(dim) == {
            name: dim // 2 if name in OLD_HALF_WIDTH else dim for name in OLD_VOCABULARIES
        }
    assert TAOBAO_MM.column_feature["150_2_180"] == "history_items"
    assert (TAOBAO_MM.multimodal.dim, TAOBAO_MM.multimodal.dtype) == (128, "int8")


def _own_spec():
    spec = TAOBAO_MM.to_dict()
    spec["user_profile"] = [{"name": "age", "column": "a"}, {"name": "city", "column": "c",
                                                              "embedding_dim": 4}]
    spec["item_attributes"] = [{"name": "brand", "column": "b", "vocabulary": "brands"}]
    spec["multimodal"] = {"column": "vec", "dim": 8, "dtype": "float16"}
    return spec


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_spec_reads_back_from_its_file_as_written(tmp_path, suffix):
    path = tmp_path / f"spec.{suffix}"
    values = _own_spec()
    path.write_text(json.dumps(values) if suffix == "json" else yaml.safe_dump(values))
    spec = FeatureSpec.load(str(path))
    for feature in values["user_profile"] + values["item_attributes"]:
        feature.setdefault("vocabulary", feature["name"])  # written out in full
    assert spec.to_dict() == values
    assert spec.vocabulary["brand"] == "brands" and spec.vocabulary["age"] == "age"
    assert spec.embedding_widths(8)["city"] == 4
    assert FeatureSpec.from_dict(json.loads(spec.dumps())) == spec


@pytest.mark.parametrize(("change", "key"), [
    (lambda s: s.pop("item_id"), "`item_id` is missing"),
    (lambda s: s.update(colour="red"), "`colour` is not a spec key"),
    (lambda s: s.update(version=2), "`version` must be 1"),
    (lambda s: s["tables"].update(users="users"), r"`tables.users` must hold \{split\}"),
    (lambda s: s["tables"].update(users="{split}_samples"), "`tables.users` must name another"),
    (lambda s: s["multimodal"].update(dtype="float64"), "`multimodal.dtype` must be one of"),
    (lambda s: s["multimodal"].update(dim=6, dtype="int8"), "`multimodal.dim` must be a multiple"),
    (lambda s: s.update(history_items=1502180), "`history_items` must be a string, got the number"),
    (lambda s: s["user_profile"][1].update(name="age"), "the name 'age' is used twice"),
    (lambda s: s["user_profile"][0].update(name="item_id"), r"`user_profile\[0\].name` 'item_id'"),
    (lambda s: s["item_attributes"][0].update(vocabulary="item"),
     r"`item_attributes\[0\].vocabulary` 'item' is a fixed"),
    (lambda s: s["user_profile"][1].update(embedding_dim="quarter"),
     r"`user_profile\[1\].embedding_dim` must be a positive integer or 'half'"),
])
def test_a_bad_spec_is_one_line_naming_its_key(change, key):
    values = _own_spec()
    change(values)
    with pytest.raises(FeatureSpecError, match=key) as error:
        FeatureSpec.from_dict(values, source="spec.yaml")
    assert str(error.value).startswith("spec.yaml: ") and "\n" not in str(error.value)


def test_a_conversion_refuses_a_bad_spec_file_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    values = _own_spec()
    del values["multimodal"]["dim"]
    path.write_text(yaml.safe_dump(values))
    assert_usage_error(capsys, taobao_mm.main, "pipelines.taobao_mm", "`multimodal.dim` is missing",
                       ["--input", str(tmp_path), "--output", str(tmp_path / "out"),
                        "--feature-spec", str(path)])


def test_a_model_config_holds_its_spec_and_refuses_vectors_it_cannot_store():
    spec = FeatureSpec.from_dict(_own_spec())
    sizes = dict.fromkeys(spec.vocabularies, 10)
    config = ModelConfig(feature_spec=spec, vocab_sizes=sizes, multimodal_dim=8,
                         multimodal_dtype="float32")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert "feature_spec" not in ModelConfig().to_dict()  # a Taobao-MM config is as before
    with pytest.raises(ConfigError, match="`multimodal_dtype` must be float32"):
        ModelConfig(feature_spec=spec, vocab_sizes=sizes, multimodal_dim=8)
    with pytest.raises(ConfigError, match="differs from the feature spec's `multimodal.dim`"):
        ModelConfig(feature_spec=spec, vocab_sizes=sizes, multimodal_dim=12,
                    multimodal_dtype="float32")
    with pytest.raises(ConfigError, match="`vocab_sizes` lacks"):
        ModelConfig(feature_spec=spec, multimodal_dim=8, multimodal_dtype="float32")
