"""Reconstruct a scene with COLMAP (pycolmap) from featureserve's features and verified matches.

Usage (from the repository root; needs the ``interop`` extra):
    python examples/colmap_reconstruction.py                                  # 6 images of castle-P19
    python examples/colmap_reconstruction.py --images DIR --count 10 --url http://127.0.0.1:8080

Features and matches come from a client (in process by default, or a REST/gRPC server), go into a COLMAP
database with `featureserve.interop.write_colmap_database` (verified inliers included as two-view
geometries) and pycolmap's incremental mapper reconstructs from them. Prints the reconstruction summary.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import time
from pathlib import Path

import pycolmap

from featureserve.client import GrpcClient, RestClient
from featureserve.interop import write_colmap_database
from featureserve.local import LocalClient

DEFAULT_IMAGES = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "strecha_mvs" / "castle-P19" / "images"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--count", type=int, default=6, help="use the first COUNT images (sorted by name)")
    parser.add_argument("--model", default="sift")
    parser.add_argument("--max-keypoints", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path("runs/colmap"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="REST server (default: models in this process)")
    where.add_argument("--grpc", help="gRPC server")
    args = parser.parse_args()

    names = sorted(p.name for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    client = RestClient(args.url) if args.url else GrpcClient(args.grpc) if args.grpc else LocalClient()
    options = {"model": args.model, "max_keypoints": args.max_keypoints}
    started = time.perf_counter()
    features = dict(zip(names, client.extract_batch([args.images / n for n in names], **options), strict=True))
    matches = {}
    for a, b in itertools.combinations(names, 2):
        matches[(a, b)] = client.match(args.images / a, args.images / b, geometry="fundamental", **options)
        result = matches[(a, b)]
        print(f"{a} {b}: {len(result.matches)} matches, {result.geometry.num_inliers} inliers")
    print(f"features and matches: {time.perf_counter() - started:.1f} s")
    database = args.out / "database.db"
    write_colmap_database(database, features, matches)
    started = time.perf_counter()
    reconstructions = pycolmap.incremental_mapping(database, args.images, args.out / "sparse")
    print(f"mapping: {time.perf_counter() - started:.1f} s")
    for index, reconstruction in reconstructions.items():
        print(f"reconstruction {index}:\n{reconstruction.summary()}")


if __name__ == "__main__":
    main()
