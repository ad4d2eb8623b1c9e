"""A local stand-in for ``tensorflow_model_server``, for development and tests where the TF Serving
binary is unavailable. It takes the same flags and speaks the same REST and gRPC APIs::

    python -m serving.server --model_base_path exports/muse --port 8500 --rest_api_port 8501

It serves the newest version directory under ``--model_base_path`` (loaded once, at start), replays
the export's warm-up requests first, prints ``ready: gRPC HOST:PORT, REST HOST:PORT, model NAME
version N`` when it accepts requests, and binds to loopback unless ``--host`` says otherwise. As in
TF Serving, ``--rest_api_port 0`` (the default) disables REST. It runs the SavedModel through
TensorFlow's Python runtime, so it proves the export and the protocols, not TF Serving's speed.

Resource bounds take TF Serving's flags (``--grpc_channel_arguments``, ``--grpc_max_threads``,
``--rest_api_num_threads``, ``--rest_api_timeout_in_ms``) plus three of its own
(``--rest_api_request_timeout_in_ms``, ``--rest_api_max_body_bytes``, ``--max_tensor_elements``);
serving/README.md lists the defaults.

Beyond TF Serving: ``--history_store URL`` adds the signature ``rank_by_user`` (the history and
profile come from the store by user ID; serving/by_user.py) and the REST calls ``:append`` and
``:prefetch``; ``--forward_to HOST:PORT`` runs no model here and forwards each Predict to a
TF Serving at that address (a sidecar in front of it), in place of ``--model_base_path``.
TensorFlow loads after the flags are parsed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from muse_tf import cli
from muse_tf.contract import limits as export_limits
from muse_tf.contract import signatures
from serving import defaults

if TYPE_CHECKING:
    from serving.servable import Servable

logger = logging.getLogger("serving.server")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the front ends bound (defaults in serving/README.md).

    Attributes:
        grpc_channel_arguments: gRPC server options, e.g. ``grpc.max_receive_message_length``.
        grpc_max_threads: gRPC handler threads.
        rest_api_num_threads: REST connections handled at once.
        rest_api_timeout_s: REST socket timeout (idle and stalled clients are dropped).
        rest_api_request_timeout_s: the time a REST request's headers and body have to arrive.
        rest_api_max_body_bytes: the largest REST request body.
        max_tensor_elements: the most values one gRPC input tensor may declare.
    """

    grpc_channel_arguments: tuple = ()
    grpc_max_threads: int = defaults.DEFAULT_GRPC_MAX_THREADS
    rest_api_num_threads: int = defaults.DEFAULT_NUM_THREADS
    rest_api_timeout_s: float = defaults.DEFAULT_TIMEOUT_S
    rest_api_request_timeout_s: float = defaults.DEFAULT_REQUEST_TIMEOUT_S
    rest_api_max_body_bytes: int = defaults.DEFAULT_MAX_BODY_BYTES
    max_tensor_elements: int = defaults.DEFAULT_MAX_TENSOR_ELEMENTS


