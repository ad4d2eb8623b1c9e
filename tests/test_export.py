"""SavedModel export: TF Serving layout, signatures, raw-ID scores equal to the Keras model's (Python
and the TensorFlow C API, TF Serving's loader), warm-up records, versions and the CLI."""

import json
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

import muse_tf
from muse_tf import cli, export
from muse_tf.contract import features, signatures, vocabulary
from muse_tf.jobs import saved_model
from tests import serving_case as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALARS = [
    "user_id",
    "user_profile_1",
    "user_profile_2",
    "user_profile_3",
    "user_profile_4",
    "user_profile_5",
    "item_id",
    "item_category",
    "item_attr_213",
    "item_attr_214",
]
HISTORIES = ["history_items", "history_categories"]
# The wire contract as clients outside Python (curl, the C API) type it: an independent reference
# for muse_tf.contract.signatures, so these stay literal.
OUTPUTS = {"probability": ("DT_FLOAT", [-1]), "logit": ("DT_FLOAT", [-1])}
EXPECTED_SIGNATURES = {
    "serving_default": (
        {
            **{n: ("DT_INT64", [-1]) for n in SCALARS + ["history_length"]},
            **{n: ("DT_INT64", [-1, -1]) for n in HISTORIES},
        },
        OUTPUTS,
    ),
    "rank": (
        {
            **{n: ("DT_INT64", []) for n in SCALARS[:6]},
            **{n: ("DT_INT64", [-1]) for n in SCALARS[6:] + HISTORIES},
        },
        OUTPUTS,
    ),
}


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=0)


@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    return saved_model.export_saved_model(
        case.model, case.vocabularies, str(tmp_path_factory.mktemp("base")), "muse"
    )


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def run(loaded, signature, request):
    outputs = loaded.signatures[signature](
        **{k: tf.constant(np.asarray(v)) for k, v in request.items()}
    )
    return outputs[signatures.PROBABILITY].numpy(), outputs[signatures.LOGIT].numpy()


def assert_scores(probability, logit, reference):
    """Within 1e-5 of the Keras reference, whose scores are spread far wider than that."""
    assert len(reference) < 2 or np.ptp(reference) > 1e-2
    np.testing.assert_allclose(logit, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probability, sc.sigmoid(reference), rtol=0, atol=1e-5)


def meta_graph(export_dir):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    (graph,) = saved_model.meta_graphs
    return graph


def test_tf_serving_layout_and_signatures(exported):
    assert exported.endswith(os.path.join("muse", "1"))
    assert sorted(os.listdir(os.path.join(exported, "assets"))) == sorted(
        f"vocab_{name}.txt" for name in sc.SIZES
    )
    assert os.path.isfile(os.path.join(exported, "assets.extra", "tf_serving_warmup_requests"))
    graph = meta_graph(exported)
    with open(os.path.join(exported, "assets.extra", "versions.json")) as f:
        versions = json.load(f)
    # The TensorFlow that wrote the graph, as TensorFlow itself records it in saved_model.pb.
    assert versions["tensorflow"] == graph.meta_info_def.tensorflow_version == tf.__version__
    assert versions["tf_keras"] == tf_keras.__version__
    assert versions["muse_tf"] == muse_tf.__version__
    assert list(graph.meta_info_def.tags) == ["serve"]
    for name, (inputs, outputs) in EXPECTED_SIGNATURES.items():
        signature = graph.signature_def[name]
        assert signature.method_name == "tensorflow/serving/predict"
        for expected, actual in ((inputs, signature.inputs), (outputs, signature.outputs)):
            got = {
                key: (
                    types_pb2.DataType.Name(info.dtype),
                    [dim.size for dim in info.tensor_shape.dim],
                )
                for key, info in actual.items()
            }
            assert got == expected


def test_graph_has_only_registered_core_ops(exported):
    graph = meta_graph(exported)
    ops = {node.op for node in graph.graph_def.node}
    ops |= {node.op for function in graph.graph_def.library.function for node in function.node_def}
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert all(hasattr(tf.raw_ops, op) for op in ops), sorted(
        op for op in ops if not hasattr(tf.raw_ops, op)
    )
    assert {"HashTableV2", "InitializeTableFromTextFileV2", "LookupTableFindV2"} <= ops


def test_rows_match_keras_and_ignore_padding_past_history_length(loaded, case):
    rng = np.random.default_rng(1)
    request = sc.rows_request(rng, case, lengths=[7, 0, 30, 1, 30, 12], width=30)
    probability, logit = run(loaded, signatures.SERVING_DEFAULT, request)
    assert_scores(probability, logit, sc.keras_rows(case, request))
    repadded = {k: v.copy() for k, v in request.items()}
    for name in HISTORIES:
        repadded[name][0, 7:] = sc.unknown_ids(rng, case.vocabularies["item"], 23)
    np.testing.assert_array_equal(run(loaded, signatures.SERVING_DEFAULT, repadded)[1], logit)


