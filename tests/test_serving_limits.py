"""The local server's resource bounds: gRPC TensorProtos checked before they are materialised and a
message size limit; REST body limit, Content-Length and Transfer-Encoding rules, timeouts, a bounded
number of connections, deep JSON. Each abuse gets its status, and good requests keep their exact
scores. Property-based (hypothesis) fuzzing of both decoders closes the file."""

import json
import re
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from muse_tf.contract import signatures
from muse_tf.jobs import saved_model
from serving import grpc_service, rest
from serving.client import GrpcClient, PredictionError, RestClient
from serving.launch import free_port, http_statuses, raw_http, trickle_http
from serving.servable import InvalidArgument, Servable
from serving.server import Limits, ModelServer
from tests import serving_case as sc

LIMITS = Limits(
    grpc_channel_arguments=(("grpc.max_receive_message_length", 256 << 10),),
    grpc_max_threads=4,
    rest_api_num_threads=3,
    rest_api_timeout_s=1.0,
    rest_api_request_timeout_s=2.0,
    rest_api_max_body_bytes=64 << 10,
    max_tensor_elements=4_000,
)
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def case():
    return sc.make_case(seed=3)


@pytest.fixture(scope="module")
def servable(case, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    saved_model.export_saved_model(case.model, case.vocabularies, str(base), "muse")
    return Servable("muse", str(base / "muse"))


@pytest.fixture(scope="module")
def server(servable):
    """The front ends in this process with small limits; yields (grpc port, rest port)."""
    grpc_port, rest_port = free_port(), free_port()
    running = ModelServer(servable, "127.0.0.1", grpc_port, rest_port, LIMITS)
    running.start()
    yield grpc_port, rest_port
    running.stop()


@pytest.fixture(scope="module")
def good(case):
    request = sc.rank_request(np.random.default_rng(11), case, 200, candidates=4)
    return request, sc.keras_rank(case, request)


def assert_good_request_served(server, good):
    """A good request, on both protocols, gets the Keras model's scores."""
    grpc_port, rest_port = server
    request, reference = good
    for client in (RestClient(port=rest_port, model_name="muse"),
                   GrpcClient(port=grpc_port, model_name="muse")):
        with client:
            outputs = client.predict(request, signature_name="rank")
        np.testing.assert_allclose(outputs["logit"], reference, rtol=0, atol=1e-5)


# --- gRPC ---------------------------------------------------------------------------------------


def proto(dims, dtype=types_pb2.DT_INT64, **values):
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]
    )
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


@pytest.mark.parametrize(
    "tensor, message",
    [
        (proto([50_000_000], int64_val=[1]), "more than the server's max_tensor_elements=4000"),
        (proto([2**40, 2**40], int64_val=[1]), "max_tensor_elements=4000"),
        (proto([3], int64_val=[1, 2]), "declares shape [3] (3 values) but carries 2"),
        (proto([2], int64_val=[1, 2, 3]), "declares shape [2] (2 values) but carries 3"),
        (proto([0, 5], int64_val=[7]), "(0 values) but carries 1"),
        (proto([4], tensor_content=b"\0" * 31), "not a whole number of int64 values"),
        (proto([4], tensor_content=b"\0" * 32, int64_val=[1]), "comes with other value fields"),
        (proto([4], tensor_content=b"\0" * 40), "(4 values) but carries 5"),
        (proto([-1], int64_val=[1]), "negative dimension"),
        (proto([2], dtype=types_pb2.DT_STRING, tensor_content=b"ab"), "not a whole number"),
        (proto([2], dtype=types_pb2.DT_COMPLEX64, scomplex_val=[1.0, 2.0, 3.0]), "carries 1"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[1],
                                tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)),
         "must declare its shape"),
        (proto([1], dtype=999, int64_val=[1]), "unsupported dtype enum 999"),
        (proto([1], dtype=types_pb2.DT_RESOURCE), "unsupported dtype"),
        (proto([2], float_val=[1.0, 2.0]), "is int64 but carries values in float_val"),
    ],
)
def test_tensor_protos_that_misstate_their_size_are_refused_unread(tensor, message):
    with pytest.raises(InvalidArgument, match=re.escape(message)) as error:
        grpc_service.tensor_from_proto("x", tensor, max_elements=4_000)
    assert str(error.value).startswith("Input 'x'")


