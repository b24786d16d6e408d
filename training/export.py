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

from featureserve.models.cards import CHECKPOINT_DIR

from .config import TrainConfig, build
from .methods import method_for
from .trainer import checkpoint_weights


def initialisation(init_from: str | None) -> dict[str, Any] | None:
    """Where a run's weights started: the ``init_from`` path, and that run's steps, time and device when its
    ``last.pt`` is on disk, and where that run started in turn (so a card adds up every run behind its weights)."""
    if not init_from:
        return None
    start = Path(init_from)
    lineage: dict[str, Any] = {"path": init_from}
    if start.suffix == ".pt" and start.is_file():
        state = torch.load(start, map_location="cpu", weights_only=False)
        lineage |= {"steps": state["step"], "wall_seconds": round(state["wall_seconds"], 1), "device": state["device"]}
        config_path = start.parent / "config.yaml"
        if config_path.is_file():
            earlier = initialisation(yaml.safe_load(config_path.read_text()).get("init_from"))
            if earlier:
                lineage["initialised_from"] = earlier
    return lineage


def speed_summary(report: dict[str, Any], model: str) -> dict[str, Any]:
    """``model``'s extraction times and their ratios to sift and orb, from a ``benchmarks.performance.extraction_speed``
    report."""
    runs = []
    for run in report["runs"]:
        times = {name: t["median_ms"] for name, t in run["models"].items()}
        if model in times:
            ratios = {f"x_{base}": round(times[model] / times[base], 2) for base in ("sift", "orb") if base in times}
            runs.append({"size": run["size"], "threads": run["threads"], "median_ms": round(times[model], 1), **ratios})
    return {
        "benchmark": "python -m benchmarks.performance.extraction_speed (in-process extract, same shuffled rounds for "
        "every model)",
        "date": report["date"],
        "max_keypoints": report["args"]["max_keypoints"],
        "machine": {k: report["machine"].get(k) for k in ("processor", "cpu_count", "torch_threads")},
        "runs": runs,
    }


def interpolate(weights: dict[str, torch.Tensor], start: str, alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): ``(1 - alpha)`` times the
    weights the run started from (``start``, its ``init_from``) plus ``alpha`` times its own, for each float weight
    both have with the same shape; the others as trained. Fine-tuning trades one behaviour for another; the blend
    keeps part of both."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the interpolation weight must be within [0, 1], got {alpha}")
    before = checkpoint_weights(start)
    return {
        k: (1 - alpha) * before[k].float() + alpha * v.float()
        if v.is_floating_point() and k in before and before[k].shape == v.shape
        else v
        for k, v in weights.items()
    }


def build_card(
    config: dict[str, Any],
    state: dict[str, Any],
    name: str,
    weights_file: str,
    dtype: str,
    evaluation: dict[str, Any] | None,
    speed: dict[str, Any] | None = None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """The JSON model card of a run, from its ``config.yaml`` (as a dict) and its ``last.pt`` state."""
    method = method_for(build(TrainConfig, config))
    fields = method.card(method.network())
    return {
        "name": fields.pop("name"),
        "version": f"{name}-step{state['step']}",
        "method": fields.pop("method"),
        "description": fields.pop("description"),
        "licence": fields.pop("licence"),
        "weights": weights_file,
        "weights_dtype": dtype,
        **{k: v for k, v in fields.items() if k != "data"},
        "training": {
            "command": f"python -m training train training/configs/{config['name'].replace('-', '_')}.yaml",
            "initialised_from": initialisation(config.get("init_from")),
            "config": config,
            "data": fields["data"],
            "steps": state["step"],
            "batch_pairs": config["optim"]["batch_size"] * state["world_size"],
            "optimiser": (
                f"Adam lr {config['optim']['lr']:g}, warmup {config['optim']['warmup']} then cosine to "
                f"{config['optim']['final_lr']:g}; grad-norm clip {config['optim']['grad_clip']:g}"
            ),
            "device": state["device"],
            "processes": state["world_size"],
            "wall_seconds": round(state["wall_seconds"], 1),
            **({} if alpha is None else {"interpolation": interpolation_note(config["init_from"], alpha)}),
        },
        "evaluation": evaluation or {},
        **({"speed": speed} if speed else {}),
        "exported": datetime.date.today().isoformat(),
    }


def interpolation_note(start: str, alpha: float) -> dict[str, Any]:
    """What a card says of weights blended by `interpolate`."""
    return {
        "method": "WiSE-FT (Wortsman et al., CVPR 2022): (1 - alpha) x the starting weights + alpha x the run's",
        "alpha": alpha,
        "from": start,
    }


def export(
    run_dir: str | Path,
    name: str = "caps-lite",
    out_dir: str | Path = CHECKPOINT_DIR,
    dtype: str = "float16",
    evaluation: dict[str, Any] | None = None,
    speed: dict[str, Any] | None = None,
    alpha: float | None = None,
) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``out_dir``; returns the card path.

    ``alpha``: export the run's weights blended with those it started from (`interpolate`) instead of its own.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    state = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    network = state["network"]
    if alpha is not None:
        start = config.get("init_from")
        if not start:
            raise ValueError(f"{run_dir} started from no weights (no init_from): there is nothing to interpolate with")
        network = interpolate(network, start, alpha)
    weights = {
        k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v).contiguous() for k, v in network.items()
    }
    weights_path = out_dir / f"{name}.safetensors"
    save_file(weights, str(weights_path))
    weights_path.chmod(0o644)  # safetensors writes 0600; a service running as another user must read it
    card = build_card(config, state, name, weights_path.name, dtype, evaluation, speed, alpha)
    card["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    card_path = out_dir / f"{name}.json"
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card_path