@pytest.mark.parametrize("length", [0, 1, 1000])
def test_rank_matches_keras_rows(loaded, case, length):
    request = sc.rank_request(np.random.default_rng(length), case, length, candidates=9)
    probability, logit = run(loaded, signatures.RANK, request)
    assert logit.shape == (9,)
    assert_scores(probability, logit, sc.keras_rank(case, request))


def test_raw_ids_zero_and_huge_are_items_and_unknown_ids_are_oov(loaded, case):
    rng = np.random.default_rng(3)
    request = sc.rank_request(rng, case, 50, candidates=4)
    request["item_id"] = np.array(
        [sc.HUGE_ID, 0, *sc.unknown_ids(rng, case.vocabularies["item"], 2)]
    )
    for name in ("item_category", "item_attr_213", "item_attr_214"):
        request[name][:] = request[name][0]  # candidates differ by item only
    request["history_items"][-5:] = [0, sc.HUGE_ID, 0, 0, sc.HUGE_ID]
    probability, logit = run(loaded, signatures.RANK, request)
    np.testing.assert_array_equal(
        vocabulary.lookup(case.vocabularies["item"], request["item_id"]),
        [2, 3, features.OOV, features.OOV],
    )
    assert_scores(probability, logit, sc.keras_rank(case, request))
    assert (
        logit[2] == logit[3] and abs(logit[0] - logit[2]) > 1e-3 and abs(logit[1] - logit[2]) > 1e-3
    )


def bad_requests(case):
    """(signature, request, message) for requests the signatures must refuse."""
    rng = np.random.default_rng(4)

    def rank(**changes):
        return {**sc.rank_request(rng, case, 20, candidates=3), **changes}

    def rows(**changes):
        return {**sc.rows_request(rng, case, [4, 2], width=5), **changes}

    too_long = sc.raw_history(rng, case, 100_001)
    return [
        (
            signatures.RANK,
            rank(history_items=too_long[0], history_categories=too_long[1]),
            "max_history_length=100000",
        ),
        (
            signatures.RANK,
            rank(item_category=np.array([1, 2])),
            "`item_category` must have as many values as `item_id`",
        ),
        (
            signatures.RANK,
            rank(history_categories=np.arange(19)),
            "`history_categories` must have as many values",
        ),
        (signatures.SERVING_DEFAULT, rows(history_length=np.array([6, 2])), "exceeds the width"),
        (signatures.SERVING_DEFAULT, rows(history_length=np.array([-1, 2])), "`history_length` is negative"),
        (
            signatures.SERVING_DEFAULT,
            rows(history_length=np.array([4])),
            "as many values as `history_length`",
        ),
        (
            signatures.SERVING_DEFAULT,
            rows(item_id=np.array([1, 2, 3])),
            "`item_id` must have as many values",
        ),
        (
            signatures.SERVING_DEFAULT,
            rows(history_categories=np.zeros((2, 4), np.int64)),
            "the shape of `history_items`",
        ),
    ]


def test_bad_requests_fail_with_clear_errors(loaded, case):
    for signature, request, message in bad_requests(case):
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            run(loaded, signature, request)


def test_warmup_records_are_prediction_logs_for_both_signatures(exported, case):
    path = os.path.join(exported, "assets.extra", "tf_serving_warmup_requests")
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r)
        for r in tf.data.TFRecordDataset(path).as_numpy_iterator()
    ]
    requests = [log.predict_log.request for log in logs]
    assert sorted(r.model_spec.signature_name for r in requests) == sorted(signatures.SIGNATURES)
    for request in requests:
        assert request.model_spec.name == "muse"
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        signature = request.model_spec.signature_name
        probability, logit = run(tf.saved_model.load(exported), signature, inputs)
        reference = sc.keras_rank if signature == signatures.RANK else sc.keras_rows
        np.testing.assert_allclose(logit, reference(case, inputs), rtol=0, atol=1e-5)