def test_tensor_protos_that_state_their_size_decode_as_tensorflow_does():
    values = np.arange(-6, 6, dtype=np.int64).reshape(3, 4)
    for tensor in (tf.make_tensor_proto(values), proto([3, 4], int64_val=values.ravel().tolist()),
                   proto([0, 4]), proto([], int64_val=[5])):
        np.testing.assert_array_equal(
            grpc_service.tensor_from_proto("x", tensor, max_elements=12), tf.make_ndarray(tensor)
        )


def test_grpc_refuses_shape_bombs_and_oversize_messages_then_serves(server, good):
    grpc_port, _ = server
    request, _ = good
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    predict = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict",
        request_serializer=predict_pb2.PredictRequest.SerializeToString,
        response_deserializer=predict_pb2.PredictResponse.FromString,
    )

    def call(**inputs):
        message = predict_pb2.PredictRequest()
        message.model_spec.name, message.model_spec.signature_name = "muse", "rank"
        for name, value in request.items():
            message.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        for name, tensor in inputs.items():
            message.inputs[name].CopyFrom(tensor)
        return predict(message, timeout=30)

    bomb = proto([50_000_000], int64_val=[1])  # 16 bytes on the wire
    with pytest.raises(grpc.RpcError) as error:
        call(item_id=bomb)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tensor_elements=4000" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        call(item_id=proto([3], int64_val=[1]))
    assert "declares shape [3] (3 values) but carries 1" in error.value.details()
    oversize = tf.make_tensor_proto(np.zeros(40_000, np.int64))  # 320 KB > the 256 KiB limit
    with pytest.raises(grpc.RpcError) as error:
        call(item_id=oversize)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()
    assert_good_request_served(server, good)


def test_channel_arguments_parse_like_tf_serving():
    assert grpc_service.parse_channel_arguments(
        "grpc.max_receive_message_length=1024, grpc.primary_user_agent=muse,"
    ) == [("grpc.max_receive_message_length", 1024), ("grpc.primary_user_agent", "muse")]
    with pytest.raises(ValueError, match="'oops' is not of the form key=value"):
        grpc_service.parse_channel_arguments("oops")


# --- REST ---------------------------------------------------------------------------------------


def exchange(port, raw, wait_s=5.0):
    received, closed = raw_http(port, raw, wait_s)
    return received, "closed" if closed else "open"


PREDICT = b"POST /v1/models/muse:predict HTTP/1.1\r\nHost: x\r\n"
STATUS = b"GET /v1/models/muse HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "headers, body, status",
    [
        (b"Content-Length: 10000000\r\n", b"", 413),  # refused before a single body byte
        (b"Content-Length: -5\r\n", b"", 400),
        (b"Content-Length: abc\r\n", b"", 400),
        (b"Content-Length: +5\r\n", b"{}{}{", 400),
        (b"Content-Length: 1_0\r\n", b"{}" * 5, 400),
        (b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}", 400),
        # Chunked: the chunk holds a complete second request, which must never be answered.
        (b"Transfer-Encoding: chunked\r\n", b"2c\r\n" + STATUS + b"\r\n0\r\n\r\n", 411),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", b"0\r\n\r\n" + STATUS, 411),
    ],
)
def test_rest_refuses_bad_framing_once_and_closes(server, good, headers, body, status):
    _, rest_port = server
    received, state = exchange(rest_port, PREDICT + headers + b"\r\n" + body)
    assert http_statuses(received) == [status] and state == "closed"
    assert b"Connection: close" in received
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]


def test_rest_body_limit_holds_for_real_bodies(server, good):
    _, rest_port = server
    request, _ = good
    padded = json.dumps({"signature_name": "rank",
                         "inputs": {k: np.asarray(v).tolist() for k, v in request.items()},
                         "padding": "x" * (64 << 10)}).encode()
    received, state = exchange(rest_port, PREDICT + b"Content-Length: %d\r\n\r\n" % len(padded)
                               + padded)
    assert http_statuses(received) == [413] and state == "closed"
    assert_good_request_served(server, good)


