"""Each loss term's gradient norm (issue 14's regime diagnostics): what the auxiliary term
contributes to an update, measured on the same rows as the policy gradient."""

from __future__ import annotations

import math

import pytest
import torch

from sdar_bench.config import RunSpec, TrainSpec
from sdar_bench.objectives import term_grad_norms
from sdar_bench.registry import get_method
from sdar_bench.token_view import TokenView


def test_term_grad_norms_by_hand() -> None:
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    terms = {"a": 2 * w.sum(), "b": (w**2).sum(), "c": torch.tensor(3.0)}
    norms = term_grad_norms(terms, [w])
    assert norms["grad/a"] == pytest.approx(math.sqrt(8))  # ∇ = (2, 2)
    assert norms["grad/b"] == pytest.approx(math.sqrt(20))  # ∇ = 2w = (2, 4)
    assert norms["grad/c"] == 0.0  # a constant term moves nothing
    assert norms["grad/terms"] == pytest.approx(math.sqrt(52))  # ∇ of the sum = (4, 6)
    assert w.grad is None  # nothing accumulated: the update's own backward comes after
    (terms["a"] + terms["b"]).backward()  # and the graph is still there for it
    assert w.grad.tolist() == [4.0, 6.0]


def test_every_training_method_splits_its_loss_into_terms_that_sum_to_it() -> None:
    """``loss`` is the sum of ``loss_terms``; GRPO's terms are pg, kl and entropy, SDAR adds
    aux = λ·Agg(g·(teach − logp))."""
    g = torch.Generator().manual_seed(0)
    B, T = 3, 4
    logp = torch.randn(B, T, generator=g).clamp(max=-0.1).requires_grad_()
    view = TokenView(
        mask=torch.ones(B, T),
        logp=logp,
        old_logp=logp.detach() + 0.05,
        ref_logp=logp.detach() - 0.1,
        teacher_logp=logp.detach() + 0.2,
        entropy=torch.rand(B, T, generator=g) + 0.5,
        advantages=torch.randn(B, T, generator=g),
        vocab_size=11,
    )
    for name, expected in [
        ("grpo", ["pg", "kl", "entropy"]),
        ("sdar", ["pg", "kl", "entropy", "aux"]),
        ("opsd", ["aux", "kl", "entropy"]),
    ]:
        method = get_method(name)
        terms, _ = method.loss_terms(view)
        assert list(terms) == expected, name
        loss, _ = method.loss(view)
        assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), abs=1e-7)
    sdar = get_method("sdar", coef=0.5)
    terms, metrics = sdar.loss_terms(view)
    assert terms["aux"].item() == pytest.approx(0.5 * metrics["loss/aux"], rel=1e-6)
    with pytest.raises(NotImplementedError):
        get_method("vanilla").loss_terms(view)


def test_a_training_step_logs_each_terms_gradient_norm_and_trains_the_same(
    tiny_sdar_step,
) -> None:
    one, policy_one = tiny_sdar_step({"coef": 0.01, "beta": 5.0}, term_norms_every=1)
    double, _ = tiny_sdar_step({"coef": 0.02, "beta": 5.0}, term_norms_every=1)
    off, policy_off = tiny_sdar_step({"coef": 0.01, "beta": 5.0}, term_norms_every=0)
    params_one = list(policy_one.model.parameters())
    params_off = list(policy_off.model.parameters())
    for key in ("grad/entropy", "grad/aux", "grad/terms"):
        assert one[key] > 0, key
    # Before the first update the policy is its reference: the k3 KL's gradient, e^x − 1 at
    # x = ref − logp = 0, is exactly 0
    assert one["grad/kl"] == 0.0
    for key in ("grad/pg", "grad/kl", "grad/entropy", "grad/aux", "grad/terms"):
        assert key not in off, key
    # The untrained model's copies of a task all fare alike (within-group reward std 0): every
    # advantage is 0, and so is the policy gradient; the auxiliary term is all the update
    assert one["reward/std_in_group"] == 0.0 and one["grad/pg"] == 0.0
    assert one["grad/aux"] > 0.9 * one["grad/terms"]
    # The first micro-batch's rows and weights are the same at any λ: the aux term's gradient
    # is linear in λ, the others do not move.
    assert double["grad/aux"] == pytest.approx(2 * one["grad/aux"], rel=1e-5)
    assert double["grad/entropy"] == pytest.approx(one["grad/entropy"], rel=1e-6)
    # Measuring changes nothing: the same update to the last bit.
    assert all(torch.equal(a, b) for a, b in zip(params_one, params_off, strict=True))
    assert one["grad/norm"] == off["grad/norm"]


def test_the_diagnostic_is_not_part_of_a_runs_identity() -> None:
    """Runs on disk keep their folders: the id ignores how often the norms are logged."""
    spec = RunSpec(model="tiny-qwen-1m", env="alfworld", method="sdar")
    quiet = spec.model_copy(update={"train": TrainSpec(term_norms_every=0)})
    assert quiet.train != spec.train and quiet.run_id == spec.run_id
    assert spec.model_copy(update={"seed": 1}).run_id != spec.run_id  # the id still sees seeds