def test_versions_are_numbered_and_never_overwritten(case, tmp_path):
    base = str(tmp_path)
    first = saved_model.export_saved_model(
        case.model, case.vocabularies, base, "m", max_history_length=10
    )
    second = saved_model.export_saved_model(
        case.model, case.vocabularies, base, "m", max_history_length=10
    )
    assert (os.path.basename(first), os.path.basename(second)) == ("1", "2")
    with pytest.raises(FileExistsError):
        saved_model.export_saved_model(case.model, case.vocabularies, base, "m", version=2)
    assert sorted(os.listdir(os.path.join(base, "m"))) == ["1", "2"]  # no staging left behind
    request = sc.rank_request(np.random.default_rng(5), case, 11, candidates=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_history_length=10"):
        run(tf.saved_model.load(second), signatures.RANK, request)


def test_a_full_disk_during_export_names_the_version_and_leaves_none(case, tmp_path, monkeypatch):
    def save_on_a_full_disk(obj, export_dir, **kwargs):  # TensorFlow's error for ENOSPC
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{export_dir}/variables/variables.data-00000-of-00001.tempstate123; "
            "No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", save_on_a_full_disk)
    with pytest.raises(cli.WriteError) as error:
        saved_model.export_saved_model(case.model, case.vocabularies, str(tmp_path), "m")
    message = str(error.value)
    assert message.startswith(f"Could not write {tmp_path / 'm' / '1'}: "), message
    assert message.endswith("; No space left on device") and "\n" not in message
    assert os.listdir(tmp_path / "m") == []  # no staging left behind


def test_the_export_logs_no_staging_path(case, tmp_path):
    """As in a notebook, where TensorFlow's logger shows INFO: the staging directory, renamed away
    once the export is complete, is never named."""
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = tf.get_logger()
    level, handler = logger.level, Collect(logging.DEBUG)
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        path = saved_model.export_saved_model(case.model, case.vocabularies, str(tmp_path), "m")
        logging.getLogger("tensorflow").info("the handler sees INFO")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records[-1] == "the handler sees INFO"
    assert not [r for r in records if str(tmp_path) in r and path not in r], records
    assert logger.level == level


def test_an_export_directory_blocked_by_a_file_is_named(case, tmp_path):
    (tmp_path / "exports").write_text("")
    with pytest.raises(cli.WriteError,
                       match=re.escape(f"Could not write {tmp_path / 'exports' / 'm'}: Not a dir")):
        saved_model.export_saved_model(case.model, case.vocabularies, str(tmp_path / "exports"), "m")


def test_candidates_and_rows_x_width_are_capped_in_the_graph(case, tmp_path):
    """The caps sit in the SavedModel itself (so stock TF Serving enforces them): a request at a
    cap is served with the Keras model's scores, one value past it is refused with the cap named."""
    loaded = tf.saved_model.load(
        saved_model.export_saved_model(
            case.model, case.vocabularies, str(tmp_path), "m",
            max_history_length=40, max_candidates=5, max_history_values=60,
        )
    )
    rng = np.random.default_rng(9)
    at_cap = sc.rank_request(rng, case, 40, candidates=5)
    assert_scores(*run(loaded, "rank", at_cap), sc.keras_rank(case, at_cap))
    rows = sc.rows_request(rng, case, [20, 0, 7], width=20)  # 3 x 20 = 60
    assert_scores(*run(loaded, "serving_default", rows), sc.keras_rows(case, rows))
    refused = [
        ("rank", sc.rank_request(rng, case, 3, candidates=6), "max_candidates=5"),
        ("rank", sc.rank_request(rng, case, 0, candidates=6), "max_candidates=5"),
        ("serving_default", sc.rows_request(rng, case, [1] * 61, width=1), "max_history_values=60"),
        ("serving_default", sc.rows_request(rng, case, [3, 0], width=31), "max_history_values=60"),
    ]
    for signature, request, message in refused:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            run(loaded, signature, request)
    for name, value in (("max_candidates", 0), ("max_history_values", -1)):
        with pytest.raises(ValueError, match=f"`{name}`"):
            saved_model.export_saved_model(case.model, case.vocabularies, str(tmp_path), "x", **{name: value})


def test_vocabularies_must_match_the_model(case, tmp_path):
    cases = [
        ({k: v for k, v in case.vocabularies.items() if k != "attr_214"}, "'attr_214' is missing"),
        ({**case.vocabularies, "user": case.vocabularies["user"][:-1]}, "vocab_sizes"),
        (
            {
                **case.vocabularies,
                "user": np.r_[case.vocabularies["user"][:-1], case.vocabularies["user"][0]],
            },
            "duplicate",
        ),
    ]
    for vocabularies, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            saved_model.export_saved_model(case.model, vocabularies, str(tmp_path), "m")


