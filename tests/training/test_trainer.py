"""Training runs: the loss goes down, runs resume, export gives a servable card, and DDP works on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featureserve.models import KeypointOptions, load_model
from featureserve.models.caps import CAPSNetwork
from featureserve.models.cards import read_checkpoint
from featureserve.models.orb_patch import OrbPatch
from training.config import load_config
from training.data.pairs import QueryConfig, SyntheticPairs
from training.data.synthetic import SceneConfig, SceneGenerator
from training.export import export
from training.losses import CAPSLoss
from training.methods.caps import forward_pair
from training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "training" / "configs" / "caps_tiny.yaml"


def test_a_few_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    network = CAPSNetwork("lite")
    loss = CAPSLoss()
    dataset = SyntheticPairs(SceneGenerator([], SceneConfig(width=128, height=96)), 4, 0, QueryConfig(64), None)
    batch = {k: torch.stack([dataset[i][k] for i in range(4)]) for k in dataset[0]}
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-4)
    losses = []
    for _ in range(20):
        terms = forward_pair(network, loss, batch)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        losses.append(terms["loss"].item())
    assert np.mean(losses[-5:]) < 0.6 * losses[0], losses


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_train_resume_export_and_serve(tmp_path: Path, photo: np.ndarray) -> None:
    config = load_config(TINY, {"optim": {"steps": 4}})
    summary = train(config, tmp_path / "run")
    assert summary["step"] == 4
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "train.csv")] == [1, 2, 3, 4]
    assert {"synthetic/loss"} <= set(_rows(tmp_path / "run" / "validation.csv")[0])
    # Resuming with a longer schedule continues from the checkpoint instead of starting over.
    longer = load_config(TINY, {"optim": {"steps": 6}})
    assert train(longer, tmp_path / "run", resume=True)["step"] == 6
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "train.csv")][-2:] == [5, 6]

    card_path = export(tmp_path / "run", "caps-tiny", tmp_path / "export", dtype="float32")
    card = json.loads(card_path.read_text())
    assert card["training"]["steps"] == 6 and card["weights"] == "caps-tiny.safetensors"
    model = load_model("caps", card=str(card_path))
    [features] = model.extract([photo], [KeypointOptions(max_keypoints=200)])
    assert features.descriptors.shape == (len(features), 256) and len(features) == 200
    assert model.card.details["training"]["steps"] == 6


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training", "train", str(TINY), "--run-dir", str(tmp_path / "run"), "--steps", "3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 3


@pytest.mark.parametrize(("config", "method"), [("hndesc_tiny.yaml", "hndesc"), ("orb_patch_tiny.yaml", "orb-patch")])
def test_descriptor_methods_train_export_and_serve(tmp_path: Path, photo: np.ndarray, config: str, method: str) -> None:
    summary = train(load_config(ROOT / "training" / "configs" / config), tmp_path / "run")
    assert summary["step"] == 3 and np.isfinite(summary["final"]["loss"])
    card_path = export(tmp_path / "run", method, tmp_path / "export", dtype="float32")
    card = json.loads(card_path.read_text())
    assert card["name"] == method and card["training"]["config"]["method"] == method
    # The model class of the same name loads the export (orb-patch is not registered until it has a checkpoint).
    model = OrbPatch(card=str(card_path)) if method == "orb-patch" else load_model(method, card=str(card_path))
    [features] = model.extract([photo], [KeypointOptions(max_keypoints=100)])
    assert features.descriptors.shape == (100, 128)
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1, atol=1e-5)


def test_export_interpolates_with_the_weights_the_run_started_from(tmp_path: Path) -> None:
    """``alpha`` blends a run's weights with its ``init_from`` (WiSE-FT): 0 gives the start, 1 the run."""
    train(load_config(TINY, {"optim": {"steps": 2}}), tmp_path / "first")
    start_path = tmp_path / "first" / "last.pt"
    train(load_config(TINY, {"optim": {"steps": 2}, "init_from": str(start_path)}), tmp_path / "second")
    start = torch.load(start_path, weights_only=False)["network"]
    end = torch.load(tmp_path / "second" / "last.pt", weights_only=False)["network"]
    moved = [k for k, v in end.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert moved
    for alpha in (0.0, 0.5, 1.0):
        card_path = export(tmp_path / "second", f"blend{alpha}", tmp_path / "export", dtype="float32", alpha=alpha)
        weights, card = read_checkpoint(card_path)
        assert card["training"]["interpolation"]["alpha"] == alpha
        for k in moved:
            torch.testing.assert_close(weights[k], (1 - alpha) * start[k] + alpha * end[k])
    with pytest.raises(ValueError, match="init_from"):
        export(tmp_path / "first", "nothing", tmp_path / "export", alpha=0.5)
