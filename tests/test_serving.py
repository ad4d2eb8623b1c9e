"""TF Serving protocols end to end: ``python -m serving.server`` on an export, queried by
``serving.client`` over REST and gRPC; scores equal the Keras model's; bad requests get clear errors
and never disturb the next request; the deployment configs parse."""

import io
import json
import os
import re
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import yaml
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from muse_tf.contract import signatures
from muse_tf.jobs import saved_model
from serving.client import GrpcClient, PredictionError, RestClient, read_request
from serving.launch import free_port, local_server
from tests import serving_case as sc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = os.path.join(ROOT, "serving")


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=1)


@pytest.fixture(scope="module")
def server(case, tmp_path_factory):
    """A server subprocess on a fresh export; yields its (grpc port, rest port)."""
    base = tmp_path_factory.mktemp("exports")
    saved_model.export_saved_model(case.model, case.vocabularies, str(base), "muse")
    with local_server(str(base / "muse"), log_path=str(base / "server.log")) as running:
        yield running.grpc_port, running.rest_port


@pytest.fixture(params=["rest", "grpc"])
def client(request, server):
    grpc_port, rest_port = server
    made = (
        RestClient(port=rest_port, model_name="muse")
        if request.param == "rest"
        else GrpcClient(port=grpc_port, model_name="muse")
    )
    with made:
        yield made


def assert_scores(outputs, reference):
    """Within 1e-5 of the Keras reference, whose scores are spread far wider than that."""
    assert outputs[signatures.LOGIT].dtype == outputs[signatures.PROBABILITY].dtype == np.float32
    assert len(reference) < 2 or np.ptp(reference) > 1e-2
    np.testing.assert_allclose(outputs[signatures.LOGIT], reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs[signatures.PROBABILITY], sc.sigmoid(reference), rtol=0, atol=1e-5)


