"""What a suite will do before it does it: the runs, what each needs, and a rough cost.

``plan_suite`` loads no model and touches no network. ``preflight`` turns the plan into the
problems that would stop a run (missing weights or data, an unwritable results folder, an
unreachable tracking store), so ``sdar-bench run`` fails in seconds, not after an hour.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sdar_bench.config import RunSpec, SuiteSpec
from sdar_bench.envs import make_env
from sdar_bench.envs.base import Env, words
from sdar_bench.policy.catalog import ModelInfo, model_info
from sdar_bench.registry import get_method_class

# Rough throughput figures for the cost estimate, measured on the quickstart (2-core CPU,
# tiny-qwen-1m: ~25 ms per batched decoding step, dominated by Python overhead) and assumed for
# one H100 (40% of its bf16 peak; ~40 ms per decoding step of a 7B model with HF generate).
CPU_FLOPS, CPU_DECODE_S = 1e11, 0.025
GPU_FLOPS, GPU_DECODE_S = 4e14, 0.04
# TRL's SFTTrainer on the tiny models, 2-core CPU: the ALFWorld quickstart warm start (3000 steps
# of 32 samples) took about 2 hours.
CPU_SFT_FLOPS = 2e10


@dataclass(frozen=True)
class RunPlan:
    spec: RunSpec
    state: str  # "finished", "resumes at step k", "to run"
    model: ModelInfo
    data_ok: bool
    data: str
    flops: float  # upper bound: every episode runs to max_turns
    seconds: float  # rough wall time on the device it needs
    warmstart: str = "–"  # tiny models: "shipped", "cached" or "to train"
    warmstart_seconds: float = 0.0  # rough time to train it where it is "to train"
    warmstart_name: str = ""  # its checkpoint name: one warm start serves every run sharing it
    warmstart_resumes_at: int = 0  # "to train" after a kill: the step it resumes at (0: start)
    data_problems: tuple[str, ...] = ()  # every dataset it lacks, one line each

    @property
    def needs_gpu(self) -> bool:
        return self.model.needs_gpu or self.spec.policy.rollout == "vllm"


def run_state(run_dir: Path, spec: RunSpec) -> str:
    """What ``run`` will do with this run folder; reads it only (damaged files stay put)."""
    from sdar_bench.checkpoint import CHECKPOINT_FILE, checkpoint_step
    from sdar_bench.run_files import RESULT_FILE, is_finished

    if is_finished(run_dir):
        return "finished"
    if (run_dir / RESULT_FILE).exists():
        return "to run (its result.json or manifest.json is damaged: redone)"
    if (run_dir / CHECKPOINT_FILE).exists():
        step = checkpoint_step(run_dir)
        if step is None:
            return "to run (its checkpoint is damaged: restarts from step 0)"
        return f"resumes at step {step}/{spec.train.steps}"
    return "to run"


def plan_suite(suite: SuiteSpec, results: Path) -> list[RunPlan]:
    plans = []
    models = {name: model_info(name) for name in suite.models}
    envs: dict[str, Env | str] = {}  # an env, or why it cannot be built (its data is missing)
    for spec in suite.expand():
        key = json.dumps([spec.env, spec.env_params], sort_keys=True)
        if key not in envs:
            try:
                envs[key] = make_env(spec.env, **spec.env_params)
            except ValueError as exc:  # engines check their data files when built
                envs[key] = str(exc)
        env = envs[key]
        model = models[spec.model]
        missing: tuple[str, ...] = ()
        if isinstance(env, str):
            data_ok, data, flops, seconds = False, env, math.nan, math.nan
            missing = tuple(missing_data(spec, env))
        else:
            data_ok, data = env.data_status()
            flops, decode_steps = _cost(spec, env, model.params or 0.0)
            rate, decode_s = (
                (GPU_FLOPS, GPU_DECODE_S) if model.needs_gpu else (CPU_FLOPS, CPU_DECODE_S)
            )
            seconds = flops / rate + decode_steps * decode_s
        state = run_state(results / "runs" / spec.run_id, spec)
        warm, warm_s, warm_name, resumes_at = (
            ("–", 0.0, "", 0) if isinstance(env, str) else _warm_start_state(spec, env, model)
        )
        plans.append(
            RunPlan(
                spec, state, model, data_ok, data, flops, seconds,
                warmstart=warm, warmstart_seconds=warm_s, warmstart_name=warm_name,
                warmstart_resumes_at=resumes_at, data_problems=missing,
            )
        )  # fmt: skip
    return plans


def missing_data(spec: RunSpec, env_error: str) -> list[str]:
    """Every dataset ``spec``'s env settings name and this machine lacks, one line each.

    An env stops at the first missing file when it is built (``env_error``); a user fetching
    data wants the whole list at once, so the other ``*_dir``/``*_path`` settings and ALFWorld's
    ``$ALFWORLD_DATA`` are checked here too.
    """
    lines = [env_error]
    params = spec.env_params
    for name, value in sorted(params.items()):
        if not name.endswith(("_dir", "_path")) or not isinstance(value, str) or not value:
            continue
        if Path(value).expanduser().exists() or re.search(rf"\b{name}\b", env_error):
            continue  # present, or the env's own message already names it
        lines.append(
            f"{spec.env}: env_params.{spec.env}.{name} {value!r} does not exist; put the data "
            "there or change the path"
        )
    if (
        spec.env == "alfworld"
        and params.get("engine") == "real"
        and not params.get("data_dir")
        and not os.environ.get("ALFWORLD_DATA")
        and "ALFWORLD_DATA" not in env_error
    ):
        lines.append(
            "alfworld engine real: $ALFWORLD_DATA is not set; set it (or env_params.alfworld."
            "data_dir) to ALFWorld's data folder, the one holding json_2.1.1/ "
            "(alfworld-download fills it)"
        )
    return lines


def _warm_start_state(spec: RunSpec, env: Env, model: ModelInfo) -> tuple[str, float, str, int]:
    """Where a tiny model's warm start comes from, roughly how long it takes to train, its
    checkpoint name, and the step a killed training of it resumes at (0: none)."""
    from sdar_bench.policy.tiny import TINY_MODELS, tiny_model_dirname
    from sdar_bench.warmstart import SHIPPED, checkpoint_name, find_warm_start, resume_step

    if spec.model not in TINY_MODELS or not spec.warmstart.enabled:
        return "–", 0.0, "", 0
    model_dir = tiny_model_dirname(spec.model, spec.env)
    name = checkpoint_name(spec, model_dir)
    found = find_warm_start(spec, model_dir)
    if found is not None:
        return ("shipped" if found.parent == SHIPPED else "cached"), 0.0, name, 0
    ws = spec.warmstart
    done = resume_step(spec, model_dir)  # a killed warm start resumes where it stopped
    tokens = (ws.steps - done) * ws.batch_size * _tokens_per_turn(spec, env)
    return "to train", 6 * (model.params or 0.0) * tokens / CPU_SFT_FLOPS, name, done


def _tokens_per_turn(spec: RunSpec, env: Env) -> float:
    task = env.task("eval", 0)
    observation = env.new_game(task).reset()
    history = [(observation.text, "go to cabinet 1")] * env.params.history_length
    prompt = env.render_prompt(task, history, observation, 0)
    # word-level count × 1.3 ≈ BPE tokens; the tiny family tokenises by word
    return 1.3 * len(words(prompt)) + spec.train.max_new_tokens


def _cost(spec: RunSpec, env: Env, params: float) -> tuple[float, int]:
    """Upper-bound FLOPs and sequential decoding steps of one run (every episode at max_turns)."""
    tokens_per_turn = _tokens_per_turn(spec, env)
    turns = env.params.max_turns
    method = get_method_class(spec.method)
    train_tokens = spec.train.steps * spec.train.tasks_per_step * spec.train.group_size
    train_tokens *= turns * tokens_per_turn if method.trains else 0
    # generation 2N, reference 2N, teacher 2N, update 6N per epoch (forward + backward)
    passes = 2 + 2 + (2 if method.needs_teacher else 0) + 6 * spec.train.ppo_epochs
    evals = 1 + (spec.train.steps // spec.eval.every if method.trains else 0)
    eval_tokens = (
        evals
        * len(method.eval_skill_modes)
        * (spec.eval.panel + spec.eval.valid_size)
        * turns
        * tokens_per_turn
    )
    flops = params * (passes * train_tokens + 2 * eval_tokens)
    rollouts = (spec.train.steps if method.trains else 0) + evals * len(method.eval_skill_modes)
    return flops, rollouts * turns * spec.train.max_new_tokens


GIB = 1024**3


def nproc_problems(suite: SuiteSpec, nproc: int, gpus: int | None = None) -> list[str]:
    """Why ``suite``'s runs cannot each run on ``nproc`` ranks, one line each (empty: they can).

    ``gpus``: the CUDA devices of this machine, one per rank (None: look; 0: the CPU, where
    gloo ranks share the cores and any number works).
    """
    if nproc < 1:
        return [f"--nproc: must be at least 1 (got {nproc})"]
    if nproc == 1:
        return []
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    if gpus and nproc > gpus:
        problems.append(
            f"--nproc {nproc}: this machine has {gpus} GPU(s), one per rank; use --nproc "
            f'{gpus} or fewer (more ranks: torchrun over several nodes, README "Scale")'
        )
    for spec in suite.expand():
        if spec.policy.sampling == "batch":
            problems.append(
                f"policy.sampling: --nproc {nproc} needs per-sample random streams (with "
                "batch sampling a row's tokens depend on the rows sampled beside it, so ranks "
                "would not sample what one process samples); add `policy: {sampling: "
                "per_sample}` to the suite"
            )
        if spec.train.tasks_per_step < nproc:
            problems.append(
                f"--nproc {nproc}: more ranks than train.tasks_per_step "
                f"({spec.train.tasks_per_step}); a rank takes whole task groups, so use "
                f"--nproc {spec.train.tasks_per_step} or fewer"
            )
        if spec.policy.fsdp and spec.policy.lora is not None:
            problems.append(
                "policy.fsdp: not with policy.lora (the adapters' optimiser state is already "
                "small and the frozen base stays whole); use fsdp: false"
            )
        if spec.policy.fsdp and spec.policy.rollout == "vllm":
            problems.append(
                "policy.fsdp: not with rollout: vllm (the engine's weight sync needs the whole "
                "weights; not implemented); use fsdp: false or rollout: transformers"
            )
    return list(dict.fromkeys(problems))


def rank_memory(spec: RunSpec, params: float | None, nproc: int) -> float | None:
    """Rough peak bytes of one rank's model state when ``spec`` runs on ``nproc`` ranks: weights,
    gradients, AdamW's two moments, and the whole reference / EMA-teacher copies; None when the
    parameter count is unknown. Activations are not counted: a micro-batch's
    (``train.micro_batch_size`` rows) are the same on every rank whatever ``nproc``.

    Data parallel: everything whole on every rank. FSDP2 (``policy.fsdp``) as implemented: the
    moments ÷ nproc; weights and gradients whole during the step (gathered for rollout and
    update, accumulated whole until reduce-scattered) plus the weights' own shard at rest.
    """
    import torch

    if params is None:
        return None
    width = 4 if spec.policy.resolved_dtype() == torch.float32 else 2
    method = get_method_class(spec.method)
    trainable = params if method.trains and spec.policy.lora is None else 0.0
    weights, grads, moments = params * width, trainable * width, 2 * trainable * width
    copies = 0.0
    if method.trains and spec.policy.lora is None:
        copies += weights  # the reference policy (KL); a frozen teacher shares it
        if spec.method_params.get("teacher") == "ema":
            copies += weights
    if nproc > 1 and spec.policy.fsdp:
        return weights + weights / nproc + grads + moments / nproc + copies
    return weights + grads + moments + copies


def _writable(folder: Path) -> str | None:
    """None when ``folder`` (or its nearest existing parent) accepts a file."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe):
            return None
    except OSError as exc:
        return f"results folder {folder} is not writable ({exc.strerror}); pass --results DIR"


