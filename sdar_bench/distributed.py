"""One run over several processes: process groups, rank helpers, reductions and FSDP2.

Everything here is a thin use of ``torch.distributed``; nothing of sdar-bench is imported, so
the trainer, the checkpoint code and the launchers all build on it (README, "Scale").

* **Ranks.** A run with ``--nproc N`` (or under ``torchrun``) has N processes, one per device
  on a GPU machine, all on the CPU otherwise. Every helper works in a plain single process
  too (world 1, rank 0), where it does nothing and returns its input: the trainer has one code
  path and one process keeps every number it had before.
* **Backend.** gloo on the CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``). The process
  group's ``timeout`` bounds every collective, so a rank that stops answering ends the run
  with an error instead of a hang (the launcher also tears every rank down when one dies).
* **Data parallel.** Each rank computes the gradient of its share of the step's token-mean
  loss; :func:`all_reduce_gradients` sums them, so every rank holds the gradient of the whole
  batch and takes the same optimiser step.
* **FSDP2** (``policy: {fsdp: true}``): :func:`shard_model` applies ``fully_shard`` to every
  decoder layer and the root, so parameters, gradients and optimiser state are sharded at
  rest. A step's rollout, scoring and update run inside :func:`gathered` (the parameters
  all-gathered once, kept whole, no collective inside), because ranks play episodes of
  different lengths and run different numbers of forward passes: per-layer collectives in
  those passes would not pair up. The update accumulates gradients without communication and
  :func:`reduce_sharded_gradients` reduce-scatters them in one pass that every rank runs alike.
* **Checkpoints** keep one format: full (unsharded) state dicts written by rank 0, readable by
  a single process (:func:`full_state_dicts`, :func:`load_full_state_dicts`).
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

TIMEOUT_S = 1800
"""Default limit of one collective (and of joining the group), in seconds: a rank that has not
answered after this long is taken for dead and the run fails. Generous because a step's
rollout and update run between two collectives; ``--dist-timeout`` changes it."""

FAULT_INJECTION_ENV = "SDAR_BENCH_FAULT_INJECTION_KILL_RANK"
"""Fault injection for tests: ``"R:S"`` makes rank R exit at once (exit code 1, no cleanup,
as a killed process) when it is about to train step S (1-based)."""


def active() -> bool:
    """Whether this process is one rank of several."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the one rank that writes the run's files and logs."""
    return rank() == 0


def share(n: int) -> list[int]:
    """This rank's indices of ``n`` items: ``rank, rank + world, …`` (whole task groups, so a
    group's advantage needs no other rank)."""
    return list(range(rank(), n, world()))


def backend_name() -> str:
    """nccl where CUDA is available, gloo on the CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def device() -> torch.device:
    """Where this rank's collective tensors live (nccl reduces CUDA tensors only)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env(timeout_s: float = TIMEOUT_S) -> None:
    """Join the process group that ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` describe (torchrun sets them; so does :func:`spawn_env`). On CUDA the rank
    takes ``cuda:LOCAL_RANK`` first, so that ``device: auto`` and vLLM land on its own GPU."""
    backend = backend_name()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def spawn_env(rank_: int, world_: int, port: int) -> None:
    """The variables ``init_from_env`` reads, for rank ``rank_`` of ``world_`` on this machine."""
    os.environ.update(
        RANK=str(rank_),
        LOCAL_RANK=str(rank_),
        WORLD_SIZE=str(world_),
        LOCAL_WORLD_SIZE=str(world_),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the env)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of locally spawned ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks (a new tensor on the CPU; ``values`` itself in one
    process, so its numbers stay bit for bit)."""
    if not active():
        return values
    out = values.detach().to(device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def all_max(values: torch.Tensor) -> torch.Tensor:
    """``values`` maximised over the ranks (``values`` itself in one process)."""
    if not active():
        return values
    out = values.detach().to(device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out.cpu()


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process). For small
    picklable things: episode outcomes, per-sample diagnostics."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place (a missing gradient counts as
    zero). Each rank's gradient is of its share of the global token-mean loss, so the sum is
    the gradient of the whole batch. One collective per tensor, all in flight at once."""
    if not active():
        return
    works = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        works.append(dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True))
    for work in works:
        work.wait()


def fault_point(step: int) -> None:
    """Fault injection (tests only): exit like a killed process where ``FAULT_INJECTION_ENV``
    names this rank and ``step`` (1-based)."""
    spec = os.environ.get(FAULT_INJECTION_ENV)
    if not spec:
        return
    victim, at = (int(x) for x in spec.split(":"))
    if rank() == victim and step == at:
        os._exit(1)


# ---- FSDP2 ---------------------------------------------------------------------------------


def _fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(_fsdp_modules(model))


