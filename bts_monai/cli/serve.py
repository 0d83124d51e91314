"""``bts-serve``: a local web page to upload a scan, see the tumour, and download the mask and report.

The server binds to 127.0.0.1 (this computer only) unless ``--host`` says otherwise; uploads and
results stay in a temporary folder and are deleted after ``--keep-minutes``.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

from bts_monai.cli._common import (
    add_output_scheme_argument,
    add_speed_arguments,
    apply_output_scheme,
    exits_on_bad_input,
    setup_logging,
    speed_options,
)
from bts_monai.errors import BtsInputError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    from bts_monai.serve.app import DEFAULT_KEEP_MINUTES, DEFAULT_MAX_UPLOAD_MB

    p = argparse.ArgumentParser(prog="bts-serve", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this computer only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--ckpt", type=Path, help="a trained checkpoint (.ckpt)")
    model.add_argument("--model", help="a packaged default model by name")
    add_speed_arguments(p, "speed (as bts-infer)")
    add_output_scheme_argument(p)
    p.add_argument(
        "--workdir", type=Path, help="folder for uploads and results (default: a new temporary folder, removed at exit)"
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest upload accepted, in MB (default: %(default)s)",
    )
    p.add_argument(
        "--keep-minutes",
        type=float,
        default=DEFAULT_KEEP_MINUTES,
        help="how long results are kept after a case is done (default: %(default)s)",
    )
    p.add_argument(
        "--max-disk-mb",
        type=float,
        help="quota of the work folder in MB: uploads that would pass it get 503 (default: none)",
    )
    from bts_monai.inference.display import CONVENTIONS, DEFAULT_CONVENTION

    p.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default=DEFAULT_CONVENTION,
        help="how slices show left and right: radiological (patient's right on the image's left) or "
        "neurological (default: %(default)s)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    return p


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the address is printed (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise BtsInputError(None, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}/"


@exits_on_bad_input
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bts-serve``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.port < 0 or args.port > 65535:
        raise BtsInputError(None, f"--port {args.port} is not a port number (0-65535)")
    if args.max_upload_mb <= 0 or args.keep_minutes <= 0:
        raise BtsInputError(None, "--max-upload-mb and --keep-minutes must be positive")
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise BtsInputError(None, f"--overlap {args.overlap} must be at least 0 and below 1")
    if args.threads is not None and args.threads < 1:
        raise BtsInputError(None, f"--threads {args.threads} must be at least 1")

    from bts_monai.serve.app import create_app
    from bts_monai.serve.pipeline import load_predictor, resolve_model

    ckpt = args.ckpt if args.ckpt is not None else resolve_model(args.model)
    if args.max_disk_mb is not None and args.max_disk_mb <= 0:
        raise BtsInputError(None, f"--max-disk-mb {args.max_disk_mb} must be positive")
    predictor = load_predictor(ckpt, convention=args.convention, **speed_options(args))
    apply_output_scheme(predictor, args.output_scheme)
    import uvicorn

    sock = _listen(args.host, args.port)
    port = int(sock.getsockname()[1])
    local = args.host in ("127.0.0.1", "localhost", "::1")
    hosts = ["127.0.0.1", "localhost", "[::1]", args.host] if local else None
    if not local:
        logger.warning("listening on %s: other computers on the network can reach this page", args.host)
    app = create_app(
        predictor,
        workdir=args.workdir,
        max_upload_mb=args.max_upload_mb,
        keep_minutes=args.keep_minutes,
        max_disk_mb=args.max_disk_mb,
        model_name=ckpt.stem if ckpt.name else None,
        allowed_hosts=hosts,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    print(f"bts-serve: open {_url(args.host, port)} in a browser (Ctrl+C to stop)", flush=True)
    try:
        with sock:
            server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled: stopping is the normal end
        pass
    print("bts-serve: stopped; uploads and results deleted", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