def preflight(
    suite: SuiteSpec, results: Path, needs_gpu_ok: bool | None = None, uri: str | None = None
) -> list[str]:
    """One line per problem that would stop a run of ``suite``; empty when all is set.

    ``needs_gpu_ok``: whether runs that need a GPU can get one (None: is one visible here);
    ``uri``: the MLflow tracking URI the runs will log to, checked when it is a server.
    """
    problems: list[str] = []
    if (problem := _writable(results)) is not None:
        problems.append(problem)
    if needs_gpu_ok is None:
        import torch

        needs_gpu_ok = torch.cuda.is_available()
    for plan in plan_suite(suite, results):
        if plan.state == "finished":
            continue
        if not plan.model.present:
            problems.append(
                f"models: {plan.model.name} is not on this machine ({plan.model.where}); "
                f"get it with `{plan.model.how_to_get}` or remove it from the suite"
            )
        if not plan.data_ok:
            problems.extend(plan.data_problems or [plan.data])
        if plan.model.needs_gpu and not needs_gpu_ok and plan.model.present:
            problems.append(
                f"models: {plan.model.name} needs a GPU and none is visible; "
                "run it on a GPU machine (or a Ray cluster with GPUs)"
            )
        if plan.spec.policy.rollout == "vllm":
            from sdar_bench.policy.vllm_backend import vllm_problem

            if (problem := vllm_problem(cuda=needs_gpu_ok)) is not None:
                problems.append(problem)
    for url in dict.fromkeys(_retriever_urls(suite)):
        problems += _retriever_problem(url)
    if uri:
        problems += _tracking_problem(uri)
    return list(dict.fromkeys(problems))


def _retriever_urls(suite: SuiteSpec) -> list[str]:
    return [
        str(spec.env_params["retriever_url"])
        for spec in suite.expand()
        if spec.env == "searchqa"
        and spec.env_params.get("retriever") == "http"
        and spec.env_params.get("retriever_url")
    ]


def _retriever_problem(url: str) -> list[str]:
    """A Search-R1 retrieval server must accept connections before a run queries it."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=3):
            return []
    except OSError as exc:
        return [
            f"searchqa: the retrieval server {url} does not answer ({exc.strerror or exc}); "
            "start Search-R1's retrieval server there or change env_params.searchqa.retriever_url"
        ]


def _tracking_problem(uri: str) -> list[str]:
    """An http(s) tracking server must answer before the first run logs to it."""
    if not uri.startswith(("http://", "https://")):
        return []
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)  # noqa: S310
    except OSError as exc:
        return [
            f"tracking URI {uri} does not answer ({exc}); start the server, or pass another "
            "--tracking-uri, or --no-mlflow"
        ]
    return []
