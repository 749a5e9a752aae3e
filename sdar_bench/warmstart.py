"""Supervised warm start for tiny models, with TRL's ``SFTTrainer`` on expert trajectories.

A model trained from scratch cannot find a rewarded action by sampling alone, and its
skill-conditioned teacher is only as good as its data makes it. So the warm start plays the
engine's expert with a share of random actions, and that share differs between episodes that
show the skill block (``noise_with_skills``) and those that do not (``noise_without_skills``):
the gap between the two is the explicit "teacher quality" knob of SPEC §4. The result is cached
by (model, env, env settings, warm-start settings, seed) and shared by every method of a suite.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sdar_bench.config import RunSpec, WarmStartSpec
from sdar_bench.envs.base import Env, task_seed
from sdar_bench.locking import warmstart_lock
from sdar_bench.paths import cache_dir
from sdar_bench.skills import make_retriever

if TYPE_CHECKING:
    from sdar_bench.policy.model import Policy

WARMSTART_SPLIT = "warmstart"  # its own split: never overlaps the train stream or the eval panel
RESUMED_FILE = "resumed.json"  # in a trained warm start: the steps a killed training resumed at


def expert_samples(
    env: Env, policy: Policy, spec: WarmStartSpec, seed: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) for every turn of ``spec.episodes`` noisy expert episodes."""
    retriever = make_retriever(env.name, "keyword")
    samples = []
    mix = env
    for i in range(spec.episodes):
        rng = random.Random(task_seed("warmstart", seed, i))
        task = mix.task(WARMSTART_SPLIT, i)
        env = mix.for_task(task)  # a multitask mix: the task's own env (its rules and limits)
        with_skills = rng.random() < spec.skill_share
        noise = spec.noise_with_skills if with_skills else spec.noise_without_skills
        skill_text = retriever.retrieve(task) if with_skills else None
        game = env.new_game(task)
        observation = game.reset()
        history: list[tuple[str, str]] = []
        for turn in range(env.params.max_turns):
            if observation.done:
                break
            action = game.expert_action()
            if action is None:
                break
            if rng.random() < noise:
                action = env.random_action(game, rng, observation) or action
            prompt = env.render_prompt(
                task, history[len(history) - env.params.history_length :], observation, turn
            )
            response = env.format_response(action, env.expert_thought(game, action))
            response_ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
            samples.append(
                (policy.encoder.encode(prompt, skill_text), [*response_ids, policy.eos_id])
            )
            history.append((observation.text, action))
            observation = game.step(action)
    return samples


def warmstart_key(spec: RunSpec, model_dir: str) -> str:
    ws = spec.warmstart
    seed = spec.seed if ws.seed is None else ws.seed
    # the model directory's name carries its content hash; its location must not matter
    payload = [
        Path(model_dir).name,
        spec.env,
        spec.env_params,
        ws.model_dump(exclude={"seed"}),
        seed,
    ]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


SHIPPED = Path(__file__).parent / "data" / "warmstart"


def checkpoint_name(spec: RunSpec, model_dir: str) -> str:
    return f"{Path(model_dir).name}-{warmstart_key(spec, model_dir)}"


def find_warm_start(spec: RunSpec, model_dir: str) -> Path | None:
    """The warm start of ``spec`` shipped with the package or cached on this machine, if any."""
    name = checkpoint_name(spec, model_dir)
    for found in (SHIPPED / name, cache_dir() / "warmstart" / name):
        if (found / "config.json").exists():
            return found
    return None


