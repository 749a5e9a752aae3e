"""Run checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the policy's weights, the optimiser's moments, an EMA teacher's weights, the
skill retrievers' bandit statistics, the RNG states and the step counter. The reference model
needs nothing: it is the warm-started initial policy, which ``setup`` rebuilds. Rollout and
update randomness is seeded from (seed, step) on every step, so a run resumed from step s on
the same machine logs the same numbers as one that never stopped (tested).

The file is written to a temporary name and renamed, so a kill during the write leaves the
previous checkpoint intact. It holds only tensors and plain containers, so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file. There is
one checkpoint per run (the last one); a file that does not load is set aside as
``checkpoint.pt.damaged`` and the run starts over, since no older checkpoint exists.

A run over several ranks writes the same file: full (unsharded) state dicts, gathered from an
FSDP2 model on rank 0, which alone writes; every rank reads it back. So a checkpoint written
with any number of ranks resumes with any other number, one process included.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdar_bench import distributed

if TYPE_CHECKING:
    from sdar_bench.trainer import RunState

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(state: RunState, step: int, run_dir: Path) -> Path:
    """Write the state after ``step`` finished training steps to ``run_dir/checkpoint.pt``.

    With several ranks every rank must call it; rank 0 writes, and no rank returns before the
    file is in place (a rank killed after this point finds it on resume).
    """
    weights, optimizer = distributed.full_state_dicts(state.policy.model, state.optimizer)
    path = run_dir / CHECKPOINT_FILE
    if distributed.is_main():
        _write(state, step, path, weights, optimizer)
    distributed.barrier()
    return path


def _write(
    state: RunState,
    step: int,
    path: Path,
    weights: dict[str, Any],
    optimizer: dict[str, Any] | None,
) -> None:
    payload: dict[str, Any] = {
        "step": step,
        "model": weights,
        "optimizer": optimizer,
        "teacher": _own_teacher_weights(state),
        "retrievers": {
            name: retriever.state_dict()
            for name, retriever in _retrievers(state).items()
            if retriever is not None
        },
        "nonfinite_steps": state.nonfinite_steps,
        "nonfinite_in_a_row": state.nonfinite_in_a_row,
        "torch_rng": torch.get_rng_state(),
        "python_rng": _python_rng_state(),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # a partial file must not fill what is left of the disk
        raise OSError(exc.errno, exc.strerror, str(tmp)) from exc


def _python_rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_rng_state(saved: dict[str, Any]) -> None:
    random.setstate((saved["version"], tuple(saved["internal"]), saved["gauss"]))


class DamagedCheckpoint(ValueError):
    """``checkpoint.pt`` does not load (truncated, corrupt, or not one of ours)."""


_REQUIRED = ("step", "model", "optimizer", "teacher", "retrievers", "torch_rng", "python_rng")


def read_checkpoint(run_dir: Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True``; raises
    :class:`DamagedCheckpoint` when it does not load or lacks what a resume needs.
    ``mmap``: map the tensors instead of reading them (to look at the step of a large one)."""
    path = run_dir / CHECKPOINT_FILE
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a broken file
        raise DamagedCheckpoint(f"{path} does not load ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or any(key not in payload for key in _REQUIRED):
        raise DamagedCheckpoint(f"{path} is not a sdar-bench checkpoint")
    if not isinstance(payload["step"], int) or payload["step"] < 1:
        raise DamagedCheckpoint(f"{path} has no valid step count")
    return payload


def checkpoint_step(run_dir: Path) -> int | None:
    """The step ``run_dir``'s checkpoint stands at; None when it is damaged (nothing moved)."""
    try:
        return int(read_checkpoint(run_dir, mmap=True)["step"])
    except DamagedCheckpoint:
        return None


def set_aside_checkpoint(run_dir: Path) -> Path:
    """Rename a damaged checkpoint to ``checkpoint.pt.damaged`` (kept for inspection)."""
    path = run_dir / CHECKPOINT_FILE
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    return target


def load_checkpoint(state: RunState, run_dir: Path) -> int:
    """Restore ``state`` from ``run_dir/checkpoint.pt``; returns the finished step count."""
    return restore_checkpoint(state, read_checkpoint(run_dir))


def restore_checkpoint(state: RunState, payload: dict[str, Any]) -> int:
    """Restore ``state`` from a checkpoint's contents (:func:`read_checkpoint`); with several
    ranks, every rank calls it with the same contents."""
    distributed.load_full_state_dicts(
        state.policy.model, state.optimizer, payload["model"], payload["optimizer"]
    )
    state.backend.sync_weights()  # a vLLM engine still holds the weights it was built with
    if payload["teacher"] is not None and state.teacher is not None:
        state.teacher.load_state_dict(payload["teacher"])
    for name, retriever in _retrievers(state).items():
        if retriever is not None and name in payload["retrievers"]:
            retriever.load_state_dict(payload["retrievers"][name])
    state.nonfinite_steps = payload["nonfinite_steps"]
    state.nonfinite_in_a_row = payload.get("nonfinite_in_a_row", 0)
    torch.set_rng_state(payload["torch_rng"])
    _set_python_rng_state(payload["python_rng"])
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
