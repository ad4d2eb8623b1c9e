"""One loaded SavedModel version with TF Serving's request checks, shared by the REST and gRPC
front ends of the local server.

Like ``tensorflow_model_server`` it serves the newest numeric version directory under the model's
base path, checks each request against the signature (names, dtypes, shapes) before running it, and
turns the model's own failed checks into INVALID_ARGUMENT errors, so one bad request never affects
the next.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    status_pb2,
)

from muse_tf import cli
from muse_tf.contract import signatures, warmup


class ServingError(Exception):
    """A request the server cannot serve; ``code`` is the gRPC status name, ``http_status`` REST's."""

    code = "INTERNAL"
    http_status = 500


class InvalidArgument(ServingError):
    """A malformed request, or one the model's own checks refuse (gRPC INVALID_ARGUMENT, HTTP 400)."""

    code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(ServingError):
    """An unknown model, version, label or signature route (gRPC NOT_FOUND, HTTP 404)."""

    code = "NOT_FOUND"
    http_status = 404


class Unavailable(ServingError):
    """A dependency (the history store, a forwarded-to server) did not answer in time (gRPC
    UNAVAILABLE, HTTP 503); the same request may succeed later."""

    code = "UNAVAILABLE"
    http_status = 503


class DataLoss(ServingError):
    """Stored data the server cannot decode (gRPC DATA_LOSS, HTTP 500)."""

    code = "DATA_LOSS"
    http_status = 500


class NoVersionError(cli.UsageError, FileNotFoundError):
    """The base path holds no servable version (missing, empty, or not an export's model dir)."""


def latest_version(base_path: str) -> int:
    """The largest numeric sub-directory of ``base_path`` that holds a SavedModel."""
    versions = [
        int(entry)
        for entry in (os.listdir(base_path) if os.path.isdir(base_path) else [])
        if entry.isdigit() and os.path.exists(os.path.join(base_path, entry, "saved_model.pb"))
    ]
    if not versions:
        raise NoVersionError(
            f"No SavedModel version directory (<number>/saved_model.pb) in {base_path}: pass the "
            "model directory an export wrote (EXPORT_DIR/NAME of `python -m muse_tf.export` or "
            "`python -m muse_tf.train`)."
        )
    return max(versions)