def test_rest_drops_idle_and_stalled_connections(server, good):
    _, rest_port = server
    started = time.monotonic()
    received, state = exchange(rest_port, b"POST /v1/models/muse:predict HTTP/1.1\r\nHo")
    assert (received, state) == (b"", "closed")  # a half-sent request line: dropped, no reply
    received, state = exchange(rest_port, PREDICT + b"Content-Length: 100\r\n\r\n{\"inp")
    assert http_statuses(received) == [408] and state == "closed"
    received, state = exchange(rest_port, STATUS)  # keep-alive, then idle
    assert http_statuses(received) == [200] and state == "closed"
    assert time.monotonic() - started < 3 * 5.0  # each closed after the 1 s timeout, not ours
    assert_good_request_served(server, good)


def test_rest_handles_a_bounded_number_of_connections(server, good):
    _, rest_port = server
    idle = [socket.create_connection(("127.0.0.1", rest_port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        received, state = exchange(rest_port, STATUS)
        assert http_statuses(received) == [503] and state == "closed"
    finally:
        for conn in idle:
            conn.close()
    time.sleep(0.3)
    assert_good_request_served(server, good)


def test_rest_requests_trickling_past_their_deadline_are_dropped_and_good_ones_answered(server,
                                                                                      good):
    """A byte every 0.4 s never trips the 1 s per-read timeout; the 2 s request deadline frees
    the slots of as many trickling clients as there are slots, so a good request is answered
    while they would still be trickling (8 s)."""
    grpc_port, rest_port = server
    outcomes = []

    def trickle():
        outcomes.append(trickle_http(rest_port, PREDICT * 10, interval_s=0.4, max_s=8.0))

    tricklers = [threading.Thread(target=trickle) for _ in range(LIMITS.rest_api_num_threads)]
    for thread in tricklers:
        thread.start()
    time.sleep(0.5)
    started, refused = time.monotonic(), []
    try:
        while time.monotonic() - started < 8.0:
            try:
                assert_good_request_served((grpc_port, rest_port), good)
                break
            except PredictionError as error:
                refused.append(str(error))
                time.sleep(0.2)
        answered_after = time.monotonic() - started
    finally:
        for thread in tricklers:
            thread.join()
    assert refused and refused[0].startswith("HTTP 503"), refused  # the tricklers held every slot
    assert answered_after < 2.0 + 1.5, (answered_after, refused[-1:])
    assert len(outcomes) == len(tricklers)
    for received, closed_after in outcomes:
        assert closed_after is not None and closed_after < 2.0 + 1.0, outcomes
        assert http_statuses(received) == [408], received
        assert b"not received within 2 s" in received


@pytest.mark.parametrize("where, depth", [("body", 20_000), ("item_id", 5_000), ("item_id", 40)])
def test_rest_deeply_nested_json_is_a_bad_request(server, good, where, depth):
    """Deeper than the JSON parser's recursion (the first two) or NumPy's 32 dimensions."""
    _, rest_port = server
    nested = "[" * depth + "1" + "]" * depth
    if where == "body":
        body = nested.encode()
    else:
        inputs = {k: np.asarray(v).tolist() for k, v in good[0].items()}
        body = json.dumps({"signature_name": "rank", "inputs": {**inputs, "item_id": "X"}})
        body = body.replace('"X"', nested).encode()
    received, _ = exchange(rest_port, PREDICT + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                           % len(body) + body)
    assert http_statuses(received) == [400], received[-300:]
    assert_good_request_served(server, good)


@pytest.mark.parametrize("name, value, message", [
    ("item_id", lambda ids: [ids[0], True, *ids[2:]], "holds true or false among numbers"),
    ("user_id", lambda _: 2**63, "holds 9223372036854775808, outside the int64 range"),
    ("item_id", lambda ids: [2**63, *ids[1:]], "holds 9223372036854775808, outside the int64"),
    ("history_items", lambda ids: [-(2**63) - 1, *ids[1:]], "holds -9223372036854775809, outside"),
])
def test_rest_refuses_booleans_and_ids_outside_int64_naming_the_input(server, good, name, value,
                                                                      message):
    """NumPy reads true as 1, and ids beyond int64 as uint64, float64 or objects: a 400 naming the
    input and the range, never a silent 1, a rounded ID or a 500."""
    _, rest_port = server
    inputs = {k: np.asarray(v).tolist() for k, v in good[0].items()}
    inputs[name] = value(inputs[name])
    body = json.dumps({"signature_name": "rank", "inputs": inputs}).encode()
    received, _ = exchange(rest_port, PREDICT + b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                           % len(body) + body)
    assert http_statuses(received) == [400], received[-300:]
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert error.startswith(f"Input {name!r} {message}"), error
    if "int64" in message:
        assert "[-2^63, 2^63 - 1]" in error


# --- fuzzing ------------------------------------------------------------------------------------

_DTYPES = [types_pb2.DT_INT64, types_pb2.DT_INT32, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE,
           types_pb2.DT_BOOL, types_pb2.DT_STRING, types_pb2.DT_UINT8, types_pb2.DT_HALF]


@st.composite
def tensor_protos(draw):
    dims = draw(st.lists(st.integers(-2, 2**62), max_size=4)
                | st.lists(st.integers(0, 6), max_size=3))
    tensor = proto(dims, dtype=draw(st.sampled_from(_DTYPES)))
    field = draw(st.sampled_from(["int64_val", "int_val", "float_val", "tensor_content", None]))
    if field == "tensor_content":
        tensor.tensor_content = draw(st.binary(max_size=200))
    elif field is not None:
        strategy = st.floats(width=32) if field == "float_val" else st.integers(-(2**31), 2**31 - 1)
        getattr(tensor, field).extend(draw(st.lists(strategy, max_size=40)))
    return tensor


@FUZZ
@given(tensor=tensor_protos())
def test_fuzz_grpc_tensor_decoding_is_refused_or_exact(tensor):
    """Any TensorProto is refused with InvalidArgument or decoded to exactly what TensorFlow
    decodes, within the element cap."""
    try:
        array = grpc_service.tensor_from_proto("x", tensor, max_elements=1_000)
    except InvalidArgument:
        return
    assert array.size <= 1_000
    assert list(array.shape) == [dim.size for dim in tensor.tensor_shape.dim]
    np.testing.assert_array_equal(array, tf.make_ndarray(tensor))


@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_grpc_request_bytes_never_escape_the_decoder(data):
    try:
        message = predict_pb2.PredictRequest.FromString(data)
    except Exception:  # what gRPC's deserializer refuses never reaches the servicer
        return
    for name, tensor in message.inputs.items():
        try:
            assert grpc_service.tensor_from_proto(name, tensor, 1_000).size <= 1_000
        except InvalidArgument:
            pass


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=30,
)


@FUZZ
@given(value=_JSON)
def test_fuzz_json_values_are_refused_or_exact_int64(value):
    spec = tf.TensorSpec([None], tf.int64)
    try:
        array = rest.json_to_array("x", value, spec)
    except InvalidArgument:
        return
    assert array.dtype == np.int64
    assert np.array_equal(array, np.asarray(value, dtype=object).astype(np.int64))
    leaves = list(_leaves(value))
    assert all(type(leaf) is int for leaf in leaves), value  # no true or false read as 1 or 0


def _leaves(value):
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


@FUZZ
@given(
    content_length=st.one_of(st.none(), st.integers(-10, 10**9).map(str),
                             st.text(st.characters(codec="ascii", exclude_characters="\r\n"),
                                     max_size=12)),
    chunked=st.booleans(),
    body=st.one_of(st.binary(max_size=300), _JSON.map(lambda v: json.dumps(v).encode()),
                   st.builds(lambda inputs: json.dumps({"signature_name": "rank",
                                                        "inputs": inputs}).encode(),
                             st.dictionaries(st.sampled_from(list(signatures.USER_FEATURES)
                                                             + list(signatures.CANDIDATE_FEATURES)),
                                             _JSON, max_size=4))),
)
def test_fuzz_rest_requests_get_one_client_error_never_a_server_error(server, content_length,
                                                                      chunked, body):
    _, rest_port = server
    headers = b"Connection: close\r\n"
    if chunked:
        headers += b"Transfer-Encoding: chunked\r\n"
    if content_length is not None:
        headers += b"Content-Length: " + content_length.strip().encode() + b"\r\n"
    received, state = exchange(rest_port, PREDICT + headers + b"\r\n" + body, wait_s=3.0)
    codes = http_statuses(received)
    assert state == "closed" and len(codes) <= 1
    assert all(400 <= code < 500 for code in codes), received[:300]