def warm_start(
    policy: Policy,
    env: Env,
    spec: RunSpec,
    model_dir: str,
    callbacks: list[Any] | None = None,
) -> tuple[Path, bool]:
    """Train ``policy`` in place, or find the result shipped with the package or cached on this
    machine; returns (checkpoint directory, whether it was found rather than trained).

    ``callbacks`` are ``transformers.TrainerCallback`` objects (progress display, evaluation).
    """
    found = find_warm_start(spec, model_dir)
    if found is not None:
        return found, True
    partial = partial_dir(spec, model_dir)  # a killed warm start resumes from the last checkpoint
    path = partial.with_suffix("")  # where the finished warm start goes
    with warmstart_lock(partial):
        found = find_warm_start(spec, model_dir)  # another process may have finished it
        if found is not None:
            return found, True
        resumed = _train(policy, env, spec, partial, callbacks)
        tmp = path.with_name(f"{path.name}.tmp{random.randrange(1 << 30)}")
        policy.model.save_pretrained(tmp)
        policy.tokenizer.save_pretrained(tmp)
        # Provenance: transformers draws each epoch's order from the global RNG when the epoch
        # starts, so a resume that crosses an epoch boundary is not bit-identical to a run that
        # never stopped (within an epoch it is: tested).
        (tmp / RESUMED_FILE).write_text(json.dumps({"resumed_at_steps": resumed}) + "\n")
        tmp.rename(path)
        shutil.rmtree(partial, ignore_errors=True)
    return path, False


def _train(
    policy: Policy, env: Env, spec: RunSpec, partial: Path, callbacks: list[Any] | None
) -> list[int]:
    """SFT ``policy`` in place on expert episodes, saving a resumable checkpoint in ``partial``
    every tenth of the steps and resuming from the last one found there; returns the steps it
    was resumed at, this time and earlier."""
    from datasets import Dataset  # TRL and datasets are slow to import: only when training
    from trl import SFTConfig, SFTTrainer

    ws = spec.warmstart
    seed = spec.seed if ws.seed is None else ws.seed

    samples = expert_samples(env, policy, ws, seed)
    dataset = Dataset.from_dict(
        {
            "input_ids": [p + r for p, r in samples],
            "completion_mask": [[0] * len(p) + [1] * len(r) for p, r in samples],
        }
    )
    partial.mkdir(parents=True, exist_ok=True)
    args = SFTConfig(
        output_dir=str(partial),
        max_steps=ws.steps,
        per_device_train_batch_size=ws.batch_size,
        learning_rate=ws.lr,
        lr_scheduler_type="cosine",  # decaying at the end consolidates what was learnt
        warmup_steps=min(20, ws.steps // 10),
        weight_decay=0.0,
        logging_steps=max(ws.steps // 10, 1),
        save_strategy="steps",
        save_steps=max(ws.steps // 10, 1),
        save_total_limit=1,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # TRL defaults to bf16; autocast on a CPU without bf16 units is ~7x slower
        train_sampling_strategy="group_by_length",  # less padding: prompts vary from ~100 to ~350 tokens
        completion_only_loss=not ws.prompt_loss,
        max_length=None,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=policy.model,
        args=args,
        train_dataset=dataset,
        processing_class=policy.tokenizer,
        callbacks=callbacks,
    )
    last = _last_complete_checkpoint(partial)
    history = partial / RESUMED_FILE
    resumed: list[int] = json.loads(history.read_text()) if history.exists() else []
    if last is not None:
        resumed.append(int(last.rsplit("-", 1)[-1]))
        history.write_text(json.dumps(resumed))
    trainer.train(resume_from_checkpoint=last)
    return resumed


def partial_dir(spec: RunSpec, model_dir: str) -> Path:
    """Where the Trainer checkpoints of an unfinished warm start of ``spec`` go."""
    return cache_dir() / "warmstart" / f"{checkpoint_name(spec, model_dir)}.partial"


def _checkpoints(partial: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every ``checkpoint-<step>`` in ``partial``, oldest first."""
    found = [(d.name.rsplit("-", 1)[-1], d) for d in partial.glob("checkpoint-*")]
    return sorted((int(step), d) for step, d in found if step.isdigit())


def _complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint`` (it writes its state file last)."""
    return (checkpoint / "trainer_state.json").exists()


def resume_step(spec: RunSpec, model_dir: str) -> int:
    """The step an unfinished warm start of ``spec`` would resume at on this machine (0: none)."""
    done = _checkpoints(partial_dir(spec, model_dir))
    return max((step for step, d in done if _complete(d)), default=0)


def _last_complete_checkpoint(partial: Path) -> str | None:
    """The newest checkpoint in ``partial`` that the Trainer finished writing; a torn one, from
    a process killed while saving, is removed."""
    done = [d for _, d in _checkpoints(partial)]
    while done and not _complete(done[-1]):
        shutil.rmtree(done.pop(), ignore_errors=True)
    return str(done[-1]) if done else None