@pytest.fixture(scope="module")
def c_program(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot build the C API program")
    tf_dir = os.path.dirname(tf.__file__)
    binary = str(tmp_path_factory.mktemp("c_api") / "muse_predict")
    source = os.path.join(ROOT, "serving", "c_api", "muse_predict.c")
    subprocess.run(
        [
            "gcc",
            "-std=c11",
            "-O2",
            "-Wall",
            "-Wextra",
            f"-I{tf_dir}/include",
            source,
            "-o",
            binary,
            f"-L{tf_dir}",
            "-l:libtensorflow_cc.so.2",
            "-l:libtensorflow_framework.so.2",
            f"-Wl,-rpath,{tf_dir}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return binary


def write_requests(path, requests):
    with open(path, "w") as f:
        for signature, request in requests:
            f.write(f"request {signature} {len(request)}\n")
            for name, value in request.items():
                value = np.asarray(value)
                f.write(
                    " ".join(map(str, [name, value.ndim, *value.shape, *value.ravel().tolist()]))
                    + "\n"
                )


def parse_responses(text):
    responses, current = [], None
    for line in text.splitlines():
        words = line.split()
        if words[0] == "request":
            current = {}
            responses.append((words[1], current))
        else:
            assert int(words[1]) == len(words) - 2
            current[words[0]] = np.array(words[2:], np.float64)
    return responses


def test_c_api_program_scores_equal_keras(c_program, exported, case, tmp_path):
    rng = np.random.default_rng(6)
    requests = [
        (signatures.SERVING_DEFAULT, sc.rows_request(rng, case, [9, 0, 40, 3], width=40)),
        (signatures.RANK, sc.rank_request(rng, case, 0, candidates=5)),
        (signatures.RANK, sc.rank_request(rng, case, 1000, candidates=12)),
    ]
    write_requests(tmp_path / "requests.txt", requests)
    result = subprocess.run(
        [c_program, exported, str(tmp_path / "requests.txt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    responses = parse_responses(result.stdout)
    assert [signature for signature, _ in responses] == [signature for signature, _ in requests]
    for (signature, request), (_, outputs) in zip(requests, responses):
        reference = (
            sc.keras_rank(case, request) if signature == signatures.RANK else sc.keras_rows(case, request)
        )
        assert_scores(outputs[signatures.PROBABILITY], outputs[signatures.LOGIT], reference)


def test_cli_exports_a_training_run(case, tmp_path):
    data_dir = sc.write_dataset(tmp_path / "data", case.vocabularies)
    run_dir = sc.write_finished_run(tmp_path / "run", case, data_dir)
    path = export.main(
        [
            "--model-dir",
            run_dir.root,
            "--data",
            str(data_dir),
            "--export-dir",
            str(tmp_path / "out"),
            "--model-name",
            "cli",
            "--version",
            "7",
            "--max-candidates",
            "6",
            "--max-history-values",
            "600",
        ]
    )
    assert path == str(tmp_path / "out" / "cli" / "7")
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(7)
    request = sc.rank_request(rng, case, 300, candidates=6)
    assert_scores(*run(loaded, "rank", request), sc.keras_rank(case, request))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_candidates=6"):
        run(loaded, "rank", sc.rank_request(rng, case, 300, candidates=7))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_history_values=600"):
        run(loaded, "serving_default", sc.rows_request(rng, case, [300, 1, 0], width=301))


@pytest.mark.parametrize("variant", ["din", "sim_hard", "sim_soft"])
def test_baseline_variants_export_and_match_keras(variant, tmp_path):
    other = sc.make_case(seed=2, variant=variant)
    path = saved_model.export_saved_model(other.model, other.vocabularies, str(tmp_path), variant)
    loaded = tf.saved_model.load(path)
    rng = np.random.default_rng(8)
    ranked = sc.rank_request(rng, other, 200, candidates=6)
    assert_scores(*run(loaded, signatures.RANK, ranked), sc.keras_rank(other, ranked))
    rows = sc.rows_request(rng, other, [200, 17, 0], width=200)
    assert_scores(*run(loaded, signatures.SERVING_DEFAULT, rows), sc.keras_rows(other, rows))


@pytest.mark.parametrize(
    "dims, message",
    [
        ([2**32, 2**32, 2**32], "element count overflows for item_id"),  # 2^96 wraps int64
        ([2**62, 4], "element count overflows for item_id"),
        ([50_000_000], "declares more values than the file holds for item_id"),
        ([-3], "bad shape for input item_id"),
    ],
)
def test_c_api_program_refuses_impossible_shapes_with_a_message(
    c_program, exported, case, tmp_path, dims, message
):
    request = sc.rank_request(np.random.default_rng(10), case, 5, candidates=2)
    path = tmp_path / "requests.txt"
    write_requests(path, [("rank", {k: v for k, v in request.items() if k != "item_id"})])
    text = path.read_text().replace(f"request rank {len(request) - 1}", f"request rank {len(request)}")
    path.write_text(text + " ".join(map(str, ["item_id", len(dims), *dims, 1, 2])) + "\n")
    result = subprocess.run([c_program, exported, str(path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
