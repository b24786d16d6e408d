"""The trainer: config in, run folder out (resolved config, CSV logs, checkpoints); resumable; DDP via torchrun.

A run folder holds ``config.yaml`` (the resolved config), ``train.csv`` and ``validation.csv`` (one row per
logged step), and ``last.pt`` (network, optimiser, schedule and step, written every ``checkpoint_every`` steps
and at the end). Sample ``i`` of the training stream is a pure function of ``(data.seed, i)`` and step ``s``
of rank ``r`` reads samples ``(s * world + r) * batch ...``, so a resumed run sees the same data as an
uninterrupted one. Under ``torchrun`` every rank trains on its own samples and rank 0 logs and saves.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from featureserve.models.cards import read_checkpoint

from .config import TrainConfig
from .methods import Method, method_for


class StepBatches(Sampler[list[int]]):
    """Index batches of steps ``start .. steps - 1`` for one rank (see the module docstring)."""

    def __init__(self, start: int, steps: int, batch_size: int, rank: int, world: int) -> None:
        self.start, self.steps, self.batch_size, self.rank, self.world = start, steps, batch_size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            first = (step * self.world + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


def _init_worker(_: int) -> None:
    """Keep OpenCV and torch single-threaded in data workers: the trainer's torch threads already use the cores."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(config.device)


def checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of ``path``: a run's ``last.pt`` or a model card."""
    path = Path(path)
    if path.suffix == ".json":
        return read_checkpoint(path)[0]
    return torch.load(path, map_location="cpu", weights_only=False)["network"]


def load_matching_weights(network: torch.nn.Module, path: str | Path) -> int:
    """Copy the weights of ``path`` (a run's ``last.pt`` or a model card) whose names and shapes match; their count."""
    state = checkpoint_weights(path)
    own = network.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"{path}: no weight matches the network by name and shape")
    network.load_state_dict(matching, strict=False)
    return len(matching)


def learning_rate(config: TrainConfig, progress: float, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to ``final_lr`` as ``progress`` goes 0 -> 1."""
    optim = config.optim
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Progress:
    """A one-line progress bar on stderr (a line per update when stderr is not a terminal)."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start, self.began = total, start, time.perf_counter()
        self.interactive = sys.stderr.isatty()

    def update(self, step: int, loss: float) -> float:
        """Redraw at ``step`` (completed steps) with the current loss; returns steps per second."""
        rate = (step - self.start) / max(time.perf_counter() - self.began, 1e-9)
        filled = int(30 * step / max(self.total, 1))
        line = f"step {step}/{self.total} [{'#' * filled}{'.' * (30 - filled)}] loss {loss:.4f} {rate:.2f} steps/s"
        sys.stderr.write(f"\r{line}" if self.interactive else f"{line}\n")
        sys.stderr.flush()
        return rate


class CSVLog:
    """Appends dict rows to a CSV file; the header is written once, from the first row's keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with path.open() as f:
                self.fields = next(csv.reader(f), None)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys missing from the header are dropped)."""
        new = self.fields is None
        self.fields = self.fields or list(row)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _batches(loader: DataLoader, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(
    network: torch.nn.Module, method: Method, sets: dict[str, Dataset], device: torch.device, step: int
) -> dict[str, float]:
    """Mean loss terms on each validation set at training ``step``, keys ``<set>/<term>``."""
    was_training = network.training
    network.eval()
    results: dict[str, float] = {}
    for name, dataset in sets.items():
        totals: dict[str, list[float]] = {}
        for batch in _batches(DataLoader(dataset, batch_size=4), device):
            for key, value in method.loss_terms(network, batch, step).items():
                totals.setdefault(key, []).append(float(value))
        results.update({f"{name}/{k}": float(np.mean(v)) for k, v in totals.items()})
    network.train(was_training)
    return results


def train(config: TrainConfig, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train ``config.method`` as configured; returns a summary (step, losses, wall time). Handles ``torchrun``."""
    run_dir = Path(run_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(config, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    method = method_for(config)
    network = method.network()
    checkpoint_path = run_dir / "last.pt"
    resuming = resume and checkpoint_path.exists()
    if config.init_from and not resuming:
        count = load_matching_weights(network, config.init_from)
        print(f"initialised {count} tensors from {config.init_from}", file=sys.stderr)
    elif not resuming:
        method.initialise(network)
    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start, elapsed_before = 0, 0.0
    if resuming:
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start, elapsed_before = state["step"], state["wall_seconds"]
    model: torch.nn.Module = DistributedDataParallel(network) if world > 1 else network
    is_main = rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    train_log, validation_log = CSVLog(run_dir / "train.csv"), CSVLog(run_dir / "validation.csv")
    val_sets = method.validation_sets() if is_main and config.validation.every else {}
    steps = config.optim.steps
    loader = DataLoader(
        method.training_set(),
        batch_sampler=StepBatches(start, steps, config.optim.batch_size, rank, world),
        num_workers=config.data.workers,
        worker_init_fn=_init_worker,
        # Workers start from a clean process: a worker forked after OpenCV has run threads here (as the
        # orb-patch method's data-dependent initialisation does) can hang on a lock copied mid-use.
        multiprocessing_context="forkserver" if config.data.workers else None,
    )
    progress = Progress(steps, start)
    began = time.perf_counter()
    terms: dict[str, torch.Tensor] = {}
    model.train()
    step = start

    def save() -> None:
        state = {
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "wall_seconds": elapsed_before + time.perf_counter() - began,
            "device": str(device),
            "world_size": world,
        }
        torch.save(state, run_dir / "last.tmp")
        os.replace(run_dir / "last.tmp", checkpoint_path)  # a kill mid-write never leaves a broken checkpoint

    def progress_fraction() -> float:
        # Steps, or wall time when a budget is set: a CPU run shares its machine, so its speed is not known ahead.
        fraction = step / steps
        if config.optim.max_minutes:
            elapsed = elapsed_before + time.perf_counter() - began
            fraction = max(fraction, elapsed / (60 * config.optim.max_minutes))
        if world > 1:  # every rank must stop at the same step
            shared = torch.tensor([fraction], dtype=torch.float64, device=device)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            fraction = float(shared)
        return fraction

    fraction = progress_fraction()
    for batch in _batches(loader, device) if fraction < 1 else ():
        lr = learning_rate(config, fraction, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            terms = method.loss_terms(model, batch, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(terms["loss"]).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(network.parameters(), config.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        fraction = progress_fraction()
        done = fraction >= 1
        if is_main:
            if step % config.log_every == 0 or done:
                rate = progress.update(step, terms["loss"].item())
                row = {"step": step, "lr": lr, "grad_norm": float(grad_norm), "steps_per_s": rate}
                train_log.write(row | {k: v.item() for k, v in terms.items()})
            if val_sets and (step % config.validation.every == 0 or done):
                validation_log.write({"step": step} | validate(network, method, val_sets, device, step))
            if step % config.checkpoint_every == 0 or done:
                save()
        if done:
            break
    if is_main and step == start:  # nothing left to train: keep the checkpoint, report it
        save()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if is_main and progress.interactive:
        sys.stderr.write("\n")
    return {
        "step": step,
        "wall_seconds": elapsed_before + time.perf_counter() - began,
        "final": {k: v.item() for k, v in terms.items()},
        "device": str(device),
        "world_size": world,
    }
