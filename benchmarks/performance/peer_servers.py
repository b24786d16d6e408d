"""The peers of benchmarks/performance/peers.py: OpenCV behind a plain FastAPI app, and behind LitServe.

Each is what a user could write in a few dozen lines instead of deploying featureserve: a multipart ``image``
with form fields ``model`` (orb or sift) and ``max_keypoints`` in; keypoints, scores, sizes, angles and
base64 descriptors out, in featureserve's response shape. No limits, admission control, metrics or batching.

Run one (the benchmark does): ``python -m benchmarks.performance.peer_servers {fastapi,litserve} PORT``; LitServe
comes with the ``bench`` extra (``scripts/install.sh bench``).
"""

from __future__ import annotations

import argparse
import base64
from typing import Any

import cv2
import numpy as np
import orjson
from fastapi import FastAPI, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

PEERS = ("fastapi", "litserve")


def extract(data: bytes, model: str, max_keypoints: int) -> dict[str, Any]:
    """OpenCV's ORB or SIFT on the decoded image, as featureserve's ExtractResponse JSON (base64 descriptors)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    detector = cv2.ORB_create(nfeatures=max_keypoints) if model == "orb" else cv2.SIFT_create(nfeatures=max_keypoints)
    keypoints, descriptors = detector.detectAndCompute(image, None)
    return {
        "model": model,
        "num_keypoints": len(keypoints),
        "keypoints": [k.pt for k in keypoints],
        "scores": [k.response for k in keypoints],
        "sizes": [k.size for k in keypoints],
        "angles": [k.angle for k in keypoints],
        "descriptors": {
            "encoding": "base64",
            "dtype": str(descriptors.dtype),
            "shape": list(descriptors.shape),
            "data": base64.b64encode(descriptors.tobytes()).decode("ascii"),
        },
        "image_size": {"width": image.shape[1], "height": image.shape[0]},
    }


def fastapi_app() -> FastAPI:
    """FastAPI with OpenCV in its thread pool and orjson rendering."""
    app = FastAPI()

    @app.post("/v1/extract")
    async def extract_endpoint(image: UploadFile, model: str = Form("orb"), max_keypoints: int = Form(2048)) -> Any:
        data = await image.read()
        body = await run_in_threadpool(extract, data, model, max_keypoints)
        return Response(orjson.dumps(body), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", choices=PEERS)
    parser.add_argument("port", type=int)
    arguments = parser.parse_args()
    if arguments.peer == "fastapi":
        import uvicorn

        uvicorn.run(fastapi_app(), host="127.0.0.1", port=arguments.port, log_level="warning", access_log=False)
    else:
        from .peer_litserve import serve_litserve

        serve_litserve(arguments.port)


if __name__ == "__main__":
    main()
