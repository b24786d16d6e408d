"""Command line: ``python -m training {train,evaluate,export}``.

Examples:
    python -m training train training/configs/caps_lite.yaml            # -> runs/caps-lite/
    torchrun --nproc_per_node 2 -m training train CONFIG                  # DDP (gloo on CPU, nccl on GPU)
    python -m training export runs/caps-lite --evaluation runs/eval/caps-lite.json
    python -m training evaluate --models caps sift orb --out runs/eval/caps-lite.json
    python -m training train training/configs/hndesc_lite.yaml           # -> runs/hndesc-lite/
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .config import load_config

# The public evaluation and training sets (docs/training.md, "$DATA").
DATA = Path(os.environ.get("FEATURESERVE_DATA", "../shared/data"))


def _train(args: argparse.Namespace) -> None:
    from .trainer import train

    config = load_config(args.config, {"optim": {"steps": args.steps}} if args.steps else None)
    summary = train(config, args.run_dir or Path("runs") / config.name, resume=args.resume)
    print(json.dumps(summary, indent=1))


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluation.report import evaluate_models

    posed = [tuple(spec.split(":", 1)) for spec in args.posed]
    report = evaluate_models(
        args.models, args.card, args.homography, posed, args.max_keypoints, args.out, json.loads(args.conf)
    )
    print(report)


def _export(args: argparse.Namespace) -> None:
    from .evaluation.report import card_summary
    from .export import export, speed_summary

    method = load_config(args.run_dir / "config.yaml").method
    evaluation = card_summary(json.loads(args.evaluation.read_text()), method) if args.evaluation else None
    speed = speed_summary(json.loads(args.speed.read_text()), method) if args.speed else None
    kwargs = {"out_dir": args.out_dir} if args.out_dir else {}
    options = {"dtype": args.dtype, "evaluation": evaluation, "speed": speed, "alpha": args.interpolate, **kwargs}
    print(export(args.run_dir, args.name, **options))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the subcommand."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config")
    train.add_argument("config", type=Path)
    train.add_argument("--run-dir", type=Path, default=None, help="default: runs/<config name>")
    train.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt if present")
    train.add_argument("--steps", type=int, default=None, help="override optim.steps")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="homography and posed-pair evaluation of registry models")
    evaluate.add_argument("--models", nargs="+", default=["caps", "sift", "orb"])
    evaluate.add_argument(
        "--card", type=Path, default=None, help="model card for the first of --models (default: its committed one)"
    )
    evaluate.add_argument(
        "--conf", default="{}", help="JSON options for the first of --models, e.g. '{\"scale_levels\": 3}'"
    )
    evaluate.add_argument("--homography", type=Path, default=DATA / "oxford_affine", help="HPatches-layout folder")
    evaluate.add_argument(
        "--posed",
        nargs="*",
        default=[f"strecha:{DATA / 'strecha_mvs' / 'castle-P19'}"],
        help="FORMAT:PATH posed sets (strecha, kapture, megadepth)",
    )
    evaluate.add_argument("--max-keypoints", type=int, default=2048)
    evaluate.add_argument("--out", type=Path, default=Path("runs/eval/evaluation.json"), help="JSON; .md beside it")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="write a run's weights and model card into models/checkpoints")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--name", default="caps-lite")
    export.add_argument("--evaluation", type=Path, default=None, help="JSON written by `evaluate`")
    export.add_argument(
        "--speed", type=Path, default=None, help="JSON written by python -m benchmarks.performance.extraction_speed"
    )
    export.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    export.add_argument(
        "--interpolate",
        type=float,
        default=None,
        metavar="ALPHA",
        help="export (1 - ALPHA) x the weights the run started from (its init_from) + ALPHA x its own (WiSE-FT)",
    )
    export.add_argument("--out-dir", type=Path, default=None, help="default: featureserve/models/checkpoints")
    export.set_defaults(run=_export)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
