"""A local stand-in for ``tensorflow_model_server``, for development and tests where the TF Serving
binary is unavailable. It takes the same flags and speaks the same REST and gRPC APIs::

    python -m serving.server --model_name muse --model_base_path exports/muse \\
        --port 8500 --rest_api_port 8501

It serves the newest version directory under ``--model_base_path`` (loaded once, at start), replays
the export's warm-up requests first, and binds to loopback unless ``--host`` says otherwise. As in
TF Serving, ``--rest_api_port 0`` (the default) disables REST. It runs the SavedModel through
TensorFlow's Python runtime, so it proves the export and the protocols, not TF Serving's speed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence

from serving.grpc_service import make_grpc_server
from serving.rest import make_rest_server
from serving.servable import Servable

logger = logging.getLogger("serving.server")


class ModelServer:
    """The gRPC and (optional) REST front ends of one Servable.

    Args:
        servable: the loaded model.
        host: the address both front ends bind to.
        port: gRPC port.
        rest_api_port: REST port; 0 disables REST.
    """

    def __init__(
        self, servable: Servable, host: str = "127.0.0.1", port: int = 8500, rest_api_port: int = 0
    ):
        self.grpc_server = make_grpc_server(servable, host, port)
        self.rest_server = (
            make_rest_server(servable, host, rest_api_port) if rest_api_port else None
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


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m serving.server``: load, warm up, serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model_name", default="default", help="the name requests must use")
    parser.add_argument(
        "--model_base_path", required=True, help="holds numeric version directories"
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    servable = Servable(args.model_name, args.model_base_path)
    logger.info("Loaded %s version %d from %s", servable.name, servable.version, servable.path)
    if args.enable_model_warmup:
        logger.info("Replayed %d warm-up requests", servable.warmup())
    server = ModelServer(servable, args.host, args.port, args.rest_api_port)
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    server.start()
    logger.info("Running gRPC ModelServer at %s:%d", args.host, args.port)
    if args.rest_api_port:
        logger.info("Exporting HTTP/REST API at %s:%d", args.host, args.rest_api_port)
    stopping.wait()
    logger.info("Shutting down")
    server.stop()


if __name__ == "__main__":
    main()
