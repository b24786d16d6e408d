"""Command line: ``featureserve serve | models | extract | match | eval | train`` (or ``python -m featureserve``).

``extract`` and ``match`` run the models in this process unless given ``--url`` (REST) or ``--grpc``;
``eval`` and ``train`` run the offline ``training`` package in a subprocess. See ``featureserve COMMAND -h``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

EXAMPLES = """examples:
  featureserve serve --port 8080
  featureserve models --url http://127.0.0.1:8080
  featureserve extract photo.jpg --model orb --out photo.npz
  featureserve extract images/*.jpg --model sift --out features.h5          # hloc layout
  featureserve match a.jpg b.jpg --geometry homography --draw matches.png
  featureserve match a.jpg b.jpg --grpc 127.0.0.1:50051 --hloc exports/
  featureserve match --pairs pairs.txt images/ --out matches.h5 --colmap database.db
  featureserve match a.jpg b.jpg --geometry essential --intrinsics 525,525,319.5,239.5 --json
  featureserve eval oxford_affine/ --models sift orb akaze                  # or one sequence: oxford_affine/boat
  featureserve train training/configs/caps_tiny.yaml --run-dir runs/tiny
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``featureserve`` argument parser."""
    from . import cli

    parser = argparse.ArgumentParser(
        prog="featureserve",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve REST and gRPC; settings come from FEATURESERVE_* variables")
    serve.add_argument("--host", help="override FEATURESERVE_HOST")
    serve.add_argument("--port", type=int, help="override FEATURESERVE_REST_PORT")
    serve.add_argument("--grpc-port", type=int, help="override FEATURESERVE_GRPC_PORT")

    models = commands.add_parser("models", help="the models a server has loaded, or those this installation can run")
    cli.add_server_options(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(run=cli.models_command)

    extract = commands.add_parser("extract", help="features of one or more images")
    extract.add_argument("images", nargs="+", metavar="IMG")
    extract.add_argument("--out", type=Path, help="save to .npz (one image) or .h5 (hloc features layout)")
    cli.add_extract_options(extract)
    cli.add_server_options(extract)
    extract.set_defaults(run=cli.extract_command)

    match = commands.add_parser("match", help="verified matches between two images, or every pair of a pairs file")
    match.add_argument("inputs", nargs="+", metavar="IMG", help="two images; with --pairs, the folder of the images")
    match.add_argument(
        "--pairs",
        type=Path,
        metavar="TXT",
        help="hloc pairs file ('name0 name1' per line, names relative to the folder): match every pair, "
        "each image extracted once",
    )
    match.add_argument(
        "--out", type=Path, metavar="H5", help="with --pairs: the matches (hloc layout); features.h5 goes beside it"
    )
    match.add_argument("--colmap", type=Path, metavar="DB", help="with --pairs: also write a COLMAP database")
    cli.add_match_options(match)
    match.add_argument("--draw", type=Path, metavar="PNG", help="write a picture of the matches")
    match.add_argument(
        "--draw-max-lines", type=int, default=300, metavar="N", help="draw at most N matches, inliers first (300)"
    )
    match.add_argument("--draw-inliers-only", action="store_true", help="leave the outliers out of the picture")
    match.add_argument(
        "--hloc", type=Path, metavar="DIR", help="add both images and the pair to DIR/{features,matches}.h5"
    )
    cli.add_extract_options(match)
    cli.add_server_options(match)
    match.set_defaults(run=cli.match_command)

    evaluate = commands.add_parser("eval", help="homography evaluation (MMA, homography accuracy) on a dataset")
    evaluate.add_argument("dataset", type=Path, metavar="DATASET", help="folder of HPatches/Oxford-layout sequences")
    evaluate.add_argument("--models", nargs="+", default=["sift", "orb", "akaze"])
    evaluate.add_argument("--max-keypoints", type=int, default=2048)
    evaluate.add_argument("--out", type=Path, help="write the full report (JSON) here")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.set_defaults(run=cli.eval_command)

    train = commands.add_parser("train", help="train a learned model from a YAML config (python -m training train)")
    train.add_argument("config", type=Path, metavar="CONFIG")
    train.add_argument("--run-dir", type=Path, help="default: runs/<config name>")
    train.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt if present")
    train.add_argument("--steps", type=int, help="override optim.steps")
    train.set_defaults(run=cli.train_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run it."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args, argv)
    from .cli import CommandError, stderr, user_errors

    try:
        return args.run(args)
    except CommandError as error:
        stderr.print(f"featureserve {args.command}: {error}", markup=False)
        return 2
    except user_errors() as error:  # unreadable files, bad options, errors answered by a server or the models
        stderr.print(f"featureserve {args.command}: {type(error).__name__}: {error}", markup=False)
        return 1


def serve(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``featureserve serve``: REST and gRPC in this process until SIGTERM."""
    from .service.serve import restart_with_malloc_environment
    from .service.serve import serve as run_server
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
    return run_server(settings)


if __name__ == "__main__":
    sys.exit(main())
