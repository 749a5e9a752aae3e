"""Execute one run: warm start (tiny models), training, evaluation, and its files on disk.

A run directory holds ``spec.yaml``, ``manifest.json``, ``metrics.jsonl`` (one line per step),
``eval.jsonl`` (one line per evaluation and skill mode), ``checkpoint.pt`` while it trains and,
last, ``result.json``: a run is finished exactly when ``result.json`` exists, which is what
resume keys on; an unfinished run with a checkpoint continues from it.

Nothing on disk is trusted blindly (README, "Reliability"): a ``result.json`` that is not JSON
or lacks its keys, or a finished run without a readable ``manifest.json``, means the run is
redone; a checkpoint that does not load, or logs that do not hold exactly the steps and
evaluations up to the checkpoint, mean it starts over. Whatever is replaced is kept beside it as
``<name>.damaged`` and one warning line says why. The run's ``.lock`` keeps two processes from
executing it at once.

A run over several ranks (``execute_run_rank``, README "Scale") is executed by every rank
together; rank 0 alone decides whether to resume, writes the files and calls back, and the
process that launched the ranks (or rank 0 under torchrun) holds the lock.
"""

from __future__ import annotations

import math
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import yaml

from sdar_bench import distributed
from sdar_bench.checkpoint import (
    CHECKPOINT_FILE,
    DamagedCheckpoint,
    has_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    set_aside_checkpoint,
)
from sdar_bench.config import RunSpec
from sdar_bench.envs import ENVS
from sdar_bench.envs.mix import is_mix, mix_members
from sdar_bench.jsonl import (
    append_jsonl,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from sdar_bench.locking import LOCK_FILE, run_lock
from sdar_bench.policy import Policy, load_policy
from sdar_bench.policy.tiny import TINY_MODELS
from sdar_bench.run_files import (
    DAMAGED,
    EPISODES_FILE,
    MANIFEST_FILE,
    RESULT_FILE,
    _read_json,
    read_result,
    set_aside,
)
from sdar_bench.skills import skill_hashes
from sdar_bench.trainer import evaluate, setup, train_step
from sdar_bench.warmstart import find_warm_start, warm_start

Callback = Callable[[str, dict[str, Any]], None]


def _noop(event: str, info: dict[str, Any]) -> None:
    return None


def warn(message: str) -> None:
    """One line on stderr: what was found wrong on disk and what is done about it."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def manifest(spec: RunSpec, panel_hash: str, extra: dict[str, Any]) -> dict[str, Any]:
    packages = {}
    for name in ("sdar-bench", "torch", "transformers", "trl", "tokenizers", "numpy"):
        try:
            packages[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is recorded, not fatal
            packages[name] = None
    return {
        "run_id": spec.run_id,
        "spec": spec.model_dump(mode="json"),
        "git_sha": _git_sha(),
        "packages": packages,
        "python": platform.python_version(),
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "torch_threads": torch.get_num_threads(),
        "panel_hash": panel_hash,
        "skill_hashes": skill_hashes(spec.env),
        "seed": spec.seed,
        **extra,
    }


class RunFailed(RuntimeError):
    """The run cannot go on (e.g. non-finite updates in a row); the reason lands in its files."""


def execute_run(spec: RunSpec, run_dir: Path, callback: Callback = _noop) -> dict[str, Any]:
    """Run ``spec`` into ``run_dir``: from its last checkpoint when it has one, else from scratch.

    A run that fails (``RunFailed``) still writes ``result.json`` with ``status: failed`` and
    the reason, so the suite goes on and the report lists it. Raises
    :class:`~sdar_bench.locking.RunInUse` when another process is executing the same run.
    """
    with run_lock(run_dir):
        return _execute_run(spec, run_dir, callback)


def execute_run_rank(spec: RunSpec, run_dir: Path, callback: Callback = _noop) -> dict[str, Any]:
    """This rank's part of ``spec`` executed by all ranks of the process group together.

    Every rank must call it; the caller holds the run's lock (the launcher, or rank 0). Rank 0
    writes the run's files and gets ``callback``; it returns the run's result on rank 0 and
    ``{"run_id", "status"}`` elsewhere. A rank that fails raises (the launcher then ends the
    others), and the next try resumes from the last checkpoint.
    """
    return _execute_run(spec, run_dir, callback if distributed.is_main() else _noop)


def _execute_run(spec: RunSpec, run_dir: Path, callback: Callback) -> dict[str, Any]:
    main = distributed.is_main()  # the one writer; True in a single process
    checkpoint = _resume_point(spec, run_dir) if main else None
    resume_step = distributed.broadcast_object(None if checkpoint is None else checkpoint["step"])
    if checkpoint is None and resume_step is not None:  # rank 0 chose it: every rank reads it
        checkpoint = read_checkpoint(run_dir)
    resume = checkpoint is not None
    if main:
        if not resume:
            _clear(run_dir)
        (run_dir / "error.txt").unlink(missing_ok=True)  # from an earlier crash; this try goes on
        write_text_atomic(
            run_dir / "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        )
    torch.manual_seed(spec.seed)
    started = time.perf_counter()

    policy, warm = initial_policy(spec, callback)
    torch.manual_seed(spec.seed)
    state = setup(spec, policy)

    first_step = 0
    if checkpoint is not None:
        first_step = restore_checkpoint(state, checkpoint)
        del checkpoint  # the weights now live in the model; do not hold a second copy
        warm["resumed_from_step"] = first_step
    metrics_rows: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    hashes = {name: state.env.panel_hash(tasks) for name, tasks in state.panels.items()}
    warm["panel_hashes"] = hashes
    if distributed.active():
        warm["ranks"] = distributed.world()
    if main:
        metrics_rows = _keep_rows(run_dir / "metrics.jsonl", first_step)
        evals = _keep_rows(run_dir / "eval.jsonl", first_step)
        _keep_rows(run_dir / EPISODES_FILE, first_step)
        write_json_atomic(run_dir / MANIFEST_FILE, manifest(spec, hashes["test"], warm))
    callback("start", {"run_id": spec.run_id, "steps": spec.train.steps, "from": first_step})

    def run_eval(step: int) -> None:
        rows, records = evaluate(state, step)  # every rank plays its share of the panels
        if not main:
            return
        for record in records:
            append_jsonl(run_dir / EPISODES_FILE, record)
        for row in rows:
            append_jsonl(run_dir / "eval.jsonl", row)
            evals.append(row)
            callback("eval", row)

    status, reason = "finished", None
    if not resume:
        run_eval(0)
    try:
        if state.method.trains:
            for step in range(first_step, spec.train.steps):
                distributed.fault_point(step + 1)  # tests: a rank dies here
                metrics = train_step(state, step)
                metrics["step"] = step + 1
                if main:
                    append_jsonl(run_dir / "metrics.jsonl", metrics)
                metrics_rows.append(metrics)
                callback("step", metrics)
                if state.nonfinite_in_a_row >= spec.train.max_nonfinite_in_a_row:
                    raise RunFailed(
                        f"{state.nonfinite_in_a_row} steps in a row had only non-finite updates "
                        f"(train.max_nonfinite_in_a_row = {spec.train.max_nonfinite_in_a_row}); "
                        "lower train.lr or the method's coefficients"
                    )
                if (step + 1) % spec.eval.every == 0 or step + 1 == spec.train.steps:
                    run_eval(step + 1)
                every = spec.train.checkpoint_every
                if every and (step + 1) % every == 0 and step + 1 < spec.train.steps:
                    save_checkpoint(state, step + 1, run_dir)
    except RunFailed as exc:  # every rank raises it at the same step (its test is global)
        status, reason = "failed", str(exc)

    if not main:
        return {"run_id": spec.run_id, "status": status}
    result = summarize_run(spec, evals)
    result.update(
        {
            "run_id": spec.run_id,
            "seconds": time.perf_counter() - started,
            "status": status,
            "reason": reason,
            "nonfinite_steps": state.nonfinite_steps,
        }
    )
    write_json_atomic(run_dir / RESULT_FILE, result)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)  # finished: the weights are not needed
    callback("done", result)
    return result


def initial_policy(spec: RunSpec, callback: Callback) -> tuple[Policy, dict[str, Any]]:
    """The policy every method of the suite starts from: the warm start for tiny models."""
    policy = load_policy(
        spec.model, spec.train.max_prompt_tokens, env=spec.env, options=spec.policy
    )
    if spec.model not in TINY_MODELS or not spec.warmstart.enabled:
        return policy, {}
    callback("warmstart", {"run_id": spec.run_id})
    from sdar_bench.envs import make_env

    t0 = time.perf_counter()
    env = make_env(spec.env, **spec.env_params)
    model_dir = str(policy.model.name_or_path)
    if distributed.active() and find_warm_start(spec, model_dir) is None:
        # every rank would train its own copy at once: the launcher trains it first
        raise RuntimeError(
            f"the warm start of {spec.model} on {spec.env} is not trained yet; run "
            "`sdar-bench warmstart SUITE` before starting ranks"
        )
    checkpoint, cached = warm_start(policy, env, spec, model_dir)
    policy = load_policy(str(checkpoint), spec.train.max_prompt_tokens, options=spec.policy)
    info = {"checkpoint": str(checkpoint), "cached": cached, "seconds": time.perf_counter() - t0}
    return policy, {"warmstart": info}


def _clear(run_dir: Path) -> None:
    """Empty a run folder for a fresh start, keeping its lock and any ``*.damaged`` file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE or entry.name.endswith(DAMAGED):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _resume_point(spec: RunSpec, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to continue from, or None to start over; damaged files are set aside.

    A resume must reproduce a run that never stopped, so it needs a checkpoint that loads and
    logs that hold exactly the steps and evaluations up to it. Anything less restarts the run
    from step 0: a skipped or doubled step would change the curve without anyone noticing.
    """
    (run_dir / (CHECKPOINT_FILE + ".tmp")).unlink(missing_ok=True)  # a write that never ended
    result = run_dir / RESULT_FILE
    if result.exists() and read_result(run_dir) is None:
        warn(f"{result} is damaged (not JSON, or without final/best/status); set aside as "
             f"{RESULT_FILE}{DAMAGED}, the run is redone")  # fmt: skip
        set_aside(result)
    manifest_file = run_dir / MANIFEST_FILE
    if manifest_file.exists() and not isinstance(_read_json(manifest_file), dict):
        warn(f"{manifest_file} is damaged; set aside as {MANIFEST_FILE}{DAMAGED}")
        set_aside(manifest_file)
    if not has_checkpoint(run_dir):
        return None
    try:
        payload = read_checkpoint(run_dir)
    except DamagedCheckpoint as exc:
        set_aside_checkpoint(run_dir)
        warn(f"{exc}; set aside as {CHECKPOINT_FILE}{DAMAGED}. {spec.run_id} restarts from "
             "step 0 (a run keeps only its last checkpoint)")  # fmt: skip
        return None
    step = int(payload["step"])
    problem = _log_problem(spec, run_dir, step)
    if problem is None and step >= spec.train.steps:
        problem = f"its checkpoint is at step {step} of {spec.train.steps}"
    if problem is not None:
        (run_dir / CHECKPOINT_FILE).unlink()
        warn(f"{run_dir}: {problem}; {spec.run_id} restarts from step 0 so that no step is "
             "skipped or repeated")  # fmt: skip
        return None
    return payload


def due_evaluations(spec: RunSpec, last_step: int) -> list[int]:
    """The steps evaluated up to ``last_step``: 0, every ``eval.every``, and the last step."""
    return [0] + [
        s for s in range(1, last_step + 1) if s % spec.eval.every == 0 or s == spec.train.steps
    ]


def _log_problem(spec: RunSpec, run_dir: Path, step: int) -> str | None:
    """What is wrong with the logs of a run checkpointed at ``step``; None when they hold
    exactly steps 1..step and the evaluations due up to it (rows after it are dropped later)."""
    from sdar_bench.registry import get_method_class

    logged = [r.get("step") for r in read_jsonl(run_dir / "metrics.jsonl")]
    kept = [s for s in logged if isinstance(s, int) and s <= step]
    if kept != list(range(1, step + 1)):
        return f"metrics.jsonl does not hold exactly steps 1..{step} (torn or missing lines)"
    # one row per (panel, skill mode) of every evaluation, in eval.jsonl and episodes.jsonl
    per_eval = (
        len(get_method_class(spec.method).eval_skill_modes)
        * len(spec.eval.panels)
        * len(mix_members(spec.env))  # a multitask mix: one row per member env
    )
    due = [s for s in due_evaluations(spec, step) for _ in range(per_eval)]
    for log in ("eval.jsonl", EPISODES_FILE):
        rows = [r for r in read_jsonl(run_dir / log) if isinstance(r.get("step"), int)]
        if [r["step"] for r in rows if r["step"] <= step] != due:
            return f"{log} does not hold exactly the evaluations due up to step {step}"
    return None


def _keep_rows(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Rows of a jsonl log up to ``last_step``, rewriting the file to hold only those.

    After a kill the log may run past the checkpoint, or end in a half-written line; both are
    dropped so the resumed run appends exactly where the checkpoint stands.
    """
    rows = [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    if path.exists():
        write_jsonl_atomic(path, rows)
    return rows


def summarize_run(spec: RunSpec, evals: list[dict[str, Any]]) -> dict[str, Any]:
    """``summarize`` with the env's headline metric. A multitask run's ``final`` and ``best``
    are empty and ``by_env`` holds each member's ``summarize`` of its own rows: the report reads
    each member as a run of that env labelled "<method> (multitask)"."""
    if not is_mix(spec.env):
        return summarize(evals, ENVS[spec.env].table_columns()[-1])
    by_env = {
        env: summarize([r for r in evals if r.get("env") == env], ENVS[env].table_columns()[-1])
        for env in mix_members(spec.env)
    }
    return {"final": {}, "best": {}, "selection": "valid", "by_env": by_env}


def summarize(evals: list[dict[str, Any]], select_on: str = "success/all") -> dict[str, Any]:
    """Final and best evaluation of the test panel per skill mode.

    The best step is the one with the highest ``select_on`` (the env's headline metric) on the
    validation panel, earliest on ties, and its test-panel row is what is reported: choosing on
    the reported panel would bias the best step upwards. Runs without a validation panel (or
    written before it existed) have no best step; ``selection`` says which panel chose it.
    """
    out: dict[str, Any] = {"final": {}, "best": {}, "selection": "valid"}
    test = [r for r in evals if r.get("panel", "test") == "test"]
    for label in dict.fromkeys(row["label"] for row in test):
        rows = [r for r in test if r["label"] == label]
        out["final"][label] = rows[-1]
        valid = {r["step"]: r for r in evals if r.get("panel") == "valid" and r["label"] == label}
        chosen = [r for r in rows if r["step"] in valid]
        if chosen:
            best = max(
                chosen, key=lambda r: (valid[r["step"]].get(select_on, -math.inf), -r["step"])
            )
            out["best"][label] = {
                **best,
                "selected_on": {"panel": "valid", select_on: valid[best["step"]].get(select_on)},
            }
    return out
