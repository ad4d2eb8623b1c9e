"""Serving muse-tf SavedModels: TF Serving configs, warm-up records, a REST/gRPC client and a local
stand-in for ``tensorflow_model_server``. See serving/README.md."""

import muse_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before anything here imports TensorFlow)

# tensorflow_model_server's gRPC message limit (kint32max); gRPC's own default is 4 MiB, too small
# for requests carrying several 100K-long histories.
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1