def shard_model(model: torch.nn.Module) -> None:
    """``fully_shard`` every decoder layer (the classes transformers lists in
    ``_no_split_modules``) and then the root, in place, over all ranks.

    Gradients are summed, not averaged (divide factor 1): each rank's loss is already its share
    of the global token mean. Parameters stay whole after forward and backward: the trainer
    gathers them once per phase (:func:`gathered`) and reshards them itself.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device().type, (world(),))
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"policy.fsdp: {type(model).__name__} names no decoder layer class "
            "(_no_split_modules); use fsdp: false"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in _fsdp_modules(model):
        module.set_gradient_divide_factor(1.0)  # type: ignore[operator]
        # plain SUM collectives: gloo has no PREMUL_SUM (a custom factor's default), and NCCL
        # copies zero-copy only for SUM
        module.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    model.set_reshard_after_forward(False)  # type: ignore[operator]
    model.set_reshard_after_backward(False)  # type: ignore[operator]


def unshard(model: torch.nn.Module | None) -> None:
    """Gather a sharded model's parameters whole on every rank (one all-gather per sharded
    module) until :func:`reshard`; a plain model is left alone. Every rank must call it.

    While whole, forward passes need no collective, so ranks may run different numbers of
    them (episodes of different lengths, micro-batches of different shapes).
    """
    for module in _fsdp_modules(model) if model is not None else []:
        module.unshard()  # type: ignore[operator]


def reshard(model: torch.nn.Module | None) -> None:
    """Free the whole parameters :func:`unshard` gathered; the sharded ones stay."""
    for module in _fsdp_modules(model) if model is not None else []:
        module.reshard()  # type: ignore[operator]


@contextmanager
def gathered(model: torch.nn.Module | None) -> Iterator[None]:
    """:func:`unshard` for the block, :func:`reshard` after it."""
    unshard(model)
    try:
        yield
    finally:
        reshard(model)


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` whose norm is of the whole gradient, also when it is sharded (FSDP2
    gives a DTensor; every rank must call it then)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def local_accumulation(model: torch.nn.Module, on: bool) -> None:
    """Backward passes keep their gradients on this rank (``on``) or reduce-scatter them."""
    if is_sharded(model):
        model.set_requires_gradient_sync(not on)  # type: ignore[operator]


def reduce_sharded_gradients(model: torch.nn.Module, pad_id: int) -> None:
    """Reduce-scatter the gradients that the update accumulated on each rank (FSDP2).

    FSDP2 reduces in the backward hooks of its modules; a rank's micro-batches run each
    module a data-dependent number of times (a shared prompt's cache is a second pass), so the
    reduction runs in one extra backward that is the same on every rank: a one-token forward
    whose loss is multiplied by 0. It adds nothing to the gradients and carries the
    accumulated ones through each module's hook once.
    """
    if not is_sharded(model):
        return
    local_accumulation(model, False)
    ids = torch.full((1, 1), pad_id, dtype=torch.long, device=device())
    out = model(input_ids=ids, use_cache=False)
    (out.logits.float().sum() * 0.0).backward()


def sum_gradients(
    model: torch.nn.Module, params: Sequence[torch.nn.Parameter], pad_id: int
) -> None:
    """After a rank's backward passes of one mini-batch: every rank holds the gradient summed
    over the ranks (all-reduced), or its shard of it (FSDP2: reduce-scattered, and the
    parameters :func:`unshard` gathered are freed). Every rank must call it."""
    if is_sharded(model):
        reduce_sharded_gradients(model, pad_id)
        reshard(model)
    else:
        all_reduce_gradients(params)


def full_state_dicts(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model's and optimiser's full state dicts on rank 0 (CPU tensors), in the format a
    single process writes (``state_dict()``: parameters by name, optimiser state by index);
    every rank must call it. Other ranks get empty dicts. A plain model: its own state dicts."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    if optimizer is None:
        return weights, None
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    return weights, _by_index(by_name) if by_name else {}


def load_full_state_dicts(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    weights: dict[str, Any],
    optim_state: dict[str, Any] | None,
) -> None:
    """Load full state dicts (``full_state_dicts``' format) into a plain or sharded model; every
    rank passes the same dicts and must call it."""
    if not is_sharded(model):
        model.load_state_dict(weights)
        if optimizer is not None and optim_state is not None:
            optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    if optimizer is not None and optim_state is not None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        set_optimizer_state_dict(model, optimizer, _by_name(optim_state, names), options=options)


def _by_index(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict keyed by parameter name (``get_optimizer_state_dict``) in
    ``Optimizer.state_dict``'s layout: parameters numbered in their order in the groups."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index.setdefault(name, len(index))
            ids.append(index[name])
        groups.append({**group, "params": ids})
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": groups}


def _by_name(state: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``_by_index`` undone: ``names`` are the optimiser's parameters in their order."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[int(i)]: v for i, v in state["state"].items()}, "param_groups": groups}