def read_signature_defs(export_dir: str) -> get_model_metadata_pb2.SignatureDefMap:
    """The SignatureDefs of the ``serve`` MetaGraph, as TF Serving's GetModelMetadata returns them."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            return get_model_metadata_pb2.SignatureDefMap(signature_def=meta_graph.signature_def)
    raise ValueError(f"{export_dir} has no MetaGraph tagged {tf.saved_model.SERVING!r}.")


def specs_of(signature_def: meta_graph_pb2.SignatureDef) -> dict[str, tf.TensorSpec]:
    """Input name -> TensorSpec of a SignatureDef (None for variable dimensions)."""
    specs = {}
    for name, info in signature_def.inputs.items():
        shape = None if info.tensor_shape.unknown_rank else [
            None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim
        ]
        specs[name] = tf.TensorSpec(shape, tf.as_dtype(info.dtype), name=name)
    return specs


def check_arrays(specs: Mapping[str, tf.TensorSpec], inputs: Mapping[str, np.ndarray]) -> None:
    """Raises InvalidArgument for an input whose dtype or shape its spec does not accept."""
    for name, value in inputs.items():
        spec = specs[name]
        if value.dtype != spec.dtype.as_numpy_dtype:
            raise InvalidArgument(f"Input {name!r} must be {spec.dtype.name}, got {value.dtype}.")
        if not spec.shape.is_compatible_with(value.shape):
            raise InvalidArgument(
                f"Input {name!r} must have shape {_shape(spec.shape)}, got {list(value.shape)}."
            )


def check_names(names: Iterable[str], accepted: set[str], required: set[str]) -> None:
    """Raises InvalidArgument for a name outside ``accepted`` or a ``required`` one missing."""
    unknown = sorted(set(names) - accepted)
    if unknown:
        raise InvalidArgument(
            f"input tensor alias not found in signature: {unknown[0]}. "
            f"Inputs expected to be in the set {{{','.join(sorted(accepted))}}}."
        )
    missing = sorted(required - set(names))
    if missing:
        optional = sorted(accepted - required)
        raise InvalidArgument(
            f"Missing input(s) {', '.join(missing)}; the signature needs {sorted(required)}"
            + (f" (and accepts {optional})." if optional else ".")
        )


# The message of the export's history length check (``muse_tf.jobs.saved_model``), which names its limit.
_HISTORY_LIMIT = re.compile(rb"max_history_length=([0-9]+)")


def history_limit(export_dir: str) -> int | None:
    """The export's ``max_history_length``, read from the message of its own length check in
    ``saved_model.pb`` (None if absent), so ``rank_by_user`` reads no more than ``rank`` accepts."""
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        match = _HISTORY_LIMIT.search(f.read())
    return int(match.group(1)) if match else None


def _shape(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape.as_list()) + "]"


def _assertion(message: str) -> str:
    """The model's own check message, without TensorFlow's node and stack decoration."""
    match = re.search(r"assertion failed: (.*)", message)
    return match.group(1).strip() if match else message.strip()


class Servable:
    """The newest version of model ``name`` under ``base_path``.

    Args:
        name: the model name requests must use.
        base_path: the directory holding numeric version directories.
    """

    def __init__(self, name: str, base_path: str):
        self.name = name
        self.version = latest_version(base_path)
        self.path = os.path.join(base_path, str(self.version))
        self._loaded = tf.saved_model.load(self.path, tags=[tf.saved_model.SERVING])
        self.signature_defs = read_signature_defs(self.path)
        self.max_history_length = history_limit(self.path)

    def check_spec(self, name: str, version: int | None = None, label: str | None = None) -> None:
        """Raises NotFound unless the request addresses this model (and this version)."""
        if name != self.name:
            raise NotFound(f"Servable not found for request: Latest({name})")
        if label:
            raise NotFound(f"Unrecognized servable version label: {label}")
        if version is not None and version != self.version:
            raise NotFound(f"Servable not found for request: Specific({name}, {version})")

    def input_specs(self, signature_name: str) -> dict[str, tf.TensorSpec]:
        """Input name -> TensorSpec (dtype, shape with None for variable dimensions).

        Raises:
            InvalidArgument: for an unknown signature ("" means ``serving_default``).
        """
        name = signature_name or signatures.SERVING_DEFAULT
        served = sorted(key for key in self.signature_defs.signature_def if not key.startswith("__"))
        if name not in served:
            raise InvalidArgument(
                f'Serving signature name: "{name}" not found in signature def; available: {served}'
            )
        return specs_of(self.signature_defs.signature_def[name])

    def check_input_names(self, signature_name: str, names: Iterable[str]) -> None:
        """Raises InvalidArgument for an unknown or a missing input name."""
        expected = set(self.input_specs(signature_name))
        check_names(names, expected, expected)

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str = ""
    ) -> dict[str, np.ndarray]:
        """Runs a signature on NumPy inputs that must match its names, dtypes and shapes exactly."""
        self.check_input_names(signature_name, inputs)
        check_arrays(self.input_specs(signature_name), inputs)
        return self._run(inputs, signature_name or signatures.SERVING_DEFAULT)

    def predict_annotated(
        self, inputs: Mapping[str, np.ndarray], signature_name: str = ""
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """``predict``'s outputs and the response metadata the front ends send with them (none
        here; ``rank_by_user`` says which history it used)."""
        return self.predict(inputs, signature_name), {}

    def _run(self, inputs: Mapping[str, np.ndarray], signature_name: str) -> dict[str, np.ndarray]:
        """Runs checked inputs through the loaded signature."""
        function = self._loaded.signatures[signature_name]
        try:
            outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            raise InvalidArgument(_assertion(error.message)) from error
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def warmup(self) -> int:
        """Replays the export's warm-up records, as TF Serving does on load; returns their count."""
        requests = warmup.read_warmup_requests(self.path)
        for signature_name, inputs in requests:
            self.predict(inputs, signature_name)
        return len(requests)

    def model_spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        """The ModelSpec responses carry: name, the served version and the signature used."""
        return model_pb2.ModelSpec(
            name=self.name,
            version=wrappers_pb2.Int64Value(value=self.version),
            signature_name=signature_name,
        )

    def status(self) -> get_model_status_pb2.GetModelStatusResponse:
        """GetModelStatus's answer: the one loaded version, AVAILABLE."""
        loaded = get_model_status_pb2.ModelVersionStatus(
            version=self.version,
            state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
            status=status_pb2.StatusProto(),  # error_code OK
        )
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[loaded])

    def metadata(self) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata's answer: the model spec and the ``serve`` SignatureDefs."""
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=self.model_spec())
        response.metadata["signature_def"].Pack(self.signature_defs)
        return response
