"""Run checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the policy's weights, the optimiser's moments, an EMA teacher's weights, the
skill retrievers' bandit statistics, the RNG states and the step counter. The reference model
needs nothing: it is the warm-started initial policy, which ``setup`` rebuilds. Rollout and
update randomness is seeded from (seed, step) on every step, so a run resumed from step s on
the same machine logs the same numbers as one that never stopped (tested).

The file is written to a temporary name and renamed, so a kill during the write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from sdar_bench.trainer import RunState

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(state: RunState, step: int, run_dir: Path) -> Path:
    """Write the state after ``step`` finished training steps to ``run_dir/checkpoint.pt``."""
    payload: dict[str, Any] = {
        "step": step,
        "model": state.policy.model.state_dict(),
        "optimizer": state.optimizer.state_dict() if state.optimizer is not None else None,
        "teacher": _own_teacher_weights(state),
        "retrievers": {
            name: retriever.state_dict()
            for name, retriever in _retrievers(state).items()
            if retriever is not None
        },
        "nonfinite_steps": state.nonfinite_steps,
        "nonfinite_in_a_row": state.nonfinite_in_a_row,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }
    path = run_dir / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(state: RunState, run_dir: Path) -> int:
    """Restore ``state`` from ``run_dir/checkpoint.pt``; returns the finished step count."""
    payload = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)
    state.policy.model.load_state_dict(payload["model"])
    state.backend.sync_weights()  # a vLLM engine still holds the weights it was built with
    if state.optimizer is not None and payload["optimizer"] is not None:
        state.optimizer.load_state_dict(payload["optimizer"])
    if payload["teacher"] is not None and state.teacher is not None:
        state.teacher.load_state_dict(payload["teacher"])
    for name, retriever in _retrievers(state).items():
        if retriever is not None and name in payload["retrievers"]:
            retriever.load_state_dict(payload["retrievers"][name])
    state.nonfinite_steps = payload["nonfinite_steps"]
    state.nonfinite_in_a_row = payload.get("nonfinite_in_a_row", 0)
    torch.set_rng_state(payload["torch_rng"])
    random.setstate(payload["python_rng"])
    return int(payload["step"])


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT_FILE).exists()


def _own_teacher_weights(state: RunState) -> dict[str, torch.Tensor] | None:
    """Only an EMA teacher has weights of its own that change; live is the policy, frozen the
    reference."""
    if getattr(state.method.params, "teacher", "live") != "ema" or state.teacher is None:
        return None
    return state.teacher.state_dict()


def _retrievers(state: RunState) -> dict[str, Any]:
    return {
        "train": state.train_skills,
        "teacher": state.teacher_skills,
        "eval": state.eval_skills,
    }
