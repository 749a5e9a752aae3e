"""One run over several processes (README, "Scale"): real tiny models, real gloo ranks.

* ``sampling: per_sample`` draws exactly from softmax(logits / T), and a row's tokens do not
  depend on the rows sampled beside it;
* two ranks sample what one process samples and take the update one process takes on the
  union batch (GRPO and SDAR);
* FSDP2 gives the loss curve of data parallel; its checkpoint resumes in one process, and on
  two ranks it continues exactly as a run that never stopped;
* a killed rank ends the run at once, and the run resumes from its checkpoint with the
  numbers of one process;
* bad ``--nproc`` input is refused in one line before any work.

Nothing is mocked: the one stand-in is a spy that records the rollouts ``train_step`` plays
(``trainer.collect`` wrapped, still called).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from sdar_bench import distributed
from sdar_bench.cli import app
from sdar_bench.config import EvalSpec, RunSpec, TrainSpec, WarmStartSpec
from sdar_bench.policy import PolicyOptions, load_policy
from sdar_bench.policy.backend import PerRowSampler, TransformersBackend, stream_seed

ROOT = Path(__file__).resolve().parent.parent


# ---- per-sample sampling ----------------------------------------------------------------------


def test_per_row_sampler_draws_exactly_softmax_of_logits_over_temperature() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    temperature = 0.7
    expected = torch.softmax(logits.double() / temperature, -1)
    draws = 20_000
    # 20,000 rows, each its own stream: one step of the processor on a batch of equal logits
    sampler = PerRowSampler(
        [stream_seed(9, i) for i in range(draws)], temperature, torch.device("cpu")
    )
    scores = sampler(torch.zeros(draws, 1, dtype=torch.long), logits.expand(draws, -1).clone())
    assert torch.isfinite(scores).sum(-1).eq(1).all()  # greedy decoding takes the chosen token
    counts = torch.bincount(scores.argmax(-1), minlength=len(logits)).double()
    chi2, p = scipy_stats.chisquare(counts.numpy(), (expected * draws).numpy())
    assert p > 1e-3, (counts.tolist(), (expected * draws).tolist(), chi2)
    # and the same streams give the same draws
    again = PerRowSampler(
        [stream_seed(9, i) for i in range(draws)], temperature, torch.device("cpu")
    )
    assert torch.equal(
        again(torch.zeros(draws, 1, dtype=torch.long), logits.expand(draws, -1).clone()), scores
    )


def test_per_sample_rows_sample_the_same_tokens_alone_or_in_any_batch(tiny_policy) -> None:
    backend = TransformersBackend(tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id)
    prompts = [[10, 11, 12], [13, 14], [10, 11, 12], [15, 16, 17, 18, 19], [20]]
    seeds = [stream_seed(0, row) for row in range(len(prompts))]
    together = backend.generate(prompts, 10, 1.0, 1, row_seeds=seeds)
    assert together[0] != together[2]  # copies of one prompt have their own streams
    for i in range(len(prompts)):
        alone = backend.generate([prompts[i]], 10, 1.0, 99, row_seeds=[seeds[i]])
        assert alone == [together[i]]
    static = TransformersBackend(
        tiny_policy.model, tiny_policy.pad_id, tiny_policy.eos_id, generation="static"
    )  # its batch is filled up to a bucket with extra rows: they change nothing here
    assert static.generate(prompts, 10, 1.0, 1, row_seeds=seeds) == together
    subset = [3, 0, 4]  # another batch, another order
    assert backend.generate(
        [prompts[i] for i in subset], 10, 1.0, 7, row_seeds=[seeds[i] for i in subset]
    ) == [together[i] for i in subset]


def test_sampling_option_leaves_run_ids_unchanged_at_its_default() -> None:
    plain = RunSpec(model="tiny-qwen-1m", env="alfworld", method="grpo")
    batch = plain.model_copy(update={"policy": PolicyOptions(sampling="batch", fsdp=False)})
    per_sample = plain.model_copy(update={"policy": PolicyOptions(sampling="per_sample")})
    fsdp = plain.model_copy(update={"policy": PolicyOptions(sampling="per_sample", fsdp=True)})
    assert plain.run_id == batch.run_id
    assert len({plain.run_id, per_sample.run_id, fsdp.run_id}) == 3


# ---- two gloo ranks against one process -------------------------------------------------------


def _spec(method: str, fsdp: bool = False, steps: int = 1) -> RunSpec:
    return RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 2},
        method=method,
        seed=5,
        train=TrainSpec(
            steps=steps,
            tasks_per_step=4,
            group_size=2,
            lr=1e-3,
            max_new_tokens=8,
            micro_batch_size=3,
        ),
        eval=EvalSpec(every=1, panel=3, valid_panel=0),
        warmstart=WarmStartSpec(enabled=False),
        policy=PolicyOptions(sampling="per_sample", fsdp=fsdp),
    )


def _train(spec: RunSpec, checkpoint_to: Path | None = None) -> dict[str, Any]:
    """``spec``'s first ``spec.train.steps`` steps on this process's rank: every step's metrics,
    the first step's responses (group, copy, response ids per turn) of every rank, in task
    order, and the final weights (full, on rank 0); then a checkpoint in ``checkpoint_to``."""
    from sdar_bench import trainer
    from sdar_bench.checkpoint import save_checkpoint

    torch.manual_seed(spec.seed)
    state = trainer.setup(spec, load_policy(spec.model, env=spec.env, options=spec.policy))
    played: list[Any] = []
    real_collect = trainer.collect

    def recording_collect(*args: Any, **kwargs: Any) -> Any:  # a spy: the real rollout, kept
        episodes = real_collect(*args, **kwargs)
        played.append(episodes)
        return episodes

    trainer.collect = recording_collect
    try:
        metrics = [trainer.train_step(state, step) for step in range(spec.train.steps)]
    finally:
        trainer.collect = real_collect
    first = [(e.group, e.copy, [t.response_ids for t in e.turns]) for e in played[0]]
    responses = sorted(r for share in distributed.gather_objects(first) for r in share)
    weights, _ = distributed.full_state_dicts(state.policy.model, None)
    sharded = distributed.is_sharded(state.policy.model)
    if checkpoint_to is not None:
        save_checkpoint(state, spec.train.steps, checkpoint_to)
    return {"metrics": metrics, "responses": responses, "weights": weights, "sharded": sharded}


def _ranks_main(rank: int, world: int, port: int, jobs: list[tuple[str, str]]) -> None:
    """A spawned gloo rank: each job (a RunSpec as JSON, an output file) trained, rank 0 saves
    the result there and the run's checkpoint beside it."""
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    distributed.spawn_env(rank, world, port)
    distributed.init_from_env(timeout_s=120)
    try:
        for spec_json, out in jobs:
            result = _train(RunSpec.model_validate_json(spec_json), Path(out).parent)
            if distributed.is_main():
                torch.save(result, out)
    finally:
        distributed.shutdown()


