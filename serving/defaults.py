"""The local server's default resource bounds (serving/README.md lists them), apart from the front
ends that apply them (``serving.rest``, ``serving.grpc_service``) so that ``python -m
serving.server --help`` shows them before TensorFlow loads."""

# REST connections handled at once; more get 503.
DEFAULT_NUM_THREADS = 16
DEFAULT_TIMEOUT_S = 30.0
# The time one REST request's headers and body have to arrive: a client trickling a byte every few
# seconds never trips the per-read timeout above, and would hold its connection slot for ever.
# 60 s carries the largest default body (64 MiB) at ~9 Mbit/s.
DEFAULT_REQUEST_TIMEOUT_S = 60.0
# JSON is ~2.7x larger than the binary request: a rank request with L = 100,000 and C = 1,000 is
# 4.3 MB; serving_default at the export's default rows x width cap (1M values) is ~40 MB.
DEFAULT_MAX_BODY_BYTES = 64 << 20
# The local server's default gRPC request size limit. TF Serving accepts up to 2 GiB; 64 MiB holds a
# rank request with 100K-long histories (1.6 MB) or a serving_default request at the export's
# default rows x width cap (16 MB) with room to spare, and bounds what one call can make us buffer.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
# The most values one gRPC input tensor may declare.
DEFAULT_MAX_TENSOR_ELEMENTS = 10_000_000
# gRPC handler threads.
DEFAULT_GRPC_MAX_THREADS = 8
# The deadline of one forwarded Predict (--forward_to), and how long to wait at start for the model
# to be AVAILABLE there (TF Serving loading and warming up).
DEFAULT_FORWARD_TIMEOUT_MS = 30_000
DEFAULT_FORWARD_WAIT_S = 300
# rank_by_user's history store: each call's deadline; the prefetch cache's byte budget (about 650
# users at 100,000 behaviours) and time to live; store calls in progress at once.
DEFAULT_HISTORY_TIMEOUT_MS = 1_000
DEFAULT_HISTORY_CACHE_BYTES = 1 << 30
DEFAULT_HISTORY_CACHE_TTL_S = 60.0
DEFAULT_HISTORY_THREADS = 8