@pytest.mark.parametrize("length", [1000, 100_000])
def test_client_scores_equal_keras(client, case, length):
    rng = np.random.default_rng(length)
    ranked = sc.rank_request(rng, case, length, candidates=8)
    assert_scores(client.predict(ranked, signature_name=signatures.RANK), sc.keras_rank(case, ranked))
    rows = sc.rows_request(rng, case, [length, length // 3, 0], width=length)
    assert_scores(client.predict(rows), sc.keras_rows(case, rows))


def test_empty_histories_and_unknown_ids_score(client, case):
    rng = np.random.default_rng(2)
    ranked = sc.rank_request(rng, case, 0, candidates=3)
    for name in signatures.CANDIDATE_FEATURES:  # candidates 0 and 1: every ID unknown
        ranked[name][:2] = sc.unknown_ids(rng, case.vocabularies["item"], 2)
    outputs = client.predict(ranked, signature_name=signatures.RANK)
    assert_scores(outputs, sc.keras_rank(case, ranked))
    assert outputs[signatures.LOGIT][0] == outputs[signatures.LOGIT][1]
    rows = sc.rows_request(rng, case, [0, 0], width=0)
    assert_scores(client.predict(rows), sc.keras_rows(case, rows))


def bad_requests(case):
    """(signature, inputs, a fragment of the expected error) for requests the server must refuse."""
    rng = np.random.default_rng(3)
    good = sc.rank_request(rng, case, 20, candidates=3)
    too_long = sc.raw_history(rng, case, 100_001)
    rows = sc.rows_request(rng, case, [4, 2], width=5)
    return [
        (signatures.RANK, {k: v for k, v in good.items() if k != "item_attr_214"}, "item_attr_214"),
        (signatures.RANK, {**good, "item_id": good["item_id"].astype(np.float32)}, "int64"),
        (
            signatures.RANK,
            {**good, "item_category": good["item_category"][:2]},
            "must have as many values as `item_id`",
        ),
        (
            signatures.RANK,
            {**good, "history_categories": good["history_categories"][:5]},
            "history_categories",
        ),
        (
            signatures.RANK,
            {**good, "history_items": too_long[0], "history_categories": too_long[1]},
            "max_history_length=100000",
        ),
        (signatures.RANK, {**good, "user_id": good["item_id"]}, "shape []"),
        (
            signatures.SERVING_DEFAULT,
            {**rows, signatures.VALID_HISTORY_LENGTH: np.array([9, 2])},
            "exceeds the width",
        ),
        ("no_such_signature", good, "no_such_signature"),
    ]


def test_bad_requests_get_clear_errors_and_the_next_request_is_served(client, case):
    good = sc.rank_request(np.random.default_rng(4), case, 300, candidates=5)
    reference = sc.keras_rank(case, good)
    for signature, inputs, message in bad_requests(case):
        with pytest.raises(PredictionError, match=re.escape(message)):
            client.predict(inputs, signature_name=signature)
        assert_scores(client.predict(good, signature_name=signatures.RANK), reference)


def test_clients_address_versions(server, case):
    grpc_port, rest_port = server
    good = sc.rank_request(np.random.default_rng(5), case, 10, candidates=6)
    reference = sc.keras_rank(case, good)
    for made in (
        RestClient(port=rest_port, model_name="muse", version=1),
        GrpcClient(port=grpc_port, model_name="muse", version=1),
    ):
        with made:
            assert_scores(made.predict(good, signature_name=signatures.RANK), reference)
    for made, message in (
        (RestClient(port=rest_port, model_name="muse", version=2), "HTTP 404"),
        (GrpcClient(port=grpc_port, model_name="other"), "NOT_FOUND"),
    ):
        with made, pytest.raises(PredictionError, match=re.escape(message)):
            made.predict(good, signature_name=signatures.RANK)


def test_rest_row_format_status_metadata_and_errors(server, case):
    _, rest_port = server
    url = f"http://127.0.0.1:{rest_port}/v1/models/muse"
    rows = sc.rows_request(np.random.default_rng(6), case, [3, 5], width=5)
    instances = [
        {name: np.asarray(value)[i].tolist() for name, value in rows.items()} for i in range(2)
    ]
    reply = requests.post(url + ":predict", json={"instances": instances})
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    np.testing.assert_allclose(
        [p[signatures.LOGIT] for p in predictions], sc.keras_rows(case, rows), rtol=0, atol=1e-5
    )

    status = requests.get(url).json()["model_version_status"]
    assert [(s["version"], s["state"], s["status"]["error_code"]) for s in status] == [
        ("1", "AVAILABLE", "OK")
    ]
    metadata = requests.get(url + "/metadata").json()
    assert metadata["model_spec"]["name"] == "muse" and metadata["model_spec"]["version"] == "1"
    rank = metadata["metadata"]["signature_def"]["signature_def"][signatures.RANK]
    assert rank["inputs"]["history_items"]["dtype"] == "DT_INT64"
    assert sorted(rank["outputs"]) == sorted(signatures.OUTPUTS)

    for method, path, body, status_code in [
        ("POST", ":predict", b"{not json", 400),
        (
            "POST",
            ":predict",
            json.dumps({"inputs": {**{k: 1 for k in rows}, "item_id": [1.5]}}).encode(),
            400,
        ),
        ("POST", ":predict", json.dumps({"inputs": {}, "instances": []}).encode(), 400),
        ("POST", "/versions/3:predict", json.dumps({"inputs": {}}).encode(), 404),
        ("GET", "/labels/stable", None, 404),
        ("GET", ":nothing", None, 404),
    ]:
        reply = requests.request(method, url + path, data=body)
        assert reply.status_code == status_code, (path, reply.text)
        assert reply.json()["error"]
    assert requests.get(url).ok


def test_grpc_metadata_and_status(server):
    grpc_port, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "muse"
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            request, timeout=30
        )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        assert set(signatures.SIGNATURES) <= set(signature_map.signature_def)
        assert set(signature_map.signature_def[signatures.RANK].outputs) == set(signatures.OUTPUTS)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "muse"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=30
        )
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]


def _client_cli(*argv):
    """``python -m serving.client ARGV`` with ``-X importtime``: (result, modules it imported)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "serving.client", *argv],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    return result, imported, errors


def _tensorflow_runtime(imported):
    """The modules of TensorFlow's runtime (its protos alone are no runtime)."""
    return sorted(name for name in imported
                  if name in ("tensorflow", "tf_keras") or name.startswith("tensorflow.python"))


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_cli_scores_without_loading_tensorflow(server, case, tmp_path, protocol):
    grpc_port, rest_port = server
    ranked = sc.rank_request(np.random.default_rng(7), case, 40, candidates=4)
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({name: np.asarray(value).tolist() for name, value in ranked.items()})
    )
    port = grpc_port if protocol == "grpc" else rest_port
    result, imported, _ = _client_cli("--protocol", protocol, "--port", str(port), "--model_name",
                                      "muse", "--signature_name", signatures.RANK, "--request",
                                      str(request))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"numpy", "serving.protos" if protocol == "grpc" else "requests"} <= imported  # the log is read
    assert _tensorflow_runtime(imported) == []
    outputs = {
        name: np.asarray(value, np.float32) for name, value in json.loads(result.stdout).items()
    }
    assert_scores(outputs, sc.keras_rank(case, ranked))


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_cli_without_a_server_fails_in_one_line_naming_the_address(tmp_path, protocol):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"user_id": [1]}))
    port = free_port()
    result, imported, errors = _client_cli("--protocol", protocol, "--port", str(port),
                                           "--request", str(request))
    assert result.returncode == 1
    assert len(errors) == 1, errors
    assert re.match(rf"error: no answer from (http://)?127\.0\.0\.1:{port}\b.*check that the server "
                    rf"runs and serves {'gRPC' if protocol == 'grpc' else 'REST'}", errors[0]), errors[0]
    assert _tensorflow_runtime(imported) == []


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.int64).reshape(3, 4) - 5, np.array(7, np.int64), np.zeros((0, 3), np.int64),
    np.linspace(-1, 1, 5, dtype=np.float32), np.array([0.5, -2.0], np.float64),
    np.array([1.5, -0.25], np.float16), np.array([True, False]), np.arange(3, dtype=np.uint8),
])
def test_tensor_protos_without_tensorflow_match_tensorflows(value):
    import tensorflow as tf

    from serving import protos

    ours = protos.tensor_proto(value)
    assert tf.make_tensor_proto(value).dtype == ours.dtype
    np.testing.assert_array_equal(tf.make_ndarray(ours), value)
    for theirs in (tf.make_tensor_proto(value),  # tensor_content, or a value field for scalars
                   tf.make_tensor_proto(value.flat[0] if value.size else 0, value.dtype, value.shape)):
        expected = tf.make_ndarray(theirs)
        read = protos.ndarray(theirs)
        assert read.dtype == expected.dtype and read.shape == expected.shape
        np.testing.assert_array_equal(read, expected)