def _on_two_ranks(jobs: list[tuple[RunSpec, Path]]) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    for _, path in jobs:
        path.parent.mkdir(parents=True, exist_ok=True)
    args = (2, distributed.free_port(), [(s.model_dump_json(), str(p)) for s, p in jobs])
    mp.start_processes(_ranks_main, args, nprocs=2, join=True, start_method="spawn")
    return [torch.load(p, weights_only=False) for _, p in jobs]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_ranks_sample_and_update_as_one_process_for_grpo_and_sdar(tmp_path) -> None:
    specs = [_spec("grpo"), _spec("sdar")]
    two = _on_two_ranks([(s, tmp_path / s.method / "result.pt") for s in specs])
    for spec, ranks in zip(specs, two, strict=True):
        one = _train(spec)
        # the same samples: every (task, copy) played the same tokens on whichever rank
        assert ranks["responses"] == one["responses"]
        assert len(ranks["responses"]) == spec.train.tasks_per_step * spec.train.group_size
        m1, m2 = one["metrics"][0], ranks["metrics"][0]
        for key in ("reward/mean", "reward/std_in_group", "success/train", "turns/mean"):
            assert m2[key] == m1[key], key  # computed from the same values in the same order
        assert m2["samples"] == m1["samples"]
        for key in ("loss/pg", "loss/kl", "loss/aux", "entropy/mean", "grad/norm"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-6), key
        # the update of the union batch: summed per-rank gradients = one process's gradient
        gap = _max_difference(ranks["weights"], one["weights"])
        print(f"{spec.method}: max |parameter difference| nproc 2 vs 1 after one update: {gap:.2e}")
        assert gap < 1e-5


