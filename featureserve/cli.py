"""The ``featureserve`` commands other than ``serve``: models, extract, match, eval, train.

``extract`` and ``match`` run the models in this process (`LocalClient`) unless given ``--url`` (a REST
server) or ``--grpc`` (a gRPC server); all three give the same results. ``eval`` and ``train`` run the
offline ``training`` package in a subprocess (``python -m training ...``): the ``featureserve`` package
never imports ``training``, which the Docker image leaves out. Tables go to stdout (``--json`` for
machine-readable output), progress bars to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client.results import FeatureSet, MatchResult, ModelList

API_KEY_VARIABLE = "FEATURESERVE_CLIENT_API_KEY"
stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)  # a wrapped message would split paths


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors printed as one line (exit status 1): files, options, a missing extra (its message names the install
    command), and answers of a server or the models."""
    import grpc
    import httpx

    from .client import RestError
    from .service.errors import FeatureServeError

    return (
        OSError,
        ImportError,
        ValueError,
        TypeError,
        RestError,
        grpc.RpcError,
        httpx.TransportError,
        FeatureServeError,
    )


# ---------------------------------------------------------------------------------------------------
# Clients and options


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` / ``--grpc``: where the models run (default: in this process)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a REST server, e.g. http://127.0.0.1:8080 (default: run the models here)")
    where.add_argument("--grpc", metavar="TARGET", help="a gRPC server, e.g. 127.0.0.1:50051")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"API key for a server that needs one (default: ${API_KEY_VARIABLE})",
    )
    parser.add_argument("--ca-cert", type=Path, help="PEM CA certificate of a TLS server (gRPC: implies TLS)")


def add_extract_options(parser: argparse.ArgumentParser) -> None:
    """Extraction options, named as in the API."""
    parser.add_argument("--model", help="model name (default: the default model)")
    parser.add_argument("--max-keypoints", type=int, help="keep at most this many keypoints (default 2048)")
    parser.add_argument("--uniform", choices=["none", "grid", "anms"], help="spread keypoints over the image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@contextmanager
def open_client(args: argparse.Namespace) -> Iterator[Any]:
    """The client ``--url`` / ``--grpc`` ask for, else the in-process one."""
    if args.url:
        from .client import RestClient

        verify: Any = ssl.create_default_context(cafile=str(args.ca_cert)) if args.ca_cert else True
        with RestClient(args.url, api_key=args.api_key, verify=verify) as client:
            yield client
    elif args.grpc:
        from .client import GrpcClient

        roots = args.ca_cert.read_bytes() if args.ca_cert else None
        with GrpcClient(args.grpc, api_key=args.api_key, root_certificates=roots) as client:
            yield client
    else:
        from .local import LocalClient

        with LocalClient() as client:
            client.model(getattr(args, "model", None))  # loaded before any timing starts
            yield client


def extract_options(args: argparse.Namespace) -> dict[str, Any]:
    """The extraction keyword options set on the command line."""
    options = {"model": args.model, "max_keypoints": args.max_keypoints, "uniform": args.uniform}
    return {k: v for k, v in options.items() if v is not None}


def progress() -> Progress:
    """A progress bar on stderr (drawn only on a terminal)."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    )


def image_name(path: str) -> str:
    """An image's name in exported files: its path relative to the working directory (as hloc names images
    relative to its image folder); a path elsewhere without its leading ``/`` (HDF5 would drop it anyway)."""
    given = Path(path)
    try:
        return given.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return given.as_posix().lstrip("/")


# ---------------------------------------------------------------------------------------------------
# models


def models_command(args: argparse.Namespace) -> int:
    """List the models: a server's loaded models, or those this installation can run."""
    with open_client(args) as client:
        listing: ModelList = client.list_models()
    if args.json:
        print(json.dumps({"default_model": listing.default_model, "models": [_card_json(c) for c in listing.models]}))
        return 0
    table = Table(title="models (* = default; --json for the full cards)")
    rows = [
        (
            card.name + (" *" if card.name == listing.default_model else ""),
            f"{card.descriptor.kind} {card.descriptor.dim}",
            card.descriptor.metric,
            card.version,
            card.method,
        )
        for card in listing.models
    ]
    columns = ("name", "descriptor", "metric", "version", "method")
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    widths[3] = min(widths[3], 20)
    # One line per model: the method (a citation) gets what the terminal has left, and is cut with "…".
    widths[4] = max(16, min(widths[4], stdout.width - sum(widths[:4]) - 3 * len(columns) - 1))
    for column, width in zip(columns, widths, strict=True):
        table.add_column(column, no_wrap=True, width=width)
    for row in rows:
        table.add_row(*(_cut(text, width) for text, width in zip(row, widths, strict=True)))
    stdout.print(table)
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _card_json(card: Any) -> dict[str, Any]:
    return {
        "name": card.name,
        "version": card.version,
        "method": card.method,
        "descriptor": vars(card.descriptor),
        "licence": card.licence,
        "description": card.description,
    }


# ---------------------------------------------------------------------------------------------------
# extract


def save_features(out: Path, names: Sequence[str], features: Sequence[FeatureSet]) -> None:
    """``.npz`` (one image: keypoints, scores, sizes, angles, descriptors, image_size, model) or ``.h5`` (hloc)."""
    if out.suffix == ".npz":
        if len(features) != 1:
            raise CommandError(f"{out}: an .npz file holds one image's features; use .h5 for {len(features)} images")
        f = features[0]
        arrays = {"keypoints": f.keypoints, "scores": f.scores, "image_size": np.asarray(f.image_size, np.int32)}
        optional = {"sizes": f.sizes, "angles": f.angles, "descriptors": f.descriptors}
        arrays |= {name: values for name, values in optional.items() if values is not None}
        np.savez(out, model=np.asarray(f.model), **arrays)
    elif out.suffix in (".h5", ".hdf5"):
        from .interop import write_hloc_features

        write_hloc_features(out, dict(zip(names, features, strict=True)))
    else:
        raise CommandError(f"{out}: write features to a .npz (one image) or .h5 (hloc layout) file")


def extract_command(args: argparse.Namespace) -> int:
    """Features of each image; a table (or JSON), optionally saved to ``--out``."""
    if args.out is not None and args.out.suffix not in (".npz", ".h5", ".hdf5"):
        raise CommandError(f"{args.out}: write features to a .npz (one image) or .h5 (hloc layout) file")
    options = extract_options(args)
    results: list[FeatureSet] = []
    seconds: list[float] = []
    with open_client(args) as client, progress() as bar:
        task = bar.add_task("extracting", total=len(args.images))
        for path in args.images:
            started = time.perf_counter()
            results.append(client.extract(path, **options))
            seconds.append(time.perf_counter() - started)
            bar.advance(task)
    names = [image_name(p) for p in args.images]
    if args.out is not None:
        save_features(args.out, names, results)
    if args.json:
        rows = [
            {
                "image": name,
                "model": f.model,
                "image_size": list(f.image_size),
                "num_keypoints": len(f.keypoints),
                "descriptor": f.descriptor,
                "ms": round(s * 1000, 1),
            }
            for name, f, s in zip(names, results, seconds, strict=True)
        ]
        print(json.dumps({"results": rows, "out": None if args.out is None else str(args.out)}))
        return 0
    table = Table(title="features" + (f" -> {args.out}" if args.out else ""))
    for column in ("image", "model", "size", "keypoints", "descriptor", "ms"):
        table.add_column(column, justify="right" if column in ("keypoints", "ms") else "left")
    for name, f, s in zip(names, results, seconds, strict=True):
        descriptor = f"{f.descriptor['kind']} {f.descriptor['dim']} {f.descriptor['metric']}"
        size = f"{f.image_size[0]}x{f.image_size[1]}"
        table.add_row(name, f.model, size, str(len(f.keypoints)), descriptor, f"{s * 1000:.1f}")
    stdout.print(table)
    return 0


# ---------------------------------------------------------------------------------------------------
# match


def intrinsics(text: str) -> list[float]:
    """``fx,fy,cx,cy`` (pixels) as four numbers; argparse prints the error with the expected form."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected fx,fy,cx,cy in pixels, e.g. 525,525,319.5,239.5; got {text!r}")
    return values


def add_match_options(parser: argparse.ArgumentParser) -> None:
    """Matching and verification options, with the REST API's names and defaults."""
    parser.add_argument(
        "--geometry",
        default="none",
        choices=["none", "homography", "fundamental", "essential"],
        help="verify the matches with this model (default none, as the API; essential needs --intrinsics)",
    )
    parser.add_argument("--matcher", default="mnn", choices=["mnn", "nn"], help="mutual or plain nearest neighbour")
    parser.add_argument("--ratio", type=float, help="Lowe's ratio test threshold (off by default)")
    parser.add_argument("--max-distance", type=float, help="drop matches farther apart than this descriptor distance")
    parser.add_argument(
        "--intrinsics", type=intrinsics, metavar="FX,FY,CX,CY", help="camera of both images (pixels), for essential"
    )
    parser.add_argument("--intrinsics0", type=intrinsics, metavar="FX,FY,CX,CY", help="camera of image 0 only")
    parser.add_argument("--intrinsics1", type=intrinsics, metavar="FX,FY,CX,CY", help="camera of image 1 only")
    parser.add_argument("--ransac-threshold", type=float, help="inlier threshold in pixels (default 3)")
    parser.add_argument("--ransac-confidence", type=float, help="RANSAC confidence (default 0.9999)")
    parser.add_argument("--ransac-max-iterations", type=int, help="RANSAC iteration cap (default 10000)")


def match_options(args: argparse.Namespace) -> dict[str, Any]:
    """The matching and verification options set on the command line."""
    options: dict[str, Any] = {"geometry": args.geometry, "matcher": args.matcher}
    given = {
        "ratio": args.ratio,
        "max_distance": args.max_distance,
        "intrinsics0": args.intrinsics0 or args.intrinsics,
        "intrinsics1": args.intrinsics1 or args.intrinsics,
        "ransac_threshold": args.ransac_threshold,
        "ransac_confidence": args.ransac_confidence,
        "ransac_max_iterations": args.ransac_max_iterations,
    }
    options |= {name: value for name, value in given.items() if value is not None}
    if args.geometry == "essential" and ("intrinsics0" not in options or "intrinsics1" not in options):
        raise CommandError("--geometry essential needs the cameras: --intrinsics FX,FY,CX,CY (or --intrinsics0/1)")
    return options


def match_report(result: MatchResult, elapsed: float, draw: Path | None) -> dict[str, Any]:
    """``match --json``: the ``/v1/match`` answer's fields (matches and inlier mask included), time and picture."""
    geometry = result.geometry

    def listed(value: np.ndarray | None) -> Any:
        return None if value is None else value.tolist()

    return {
        "model": result.model,
        "num_keypoints0": result.num_keypoints0,
        "num_keypoints1": result.num_keypoints1,
        "num_matches": len(result.matches),
        "num_inliers": None if geometry is None else geometry.num_inliers,
        "matches": result.matches.tolist(),
        "inliers": listed(result.inliers),
        "geometry": None
        if geometry is None
        else {
            "geometry": geometry.geometry,
            "matrix": listed(geometry.matrix),
            "num_inliers": geometry.num_inliers,
            "inlier_ratio": geometry.inlier_ratio,
            "rotation": listed(geometry.rotation),
            "translation": listed(geometry.translation),
            "message": geometry.message or None,
        },
        "ms": round(elapsed * 1000, 1),
        "draw": None if draw is None else str(draw),
    }


def match_command(args: argparse.Namespace) -> int:
    """Matches of two images: counts and timing, ``--draw`` picture, ``--hloc`` export; or, with ``--pairs``,
    every pair of a pairs file (`match_pairs_command`)."""
    if args.pairs is not None:
        return match_pairs_command(args)
    if len(args.inputs) != 2 or args.out is not None or args.colmap is not None:
        raise CommandError("match takes two images (IMG1 IMG2), or a folder with --pairs FILE (--out and --colmap)")
    args.image0, args.image1 = args.inputs
    options: dict[str, Any] = {**extract_options(args), **match_options(args)}
    if args.hloc is not None:
        options["include_features"] = True
    # REST draws on the server and the in-process client here, with the same function; gRPC does not draw,
    # so with --grpc the picture is drawn here from the answer.
    server_draws = args.draw is not None and not args.grpc
    if server_draws:
        options |= {"draw_max_lines": args.draw_max_lines, "draw_outliers": not args.draw_inliers_only}
    with open_client(args) as client:
        started = time.perf_counter()
        with stderr.status("matching", spinner="dots") if stderr.is_terminal else _nothing():
            result: MatchResult = client.match(args.image0, args.image1, draw=server_draws or None, **options)
        elapsed = time.perf_counter() - started
    if args.draw is not None:
        picture = result.drawing if server_draws else _draw_here(args, result)
        args.draw.write_bytes(picture)
    if args.hloc is not None:
        _write_hloc(args, result)
    geometry = result.geometry
    num_inliers = None if geometry is None else geometry.num_inliers
    if args.json:
        print(json.dumps(match_report(result, elapsed, args.draw)))
        return 0
    table = Table(title=f"{image_name(args.image0)} <-> {image_name(args.image1)}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model", result.model)
    table.add_row("keypoints", f"{result.num_keypoints0} / {result.num_keypoints1}")
    table.add_row("matches", str(len(result.matches)))
    if geometry is not None:
        table.add_row(f"inliers ({geometry.geometry})", f"{num_inliers} ({geometry.inlier_ratio:.0%})")
        if geometry.matrix is None:
            table.add_row("no model", geometry.message or "")
        if geometry.rotation is not None and geometry.translation is not None:
            angle = np.degrees(np.arccos(np.clip((np.trace(geometry.rotation) - 1) / 2, -1, 1)))
            table.add_row("rotation", f"{angle:.2f} deg")
            table.add_row("translation", " ".join(f"{v:+.3f}" for v in geometry.translation))
    table.add_row("time", f"{elapsed * 1000:.1f} ms")
    if args.draw is not None:
        table.add_row("picture", str(args.draw))
    if args.hloc is not None:
        table.add_row("hloc files", f"{args.hloc}/features.h5, {args.hloc}/matches.h5")
    stdout.print(table)
    return 0


# Most images and pairs the CLI puts in one /v1/match/batch call (the service's defaults allow 32 and 1024).
BATCH_IMAGES, BATCH_PAIRS = 32, 512


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """The image-name pairs of an hloc pairs file: ``name0 name1`` per line (blank lines and ``#`` ignored)."""
    if not path.is_file():
        raise CommandError(f"{path}: no such pairs file")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        names = line.split()
        if len(names) != 2:
            raise CommandError(f"{path}:{number}: expected 'name0 name1', got {line.strip()!r}")
        pairs.append((names[0], names[1]))
    if not pairs:
        raise CommandError(f"{path}: no pairs")
    return pairs


def pair_batches(pairs: Sequence[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """``pairs`` in order, cut into batches of at most `BATCH_PAIRS` pairs naming at most `BATCH_IMAGES` images."""
    batch: list[tuple[str, str]] = []
    names: set[str] = set()
    for pair in pairs:
        if batch and (len(batch) == BATCH_PAIRS or len(names | set(pair)) > BATCH_IMAGES):
            yield batch
            batch, names = [], set()
        batch.append(pair)
        names |= set(pair)
    if batch:
        yield batch


def match_pairs_command(args: argparse.Namespace) -> int:
    """Every pair of ``--pairs``: each image extracted once, the pairs matched and verified in batches."""
    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        raise CommandError("with --pairs, give the folder the pairs file names images in (one IMAGE_DIR)")
    if args.draw is not None or args.hloc is not None:
        raise CommandError("with --pairs, write the matches with --out (hloc layout) or --colmap, not --draw/--hloc")
    folder = Path(args.inputs[0])
    pairs = read_pairs(args.pairs)
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise CommandError(f"{len(missing)} images of {args.pairs} are not in {folder}, e.g. {missing[0]}")
    started = time.perf_counter()
    features: dict[str, FeatureSet] = {}
    results: dict[tuple[str, str], MatchResult] = {}
    with open_client(args) as client, progress() as bar:
        extracting = bar.add_task("extracting", total=len(names))
        for name in names:
            features[name] = client.extract(folder / name, **extract_options(args))
            bar.advance(extracting)
        matching = bar.add_task("matching", total=len(pairs))
        for batch in pair_batches(pairs):
            batch_names = list(dict.fromkeys(name for pair in batch for name in pair))
            index = {name: i for i, name in enumerate(batch_names)}
            answers = client.match_pairs(
                [features[name] for name in batch_names],
                [(index[a], index[b]) for a, b in batch],
                **match_options(args),
            )
            results.update(zip(batch, answers, strict=True))
            bar.advance(matching, len(batch))
    elapsed = time.perf_counter() - started
    if args.out is not None:
        from .interop import write_hloc_features, write_hloc_matches

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_hloc_features(args.out.parent / "features.h5", features)
        write_hloc_matches(args.out, results)
    if args.colmap is not None:
        from .interop import write_colmap_database

        write_colmap_database(args.colmap, features, results)
    inliers = [int(r.inliers.sum()) for r in results.values() if r.inliers is not None]
    summary = {
        "images": len(names),
        "pairs": len(pairs),
        "matches": sum(len(r.matches) for r in results.values()),
        "inliers": sum(inliers) if inliers else None,
        "seconds": round(elapsed, 2),
        "out": None if args.out is None else str(args.out),
        "colmap": None if args.colmap is None else str(args.colmap),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    table = Table(title=f"{args.pairs} in {folder}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if value is not None:
            table.add_row(key, str(value))
    stdout.print(table)
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _draw_here(args: argparse.Namespace, result: MatchResult) -> bytes:
    from .draw import match_picture
    from .local import LocalClient

    with LocalClient() as local:
        images = local.decode(args.image0), local.decode(args.image1)
    limits = {"max_lines": args.draw_max_lines, "outliers": not args.draw_inliers_only}
    return match_picture(*images, result.points0, result.points1, result.inliers, result.model, **limits)


def _write_hloc(args: argparse.Namespace, result: MatchResult) -> None:
    from .interop import write_hloc_features, write_hloc_matches

    args.hloc.mkdir(parents=True, exist_ok=True)
    name0, name1 = image_name(args.image0), image_name(args.image1)
    assert result.features0 is not None and result.features1 is not None  # include_features was asked for
    write_hloc_features(args.hloc / "features.h5", {name0: result.features0, name1: result.features1})
    write_hloc_matches(args.hloc / "matches.h5", {(name0, name1): result})


# ---------------------------------------------------------------------------------------------------
# eval and train: the training package, in a subprocess


# The training package is part of the checkout, not of the installed package: found beside featureserve/.
CHECKOUT = Path(__file__).resolve().parents[1]


def training_command(arguments: Sequence[str]) -> list[str]:
    """``python -m training ARGUMENTS`` with this interpreter."""
    return [sys.executable, "-m", "training", *arguments]


def training_environment() -> dict[str, str]:
    """This environment with the checkout on ``PYTHONPATH`` when it holds the training package."""
    env = dict(os.environ)
    if (CHECKOUT / "training" / "__main__.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    return env


def _run_training(arguments: Sequence[str], capture: bool) -> subprocess.CompletedProcess[str]:
    try:
        completed = subprocess.run(
            training_command(arguments), capture_output=capture, text=True, check=False, env=training_environment()
        )
    except KeyboardInterrupt:
        raise CommandError("interrupted") from None
    if completed.returncode != 0:
        detail = (completed.stderr or "")[-3000:] if capture else ""
        if "No module named training" in detail:
            raise CommandError("the training package comes with a checkout of the repository, not with the package")
        raise CommandError(f"python -m training {arguments[0]} failed ({completed.returncode})\n{detail}")
    return completed


def count_sequences(dataset: Path) -> int:
    """Sequence folders (HPatches or Oxford layout) under ``dataset``, or 1 when it is one; `CommandError` if none."""
    if not dataset.is_dir():
        raise CommandError(f"{dataset} is not a folder")
    names = ("1.ppm", "1.png", "1.jpg", "img1.ppm", "img1.png", "img1.pgm", "img1.jpg")

    def is_sequence(folder: Path) -> bool:
        return any((folder / n).exists() for n in names)

    count = 1 if is_sequence(dataset) else sum(1 for p in dataset.iterdir() if p.is_dir() and is_sequence(p))
    if not count:
        raise CommandError(
            f"{dataset} holds no HPatches-layout sequences: give a sequence folder (1.ppm, 2.ppm, ..., H_1_2, ...) "
            "or a folder of them"
        )
    return count


def eval_command(args: argparse.Namespace) -> int:
    """HPatches-layout evaluation of each model, one ``python -m training evaluate`` run per model."""
    sequences = count_sequences(args.dataset)
    counted = f"{sequences} sequence{'' if sequences == 1 else 's'}"
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="featureserve-eval-") as folder, progress() as bar:
        task = bar.add_task(f"evaluating on {counted}", total=len(args.models))
        for model in args.models:
            bar.update(task, description=f"{model} on {counted}")
            out = Path(folder) / f"{model}.json"
            arguments = ["evaluate", "--models", model, "--homography", str(args.dataset), "--posed"]
            arguments += ["--max-keypoints", str(args.max_keypoints), "--out", str(out)]
            _run_training(arguments, capture=True)
            reports[model] = json.loads(out.read_text())["homography"][model]
            bar.advance(task)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"dataset": str(args.dataset), "max_keypoints": args.max_keypoints, "homography": reports}
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    if args.json:
        print(json.dumps({m: _eval_row(r) for m, r in reports.items()}))
        return 0
    # Narrow: every figure whole in an 80-column terminal (MMA@10 and the counts are in --json and --out).
    table = Table(
        title=f"{args.dataset.name}: {counted}, {args.max_keypoints} keypoints, mutual NN",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
    )
    columns = [*(f"MMA@{t}" for t in (1, 3, 5)), *(f"Hacc@{t}" for t in (1, 3, 5))]
    for column in ("model", *columns, "kp/img", "ms/img"):
        table.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
    for model, report in reports.items():
        row = _eval_row(report)
        cells = [f"{row[c]:.3f}" for c in columns]
        table.add_row(model, *cells, f"{row['features/img']:.0f}", f"{row['ms/img']:.1f}")
    stdout.print(table)
    if args.out is not None:
        stdout.print(f"full report: {args.out}")
    return 0


def _eval_row(report: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one model's homography report."""
    row: dict[str, float] = {}
    for t, value in zip(report["thresholds"], report["mma"]["overall"], strict=True):
        row[f"MMA@{t:g}"] = value
    for t, value in zip(report["homography_thresholds"], report["homography_accuracy"]["overall"], strict=True):
        row[f"Hacc@{t:g}"] = value
    row["features/img"] = report["features_per_image"]
    row["matches/pair"] = report["matches_per_pair"]
    row["ms/img"] = 1000 * report["extract_seconds_per_image"]
    return row


def train_command(args: argparse.Namespace) -> int:
    """``python -m training train CONFIG ...``; its own progress line and summary pass through."""
    if not args.config.is_file():
        raise CommandError(f"{args.config}: no such config file")
    arguments = ["train", str(args.config)]
    if args.run_dir is not None:
        arguments += ["--run-dir", str(args.run_dir)]
    if args.resume:
        arguments.append("--resume")
    if args.steps is not None:
        arguments += ["--steps", str(args.steps)]
    _run_training(arguments, capture=False)
    return 0
