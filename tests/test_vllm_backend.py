"""The vLLM rollout backend (``policy: {rollout: vllm}``).

Without a CUDA GPU and the vllm extra, the plumbing is tested against a fake engine that stands
in for ``vllm.LLM`` at the GPU boundary (the tests say so in their names): what the backend asks
of the engine, what it returns, which weights it hands over and when it sleeps and wakes. The
test that runs real vLLM is skipped on such machines with the reason, never faked.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from sdar_bench.checkpoint import load_checkpoint, save_checkpoint
from sdar_bench.cli import app
from sdar_bench.config import EvalSpec, RunSpec, SpecError, TrainSpec, WarmStartSpec, load_suite
from sdar_bench.envs import make_env
from sdar_bench.plan import plan_suite, preflight
from sdar_bench.policy import LoraOptions, PolicyOptions, VLLMOptions, load_policy, vllm_backend
from sdar_bench.policy.backend import TransformersBackend, make_backend
from sdar_bench.policy.errors import RolloutUnavailable
from sdar_bench.policy.scoring import response_logprobs
from sdar_bench.policy.vllm_backend import VLLMBackend, logprob_gaps, trainer_weights
from sdar_bench.trainer import setup, train_step

VLLM_OPTIONS = PolicyOptions(rollout="vllm", device="cpu")


# After a sleep: wake the weight memory, load the weights, wake the KV cache, drop stale prefix
# cache entries, then sample (the documented RLHF order).
WAKE_SYNC_GENERATE = [
    "sleep(2)",
    "wake_up(weights)",
    "load",
    "wake_up(kv_cache)",
    "reset_prefix_cache",
    "generate",
]


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class FakeEngine:
    """``vllm.LLM`` at the GPU boundary: records each call in ``calls``; ``generate`` answers
    each prompt with its last two ids and EOS, with log-probs -0.5, -1.0, -1.5; weights reach a
    fake worker through the real worker extension and land in ``loaded``."""

    instances: list[FakeEngine] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.params: list[FakeSamplingParams] = []
        self.loaded: dict[str, torch.Tensor] = {}
        module, _, name = kwargs["worker_extension_cls"].rpartition(".")
        extension = getattr(importlib.import_module(module), name)
        self.worker = type("FakeWorker", (extension,), {})()
        self.worker.model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load))
        FakeEngine.instances.append(self)

    def _load(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.calls.append("load")
        self.loaded.update({name: tensor.detach().clone() for name, tensor in weights})

    def generate(
        self, prompts: list[dict[str, list[int]]], params: list[FakeSamplingParams], use_tqdm=True
    ) -> list[SimpleNamespace]:
        self.calls.append("generate")
        self.params.extend(params)
        outputs = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = (prompt["prompt_token_ids"][-2:] + p.stop_token_ids)[: p.max_tokens]
            logprobs = [{t: SimpleNamespace(logprob=-0.5 * (k + 1))} for k, t in enumerate(ids)]
            outputs.append(
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs)])
            )
        return outputs

    def collective_rpc(self, method: str, timeout=None, args=(), kwargs=None) -> list[Any]:
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(f"wake_up({','.join(tags or [])})")

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeEngine]:
    """A fake ``vllm`` module and a CUDA device that the backend believes in; nothing else."""
    module = types.ModuleType("vllm")
    module.LLM = FakeEngine  # type: ignore[attr-defined]
    module.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(vllm_backend, "cuda_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    FakeEngine.instances.clear()
    return FakeEngine


def _equal_weights(loaded: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    state = model.state_dict()
    return set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


def test_vllm_backend_plumbing_with_a_fake_engine_no_gpu(fake_vllm) -> None:
    policy = load_policy("tiny-qwen-1m", env="alfworld", options=VLLM_OPTIONS)
    backend = make_backend(policy)
    assert isinstance(backend, VLLMBackend)
    (engine,) = fake_vllm.instances
    assert engine.kwargs == {
        "model": str(policy.model.name_or_path),
        "dtype": "float32",
        "gpu_memory_utilization": 0.3,
        "enable_sleep_mode": True,
        "enforce_eager": False,
        "skip_tokenizer_init": True,
        "logprobs_mode": "raw_logprobs",
        "worker_extension_cls": "sdar_bench.policy.vllm_backend.WeightLoader",
    }
    # Built from the checkpoint on disk, then given the trainer's weights: every tensor, equal.
    assert engine.calls == ["load"] and _equal_weights(engine.loaded, policy.model)

    eos = policy.eos_id
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9]]
    responses = backend.generate(prompts, 4, 1.0, generator_seed=11)
    assert responses == [[6, 7, eos], [6, 7, eos], [8, 9, eos]]
    assert backend.last_logprobs == [[-0.5, -1.0, -1.5]] * 3
    params = engine.params
    for p in params:
        assert (p.temperature, p.top_p, p.top_k, p.max_tokens) == (1.0, 1.0, 0, 4)
        assert (p.logprobs, p.stop_token_ids, p.detokenize) == (0, [eos], False)
    assert len({p.seed for p in params}) == 3  # copies of one prompt sample independently
    backend.generate(prompts, 4, 1.0, generator_seed=11)
    assert [p.seed for p in engine.params[3:]] == [p.seed for p in params[:3]]
    assert engine.calls == ["load", "reset_prefix_cache", "generate", "generate"]

    # Training: the engine sleeps once, the update's weights go over, the next rollout wakes it.
    engine.calls.clear()
    backend.sleep()
    backend.sleep()
    with torch.no_grad():
        policy.model.model.norm.weight.add_(0.25)
    backend.sync_weights()
    assert _equal_weights(engine.loaded, policy.model)
    backend.generate(prompts, 4, 1.0, generator_seed=12)
    assert engine.calls == WAKE_SYNC_GENERATE
    # A step whose updates were all skipped never syncs: the next rollout reloads the weights.
    engine.calls.clear()
    backend.sleep()
    backend.generate(prompts, 4, 1.0, generator_seed=13)
    assert engine.calls == WAKE_SYNC_GENERATE


def test_vllm_backend_without_sleep_keeps_its_memory_with_a_fake_engine_no_gpu(fake_vllm) -> None:
    options = VLLM_OPTIONS.model_copy(update={"vllm": VLLMOptions(sleep=False)})
    policy = load_policy("tiny-qwen-1m", env="alfworld", options=options)
    backend = make_backend(policy)
    (engine,) = fake_vllm.instances
    assert engine.kwargs["enable_sleep_mode"] is False
    backend.sleep()
    backend.sync_weights()
    backend.generate([[5, 6]], 2, 0.0, generator_seed=0)
    # The prefix cache still goes: its prompt KV came from the old weights.
    assert engine.calls == ["load", "load", "reset_prefix_cache", "generate"]


def test_trainer_syncs_once_per_step_and_on_resume_with_a_fake_engine_no_gpu(
    fake_vllm, tmp_path: Path
) -> None:
    spec = RunSpec(
        model="tiny-qwen-1m",
        env="alfworld",
        env_params={"max_turns": 2},
        method="grpo",
        train=TrainSpec(steps=1, tasks_per_step=2, group_size=2, lr=1e-3, max_new_tokens=4),
        eval=EvalSpec(every=1, panel=2),
        warmstart=WarmStartSpec(enabled=False),
        policy=VLLM_OPTIONS,
    )
    policy = load_policy(
        spec.model, spec.train.max_prompt_tokens, env=spec.env, options=spec.policy
    )
    initial = copy.deepcopy(policy.model.state_dict())
    state = setup(spec, policy)
    (engine,) = fake_vllm.instances
    assert engine.calls == ["load"]

    metrics = train_step(state, 0)
    assert metrics["nonfinite/skipped"] == 0
    turns = engine.calls.count("generate")
    assert turns == 2  # max_turns: the echoed words never parse, so no episode ends early
    assert engine.calls == [
        "load",
        "reset_prefix_cache",
        *["generate"] * turns,
        "sleep(2)",  # the rollout is over: scoring and the update get the memory
        "wake_up(weights)",
        "load",  # one sync after the step's update
    ]
    assert _equal_weights(engine.loaded, policy.model)
    assert any(not torch.equal(initial[k], v) for k, v in engine.loaded.items())

    save_checkpoint(state, 1, tmp_path)
    with torch.no_grad():
        policy.model.model.norm.weight.zero_()
    engine.calls.clear()
    assert load_checkpoint(state, tmp_path) == 1
    assert engine.calls == ["load"] and _equal_weights(engine.loaded, policy.model)


def test_lora_weights_reach_the_engine_merged() -> None:
    pytest.importorskip("peft")
    options = PolicyOptions(device="cpu", lora=LoraOptions(r=4, alpha=8))
    policy = load_policy("tiny-qwen-1m", env="alfworld", options=options)
    torch.manual_seed(0)
    with torch.no_grad():  # B = 0 at the start would hide an unmerged adapter
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1)
    expected = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    pushed = dict(trainer_weights(policy.model))
    assert set(pushed) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(pushed[key], value, atol=1e-6), key
    q = "model.layers.0.self_attn.q_proj.weight"
    base = policy.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(pushed[q], base)  # the adapter is in, and the trainer's base is not
    assert "lora_B" not in " ".join(pushed)


def test_logprob_gaps_compare_token_by_token() -> None:
    trainer = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    gaps = logprob_gaps([[-1.25, -2.0], [-0.25]], trainer)
    assert gaps.tolist() == [0.25, 0.0, 0.25]


def _suite_file(tmp_path: Path, policy: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(
        "name: vllm\nmodels: [tiny-qwen-1m]\nenvs: [alfworld]\nmethods: [grpo]\n"
        f"warmstart: {{enabled: false}}\npolicy: {policy}\n"
    )
    return path


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("{rollout: vlm}", "policy.rollout"),
        (
            "{rollout: vllm, vllm: {gpu_memory_utilization: 1.5}}",
            "policy.vllm.gpu_memory_utilization",
        ),
        ("{vllm: {sleeps: true}}", "policy.vllm.sleeps"),
    ],
)
def test_bad_rollout_options_are_refused_in_one_line(
    tmp_path: Path, policy: str, field: str
) -> None:
    with pytest.raises(SpecError) as info:
        load_suite(_suite_file(tmp_path, policy))
    assert field in str(info.value) and "\n" not in str(info.value)


def test_preflight_names_what_a_vllm_rollout_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = load_suite(_suite_file(tmp_path, "{rollout: vllm}"))
    results = tmp_path / "results"
    (plan,) = plan_suite(suite, results)
    assert plan.needs_gpu  # a tiny model, but its rollouts need the GPU
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert preflight(suite, results, needs_gpu_ok=True) == [
        "policy.rollout: vllm needs the vllm extra, which is not installed: "
        "`pip install sdar-bench[vllm]` on a machine with a CUDA GPU, or use rollout: transformers"
    ]
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    assert preflight(suite, results, needs_gpu_ok=False) == [
        "policy.rollout: vllm needs a CUDA GPU and none is visible; "
        "use rollout: transformers on this machine"
    ]
    assert preflight(suite, results, needs_gpu_ok=True) == []
    default = load_suite(_suite_file(tmp_path, "{}"))
    assert preflight(default, results, needs_gpu_ok=False) == []


def test_run_refuses_a_vllm_rollout_here_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pre-flight let a vllm rollout through on a machine without vllm")

    monkeypatch.setattr("sdar_bench.suite.run_suite", refuse)
    path = _suite_file(tmp_path, "{rollout: vllm}")
    result = CliRunner().invoke(app, ["run", str(path), "-o", str(tmp_path / "r"), "--no-mlflow"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: policy.rollout: vllm needs the vllm extra")
    with pytest.raises(RolloutUnavailable, match="policy.rollout: vllm needs the vllm extra"):
        make_backend(load_policy("tiny-qwen-1m", env="alfworld", options=VLLM_OPTIONS))


def test_the_default_rollout_is_transformers_and_keeps_run_ids(tiny_policy) -> None:
    assert isinstance(make_backend(tiny_policy), TransformersBackend)
    spec = RunSpec(model="tiny-qwen-1m", env="alfworld", method="grpo")
    assert spec.policy.rollout == "transformers"
    assert spec.run_id != spec.model_copy(update={"policy": VLLM_OPTIONS}).run_id
    assert (
        spec.run_id
        == spec.model_copy(update={"policy": PolicyOptions(vllm=VLLMOptions(sleep=False))}).run_id
    )


_GPU_PROBLEM = vllm_backend.vllm_problem()


@pytest.mark.skipif(
    _GPU_PROBLEM is not None,
    reason=f"needs a CUDA GPU and the vllm extra (none on this machine: {_GPU_PROBLEM})",
)
def test_vllm_rollouts_agree_with_the_trainer_and_follow_its_updates() -> None:
    """Real vLLM on a GPU: sampled ids, log-probs within tolerance of the trainer's, seeded
    repeats, and an update that reaches the engine through sleep → sync → generate."""
    options = PolicyOptions(rollout="vllm", device="cuda", vllm=VLLMOptions(enforce_eager=True))
    policy = load_policy("tiny-qwen-1m", env="alfworld", options=options)
    backend = make_backend(policy)
    env = make_env("alfworld")
    prompts = [
        policy.encoder.encode(env.render_prompt(task, [], env.new_game(task).reset(), 0))
        for task in env.panel(4)
    ] * 2  # copies of each prompt, as a task's G first turns

    def agreement(responses: list[list[int]]) -> torch.Tensor:
        logp, _, _ = response_logprobs(policy.model, prompts, responses, policy.pad_id)
        return logprob_gaps(backend.last_logprobs, logp)

    with torch.no_grad():
        sampled = backend.generate(prompts, 16, 1.0, generator_seed=0)
        for ids, lps in zip(sampled, backend.last_logprobs, strict=True):
            assert len(ids) == len(lps) and 1 <= len(ids) <= 16
            assert policy.eos_id not in ids[:-1]
            assert len(ids) == 16 or ids[-1] == policy.eos_id  # EOS is kept, as transformers does
        assert agreement(sampled).max().item() < 1e-3  # float32 on both sides
        assert backend.generate(prompts, 16, 1.0, generator_seed=0) == sampled

        greedy = backend.generate(prompts, 16, 0.0, generator_seed=0)
        before = backend.last_logprobs
        backend.sleep()
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        backend.sync_weights()
        after = backend.generate(prompts, 16, 0.0, generator_seed=0)
        assert after != greedy or backend.last_logprobs != before
        assert agreement(after).max().item() < 1e-3  # the engine serves the updated weights