def test_fsdp2_gives_the_loss_curve_of_data_parallel_and_a_checkpoint_one_process_resumes(
    tmp_path,
) -> None:
    ddp, fsdp = _on_two_ranks(
        [
            (_spec("sdar", steps=3), tmp_path / "ddp" / "result.pt"),
            (_spec("sdar", fsdp=True, steps=3), tmp_path / "fsdp" / "result.pt"),
        ]
    )
    assert fsdp["sharded"] and not ddp["sharded"]
    keys = ("loss/pg", "loss/kl", "loss/aux", "entropy/mean", "reward/mean", "grad/norm")
    pairs = list(zip(ddp["metrics"], fsdp["metrics"], strict=True))
    worst = max(abs(a[k] - b[k]) for a, b in pairs for k in keys)
    gap = _max_difference(ddp["weights"], fsdp["weights"])
    print(f"FSDP2 vs DDP over 3 steps: max |metric difference| {worst:.2e}, weights {gap:.2e}")
    for step, (a, b) in enumerate(pairs):
        for key in keys:
            assert b[key] == pytest.approx(a[key], abs=1e-4), (step, key)
    assert gap < 1e-4

    # the FSDP2 checkpoint (full state dicts from the shards) resumes in one process, and holds
    # the optimiser state data parallel holds
    from sdar_bench import trainer
    from sdar_bench.checkpoint import read_checkpoint, restore_checkpoint

    spec = _spec("sdar", steps=4)
    state = trainer.setup(spec, load_policy(spec.model, env=spec.env, options=spec.policy))
    assert restore_checkpoint(state, read_checkpoint(tmp_path / "fsdp")) == 3
    assert _max_difference(state.policy.model.state_dict(), fsdp["weights"]) == 0.0
    sharded_moments = state.optimizer.state_dict()["state"]
    plain_moments = read_checkpoint(tmp_path / "ddp")["optimizer"]["state"]
    assert sharded_moments.keys() == plain_moments.keys()
    for i, moments in plain_moments.items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(sharded_moments[i][name], moments[name], atol=1e-6)
    assert math.isfinite(trainer.train_step(state, 3)["loss/pg"])


def _fsdp_resume_main(rank: int, world: int, port: int, folder: str) -> None:
    """A spawned gloo rank: 3 FSDP2 steps straight, and 1 step + checkpoint + a fresh state
    resumed from it + 2 steps; rank 0 saves both ends' full state dicts and metrics."""
    from sdar_bench import trainer
    from sdar_bench.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint

    torch.set_num_threads(1)
    distributed.spawn_env(rank, world, port)
    distributed.init_from_env(timeout_s=120)
    try:
        spec = _spec("sdar", fsdp=True, steps=3)

        def fresh() -> Any:
            torch.manual_seed(spec.seed)
            return trainer.setup(spec, load_policy(spec.model, env=spec.env, options=spec.policy))

        straight = fresh()
        whole = [trainer.train_step(straight, step) for step in range(3)]
        stopped = fresh()
        trainer.train_step(stopped, 0)
        save_checkpoint(stopped, 1, Path(folder))
        resumed = fresh()
        assert restore_checkpoint(resumed, read_checkpoint(Path(folder))) == 1
        rest = [trainer.train_step(resumed, step) for step in (1, 2)]
        ends = [
            distributed.full_state_dicts(s.policy.model, s.optimizer) for s in (straight, resumed)
        ]
        if distributed.is_main():
            torch.save({"whole": whole, "rest": rest, "ends": ends}, Path(folder) / "out.pt")
    finally:
        distributed.shutdown()


def test_an_fsdp2_run_resumed_from_its_checkpoint_continues_as_if_never_stopped(tmp_path) -> None:
    import torch.multiprocessing as mp

    args = (2, distributed.free_port(), str(tmp_path))
    mp.start_processes(_fsdp_resume_main, args, nprocs=2, join=True, start_method="spawn")
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    for a, b in zip(out["whole"][1:], out["rest"], strict=True):
        for key in ("loss/pg", "loss/kl", "loss/aux", "reward/mean", "grad/norm"):
            assert a[key] == b[key], key
    (w1, o1), (w2, o2) = out["ends"]
    assert _max_difference(w1, w2) == 0.0
    assert o1["state"].keys() == o2["state"].keys()
    for i in o1["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(o1["state"][i][name], o2["state"][i][name])


# ---- the command line: --nproc, a killed rank, bad input --------------------------------------

SUITE = {
    "name": "ranks",
    "models": ["tiny-qwen-1m"],
    "envs": ["alfworld"],
    "env_params": {"alfworld": {"max_turns": 2}},
    "methods": ["sdar"],
    "seeds": [1],
    "train": {
        "steps": 3,
        "tasks_per_step": 2,
        "group_size": 2,
        "lr": 1.0e-3,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
    },
    "eval": {"every": 3, "panel": 3, "valid_panel": 2},
    "warmstart": {"enabled": False},
    "policy": {"sampling": "per_sample"},
}


def _suite(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**SUITE, **changes}))
    return path


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdar_bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    drop = ("time/", "tokens/")
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(drop)}
        for line in path.read_text().splitlines()
    ]


