"""Export a training run into a servable checkpoint: safetensors weights plus a JSON model card."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from featureserve.models.caps import CHECKPOINT_DIR, GREY_MEAN, GREY_STD, SIZES, CAPSNetwork

from .data.synthetic import GENERATOR_VERSION

METHOD = (
    "CAPS: descriptors learned from camera-pose supervision (Wang, Zhou, Hariharan, Snavely, ECCV 2020, "
    "arXiv 2004.13324), re-implemented; epipolar + cycle losses, coarse-to-fine soft-argmax"
)
PIXEL_CONVENTION = (
    "pixel centres at integer coordinates; pixel u sits at map coordinate (u + 0.5) / s - 0.5 on a stride-s map; "
    "bilinear grid_sample with align_corners=False"
)


def build_card(
    run_dir: Path, name: str, weights_file: str, dtype: str, evaluation: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON model card of the run in ``run_dir`` (its ``config.yaml`` and ``last.pt``)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    size = config["size"]
    network = CAPSNetwork(size)
    data = config["data"]
    return {
        "name": "caps",
        "version": f"{name}-step{state['step']}",
        "method": METHOD,
        "description": "Pose-supervised dense descriptors (coarse + fine, 256-D) at SIFT keypoints.",
        "licence": "MIT (this re-implementation; the CAPS reference code qianqianwang68/caps is MIT)",
        "weights": weights_file,
        "weights_dtype": dtype,
        "architecture": {
            "size": size,
            "layers": SIZES[size],
            "parameters": sum(p.numel() for p in network.parameters()),
            "normalisation_layers": "GroupNorm (not BatchNorm: CPU batches hold 4 pairs)",
            "strides": {"coarse": CAPSNetwork.strides[0], "fine": CAPSNetwork.strides[1]},
        },
        "input": {
            "colour": "grey (OpenCV RGB->grey)",
            "scale": "uint8 / 255",
            "normalisation": {"mean": GREY_MEAN, "std": GREY_STD},
            "padding": "zeros at the bottom and right up to a multiple of 64 pixels (size buckets)",
        },
        "pixel_convention": PIXEL_CONVENTION,
        "descriptor": {
            "dim": 256,
            "dtype": "float32",
            "layout": "coarse 128-D (stride 16) then fine 128-D (stride 4)",
            "normalisation": "each half L2-normalised, concatenated, L2-normalised again",
            "matcher": "mutual nearest neighbour on cosine similarity",
        },
        "keypoints": {
            "source": "sift",
            "description": "OpenCV SIFT (contrastThreshold 0.04, edgeThreshold 10), top-k by response",
            "params": {"contrast_threshold": 0.04, "edge_threshold": 10.0},
        },
        "training": {
            "command": f"python -m training train training/configs/{name.replace('-', '_')}.yaml",
            "config": config,
            "data": {
                "generator": f"synthetic piecewise-planar posed pairs, version {GENERATOR_VERSION}",
                "seed": data["seed"],
                "textures": data["textures"] + ["procedural"],
                "resolution": [data["scene"]["width"], data["scene"]["height"]],
            },
            "steps": state["step"],
            "batch_pairs": config["optim"]["batch_size"] * state["world_size"],
            "optimiser": (
                f"Adam lr {config['optim']['lr']:g}, warmup {config['optim']['warmup']} then cosine to "
                f"{config['optim']['final_lr']:g}; grad-norm clip {config['optim']['grad_clip']:g}"
            ),
            "device": state["device"],
            "processes": state["world_size"],
            "wall_seconds": round(state["wall_seconds"], 1),
        },
        "evaluation": evaluation or {},
        "exported": datetime.date.today().isoformat(),
    }


def export(
    run_dir: str | Path,
    name: str = "caps-lite",
    out_dir: str | Path = CHECKPOINT_DIR,
    dtype: str = "float16",
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``out_dir``; returns the card path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    weights = {
        k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous()
        for k, v in state["network"].items()
    }
    weights_path = out_dir / f"{name}.safetensors"
    save_file(weights, str(weights_path))
    weights_path.chmod(0o644)  # safetensors writes 0600; a service running as another user must read it
    card = build_card(run_dir, name, weights_path.name, dtype, evaluation)
    card["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    card_path = out_dir / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path
