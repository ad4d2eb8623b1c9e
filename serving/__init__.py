"""Serving muse-tf SavedModels: TF Serving configs, a REST/gRPC client and a local
stand-in for ``tensorflow_model_server``. See serving/README.md."""

from muse_tf import keras2

keras2.select()  # before any module of this package imports TensorFlow

# tensorflow_model_server's gRPC message limit (kint32max); gRPC's own default is 4 MiB, too small
# for requests carrying several 100K-long histories.
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1