def _killed_and_resumed(tmp_path: Path) -> Path:
    """A two-rank run whose rank 1 is killed before step 2, then the same command again: the
    run's folder, checked on the way."""
    suite = _suite(tmp_path / "s.yaml")
    args = ("run", str(suite), "-o", str(tmp_path / "two"), "--no-mlflow", "--nproc", "2")
    started = time.monotonic()
    killed = _cli(*args, "--dist-timeout", "60", env={distributed.FAULT_INJECTION_ENV: "1:2"})
    seconds = time.monotonic() - started
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert seconds < 120  # ended by the launcher at once, not by the 60 s collective timeout
    (run,) = (tmp_path / "two" / "runs").iterdir()
    assert not (run / "result.json").exists()
    assert "rank 1 died" in killed.stdout and "exit code 1" in (run / "error.txt").read_text()
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 1

    again = _cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((run / "manifest.json").read_text())["resumed_from_step"] == 1
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((run / "result.json").read_text())["status"] == "finished"
    assert not (run / "checkpoint.pt").exists() and not (run / "error.txt").exists()
    return run


def test_fault_injection_a_killed_rank_fails_the_run_at_once_and_it_resumes(tmp_path) -> None:
    _killed_and_resumed(tmp_path)


@pytest.mark.slow
def test_a_resumed_two_rank_run_has_the_numbers_of_one_uninterrupted_process(tmp_path) -> None:
    run = _killed_and_resumed(tmp_path)
    one = _cli("run", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "one"), "--no-mlflow")
    assert one.returncode == 0, one.stdout + one.stderr
    single = tmp_path / "one" / "runs" / run.name
    assert _rows(run / "eval.jsonl") == _rows(single / "eval.jsonl")  # evaluation: exactly
    assert _rows(run / "episodes.jsonl") == _rows(single / "episodes.jsonl")
    for a, b in zip(_rows(run / "metrics.jsonl"), _rows(single / "metrics.jsonl"), strict=True):
        assert a["reward/mean"] == b["reward/mean"] and a["samples"] == b["samples"]
        for key in ("loss/pg", "loss/kl", "loss/aux", "grad/norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize(
    ("args", "changes", "expected"),
    [
        (["--nproc", "0"], {}, "--nproc: must be at least 1 (got 0)"),
        (["--nproc", "3"], {}, "--nproc 3: more ranks than train.tasks_per_step (2)"),
        (["--nproc", "2"], {"policy": {}}, "policy.sampling: --nproc 2 needs per-sample"),
        (["--nproc", "2", "-j", "2"], {}, "--nproc: not with -j/--workers"),
    ],
)
def test_bad_nproc_is_refused_in_one_line_before_any_work(
    tmp_path, args: list[str], changes: dict[str, Any], expected: str
) -> None:
    suite = _suite(tmp_path / "s.yaml", **changes)
    for command in ("run", "plan"):
        if command == "plan" and "-j" in args:
            continue
        out = CliRunner().invoke(app, [command, str(suite), "-o", str(tmp_path / "res"), *args])
        assert out.exit_code == 2, out.output
        assert out.output.strip().startswith(f"error: {expected}"), out.output
        assert len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_plan_shows_each_rank_s_memory_data_parallel_and_fsdp(tmp_path) -> None:
    suite = _suite(tmp_path / "s.yaml")
    out = CliRunner().invoke(app, ["plan", str(suite), "-o", str(tmp_path), "--nproc", "2"])
    assert out.exit_code == 0, out.output
    assert "memory/rank" in out.output
    rows = {}
    for fsdp in (False, True):
        policy = {"sampling": "per_sample", "fsdp": fsdp}
        suite = _suite(tmp_path / "s.yaml", policy=policy)
        args = ["plan", str(suite), "-o", str(tmp_path), "--nproc", "2", "--format", "json"]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        (rows[fsdp],) = json.loads(out.output)
    # FSDP2 shards the AdamW moments (2 × 4 bytes per parameter): half of them per rank
    assert rows[True]["rank_memory_gib"] < rows[False]["rank_memory_gib"]


def test_run_rank_outside_torchrun_says_how_to_start_it(tmp_path) -> None:
    suite = _suite(tmp_path / "s.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    out = subprocess.run(
        [sys.executable, "-m", "sdar_bench", "run-rank", str(suite)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: run-rank: start it with torchrun")