def test_clients_wait_for_the_model_and_time_out_clearly(server):
    grpc_port, rest_port = server
    with RestClient(port=rest_port) as rest, GrpcClient(port=grpc_port) as grpc_client:
        assert rest.wait_until_available(30) == grpc_client.wait_until_available(30) == 1
    nobody = free_port()
    for client in (RestClient(port=nobody, timeout=2), GrpcClient(port=nobody, timeout=2)):
        with client, pytest.raises(PredictionError, match="not available after 1 s"):
            client.wait_until_available(1, interval_s=0.2)
    with RestClient(port=rest_port, model_name="other") as wrong:
        with pytest.raises(PredictionError, match="not available after 0.5 s: HTTP 404"):
            wrong.wait_until_available(0.5, interval_s=0.2)


def test_request_files_are_the_rest_body_or_bare_inputs():
    inputs = {"user_id": 7, "history_items": [], "item_id": [1, 2]}
    for text, signature_name in [
        (json.dumps({"signature_name": "rank", "inputs": inputs}), "rank"),
        (json.dumps(inputs), None),
    ]:
        name, read = read_request(io.StringIO(text))
        assert name == signature_name
        assert {k: (v.dtype, v.tolist()) for k, v in read.items()} == {
            k: (np.int64, v) for k, v in inputs.items()
        }


@pytest.mark.parametrize("content, words", [
    ('{"inputs": {"user_id": 7, "item_id": [1, true, 3]}}',
     ["input 'item_id' holds true or false among numbers"]),
    ('{"inputs": {"user_id": 9223372036854775808, "item_id": [1]}}',
     ["input 'user_id' holds 9223372036854775808, outside the int64 range [-2^63, 2^63 - 1]"]),
    ('{"user_id": 7, "item_id": [-9223372036854775809, 1]}',
     ["input 'item_id' holds -9223372036854775809, outside the int64 range"]),
    ('{"item_id": [1, null]}', ["input 'item_id' holds null"]),
    ('[{"user_id": 7}]', ["holds a JSON list, not an object of inputs"]),
    ('{"signature_name": 5, "inputs": {"user_id": 7}}', ['"signature_name" must be a string']),
    (b"\xff\xfe{}", ["is not JSON"]),
    (None, ["Is a directory"]),
])
def test_request_files_that_cannot_be_sent_exactly_end_in_one_line(tmp_path, capsys, content,
                                                                   words):
    """Booleans among IDs (NumPy reads true as 1), IDs outside int64 (NumPy wraps or rounds them),
    and files that are not a JSON object of inputs are refused before anything is sent."""
    from serving import client as client_cli

    path = tmp_path / "request.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as stop:
        client_cli.main(["--request", str(path), "--port", str(free_port())])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m serving.client: error: --request {path}"), err
    for word in words:
        assert word in err, err


def test_deployment_configs_parse():
    with open(os.path.join(SERVING, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.model_platform) == ("muse", "tensorflow")
    with open(os.path.join(SERVING, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    service = compose["services"]["muse-serving"]
    # The default image serves exports of the newest tested TensorFlow (the current set's pin).
    with open(os.path.join(ROOT, "requirements", "constraints.txt")) as f:
        (current,) = [line.split(";")[0].split("==")[1] for line in f
                      if line.startswith("tensorflow-serving-api==") and '>= "3.12"' in line]
    assert service["image"] == f"tensorflow/serving:${{TF_SERVING_VERSION:-{current}}}"
    assert {"127.0.0.1:8500:8500", "127.0.0.1:8501:8501"} <= set(service["ports"])
    flags = " ".join(service["command"])
    for name in ("models.config", "monitoring.config"):
        assert f"/config/{name}" in flags and os.path.exists(os.path.join(SERVING, name))