class ModelServer:
    """The gRPC and (optional) REST front ends of one Servable.

    Args:
        servable: the loaded model.
        host: the address both front ends bind to.
        port: gRPC port.
        rest_api_port: REST port; 0 disables REST.
        limits: resource bounds of both front ends (default: ``Limits()``).
    """

    def __init__(
        self,
        servable: Servable,
        host: str = "127.0.0.1",
        port: int = 8500,
        rest_api_port: int = 0,
        limits: Limits | None = None,
    ):
        from serving import grpc_service, rest

        limits = limits or Limits()
        self.grpc_server = grpc_service.make_grpc_server(
            servable,
            host,
            port,
            threads=limits.grpc_max_threads,
            channel_arguments=limits.grpc_channel_arguments,
            max_tensor_elements=limits.max_tensor_elements,
        )
        self.rest_server = (
            rest.make_rest_server(
                servable,
                host,
                rest_api_port,
                num_threads=limits.rest_api_num_threads,
                timeout_s=limits.rest_api_timeout_s,
                max_body_bytes=limits.rest_api_max_body_bytes,
                request_timeout_s=limits.rest_api_request_timeout_s,
            )
            if rest_api_port
            else None
        )
        self._rest_thread = None

    def start(self) -> None:
        """Starts gRPC, and REST (if enabled) in a daemon thread; returns at once."""
        self.grpc_server.start()
        if self.rest_server is not None:
            self._rest_thread = threading.Thread(target=self.rest_server.serve_forever, daemon=True)
            self._rest_thread.start()

    def stop(self) -> None:
        """Stops both front ends, letting in-flight gRPC calls finish for up to a second."""
        if self.rest_server is not None:
            self.rest_server.shutdown()
            self.rest_server.server_close()
        self.grpc_server.stop(grace=1.0).wait()


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m serving.server``: ``tensorflow_model_server``'s flags."""
    parser = cli.parser("serving.server", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.description = __doc__
    parser.add_argument("--model_name", default=signatures.DEFAULT_MODEL_NAME,
                        help=f"the name requests must use ({signatures.DEFAULT_MODEL_NAME})")
    parser.add_argument(
        "--model_base_path",
        help="holds numeric version directories (EXPORT_DIR/NAME of muse_tf.export); "
        "required unless --forward_to is given",
    )
    parser.add_argument(
        "--forward_to", metavar="HOST:PORT",
        help="run no model here: forward every Predict to this TF Serving's gRPC port",
    )
    parser.add_argument(
        "--forward_timeout_ms", type=_positive, default=defaults.DEFAULT_FORWARD_TIMEOUT_MS,
        help=f"deadline of each forwarded call ({defaults.DEFAULT_FORWARD_TIMEOUT_MS})",
    )
    parser.add_argument(
        "--forward_wait_s", type=_positive, default=defaults.DEFAULT_FORWARD_WAIT_S,
        help="how long to wait at start for the model to be AVAILABLE at --forward_to "
        f"({defaults.DEFAULT_FORWARD_WAIT_S})",
    )
    parser.add_argument(
        "--max_history_length", type=_positive,
        help="most stored behaviours rank_by_user sends to rank (default: the export's "
        f"max_history_length; with --forward_to {export_limits.MAX_HISTORY_LENGTH})",
    )
    parser.add_argument(
        "--history_store", metavar="URL",
        help="serve rank_by_user, :append and :prefetch from this history store "
        "(sqlite:///PATH or redis://HOST:PORT/DB)",
    )
    parser.add_argument(
        "--history_timeout_ms", type=_positive, default=defaults.DEFAULT_HISTORY_TIMEOUT_MS,
        help="deadline of each history store call; past it the request gets UNAVAILABLE / 503 "
        f"({defaults.DEFAULT_HISTORY_TIMEOUT_MS})",
    )
    parser.add_argument(
        "--history_cache_bytes", type=int, default=defaults.DEFAULT_HISTORY_CACHE_BYTES,
        help="byte budget of the prefetch cache, least recently used out first; 0 disables it "
        f"({defaults.DEFAULT_HISTORY_CACHE_BYTES})",
    )
    parser.add_argument(
        "--history_cache_ttl_s", type=float, default=defaults.DEFAULT_HISTORY_CACHE_TTL_S,
        help="life of a cached user: how stale writes that bypass this server may be seen "
        f"({defaults.DEFAULT_HISTORY_CACHE_TTL_S:g})",
    )
    parser.add_argument(
        "--history_threads", type=_positive, default=defaults.DEFAULT_HISTORY_THREADS,
        help=f"history store calls in progress at once ({defaults.DEFAULT_HISTORY_THREADS})",
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=0, help="REST port; 0 disables REST")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument(
        "--enable_model_warmup",
        type=_flag,
        default=True,
        help="replay assets.extra/tf_serving_warmup_requests before serving",
    )
    parser.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="comma-separated gRPC server options, e.g. grpc.max_receive_message_length=67108864 "
        f"(default {defaults.DEFAULT_MAX_MESSAGE_BYTES}, the receive and send limits)",
    )
    parser.add_argument(
        "--grpc_max_threads", type=_positive, default=defaults.DEFAULT_GRPC_MAX_THREADS,
        help=f"gRPC handler threads ({defaults.DEFAULT_GRPC_MAX_THREADS})",
    )
    parser.add_argument(
        "--rest_api_num_threads",
        type=_positive,
        default=defaults.DEFAULT_NUM_THREADS,
        help=f"REST connections handled at once; more get 503 ({defaults.DEFAULT_NUM_THREADS})",
    )
    parser.add_argument(
        "--rest_api_timeout_in_ms",
        type=_positive,
        default=int(defaults.DEFAULT_TIMEOUT_S * 1000),
        help="REST socket timeout: idle and stalled connections are dropped "
        f"({int(defaults.DEFAULT_TIMEOUT_S * 1000)})",
    )
    parser.add_argument(
        "--rest_api_request_timeout_in_ms",
        type=_positive,
        default=int(defaults.DEFAULT_REQUEST_TIMEOUT_S * 1000),
        help="time a REST request's headers and body have to arrive, however steadily they "
        f"trickle; later ones get 408 ({int(defaults.DEFAULT_REQUEST_TIMEOUT_S * 1000)})",
    )
    parser.add_argument(
        "--rest_api_max_body_bytes",
        type=_positive,
        default=defaults.DEFAULT_MAX_BODY_BYTES,
        help=f"largest REST request body; larger ones get 413 ({defaults.DEFAULT_MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--max_tensor_elements",
        type=_positive,
        default=defaults.DEFAULT_MAX_TENSOR_ELEMENTS,
        help="most values one gRPC input tensor may declare "
        f"({defaults.DEFAULT_MAX_TENSOR_ELEMENTS})",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
    return parser


def _model(args: argparse.Namespace) -> Servable:
    """The servable that runs the model: the newest version loaded here, or the one at
    ``--forward_to``; wrapped for ``rank_by_user`` when a history store is given. The flags are
    checked before the (slow) model load."""
    from serving.servable import Servable, ServingError

    if (args.model_base_path is None) == (args.forward_to is None):
        raise cli.UsageError("give exactly one of --model_base_path and --forward_to")
    if args.history_cache_bytes < 0 or args.history_cache_ttl_s < 0:
        raise cli.UsageError("--history_cache_bytes and --history_cache_ttl_s must be >= 0")
    store = None
    if args.history_store is not None:
        from serving.history.store import StoreError, open_store

        try:
            store = open_store(args.history_store, timeout_s=args.history_timeout_ms / 1000)
        except (ValueError, StoreError) as error:
            raise cli.UsageError(f"--history_store: {error}") from None
    if args.forward_to is not None:
        from serving import forward

        try:
            forward.split_target(args.forward_to)
            servable = forward.Remote(
                args.model_name, args.forward_to,
                args.max_history_length or export_limits.MAX_HISTORY_LENGTH,
                args.forward_timeout_ms / 1000, args.forward_wait_s,
            )
        except (ValueError, ServingError) as error:
            raise cli.UsageError(f"--forward_to: {error}") from None
    else:
        servable = Servable(args.model_name, args.model_base_path)
        exported = servable.max_history_length or export_limits.MAX_HISTORY_LENGTH
        if (args.max_history_length or 0) > exported:
            raise cli.UsageError(f"--max_history_length {args.max_history_length} exceeds the "
                                 f"export's max_history_length={exported}")
        servable.max_history_length = args.max_history_length or exported
    logger.info("Loaded %s version %d from %s", servable.name, servable.version, servable.path)
    if store is None:
        return servable
    from serving.by_user import UserServable

    logger.info("rank_by_user reads up to %d behaviours per user from %s",
                servable.max_history_length, args.history_store)
    return UserServable(
        servable, store, servable.max_history_length, args.history_timeout_ms / 1000,
        args.history_cache_bytes, args.history_cache_ttl_s, args.history_threads,
    )


def serve(args: argparse.Namespace) -> None:
    """Loads and warms up the newest version, then serves until SIGINT or SIGTERM."""
    from serving import grpc_service

    try:
        channel_arguments = tuple(grpc_service.parse_channel_arguments(args.grpc_channel_arguments))
    except ValueError as error:
        raise cli.UsageError(f"--grpc_channel_arguments: {error}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    servable = _model(args)
    if args.enable_model_warmup:
        logger.info("Replayed %d warm-up requests", servable.warmup())
    limits = Limits(
        grpc_channel_arguments=channel_arguments,
        grpc_max_threads=args.grpc_max_threads,
        rest_api_num_threads=args.rest_api_num_threads,
        rest_api_timeout_s=args.rest_api_timeout_in_ms / 1000,
        rest_api_request_timeout_s=args.rest_api_request_timeout_in_ms / 1000,
        rest_api_max_body_bytes=args.rest_api_max_body_bytes,
        max_tensor_elements=args.max_tensor_elements,
    )
    server = ModelServer(servable, args.host, args.port, args.rest_api_port, limits)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    server.start()
    logger.info("Running gRPC ModelServer at %s:%d", args.host, args.port)
    if args.rest_api_port:
        logger.info("Exporting HTTP/REST API at %s:%d", args.host, args.rest_api_port)
    rest_address = f"{args.host}:{args.rest_api_port}" if args.rest_api_port else "off"
    # One line on stdout once the model is loaded, warmed up and both front ends accept requests,
    # in one write: with stderr in the same file, print's separate newline could land after a log line.
    print(f"ready: gRPC {args.host}:{args.port}, REST {rest_address}, "
          f"model {servable.name} version {servable.version}\n", end="", flush=True)
    stopping.wait()
    logger.info("Shutting down")
    server.stop()
    if hasattr(servable, "close"):
        servable.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m serving.server``: load, warm up, serve until SIGINT or SIGTERM."""
    cli.run(serve, arguments(), argv)


if __name__ == "__main__":
    main()
