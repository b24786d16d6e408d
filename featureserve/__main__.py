"""Command line: ``featureserve serve`` (or ``python -m featureserve serve``) and ``featureserve models``."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it."""
    parser = argparse.ArgumentParser(prog="featureserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve REST and gRPC; settings come from FEATURESERVE_* variables")
    serve_parser.add_argument("--host", help="override FEATURESERVE_HOST")
    serve_parser.add_argument("--port", type=int, help="override FEATURESERVE_REST_PORT")
    serve_parser.add_argument("--grpc-port", type=int, help="override FEATURESERVE_GRPC_PORT")
    commands.add_parser("models", help="list the models this installation can serve")
    args = parser.parse_args(argv)

    from .models import available_models

    if args.command == "models":
        print("\n".join(available_models()))
        return 0

    from .service.serve import restart_with_malloc_environment, serve
    from .service.settings import Settings

    restart_with_malloc_environment(["-m", "featureserve", *(argv if argv is not None else sys.argv[1:])])

    overrides = {
        k: v
        for k, v in {"host": args.host, "rest_port": args.port, "grpc_port": args.grpc_port}.items()
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        print(f"featureserve: invalid settings:\n{error}", file=sys.stderr)
        return 2
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
