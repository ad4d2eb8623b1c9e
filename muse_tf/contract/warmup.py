"""TF Serving warm-up records: ``assets.extra/tf_serving_warmup_requests`` in a SavedModel.

TF Serving replays these ``PredictionLog`` records when it loads a version, before marking it
AVAILABLE, so the first real request does not pay for graph optimisation and memory allocation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def write_warmup_requests(
    export_dir: str,
    model_name: str,
    requests: Sequence[tuple[str, Mapping[str, np.ndarray]]],
) -> str:
    """Writes one PredictionLog per (signature name, inputs) pair; returns the file's path."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
            )
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(export_dir: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The (signature name, inputs) pairs of an export's warm-up file; [] if it has none."""
    path = os.path.join(export_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        requests.append((request.model_spec.signature_name, inputs))
    return requests
