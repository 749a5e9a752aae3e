"""The method losses against numbers worked out by hand (SPEC §2, §4).

Every expected value is written out with ``math.exp`` / ``math.log`` on a handful of tokens, not
computed by the code under test.
"""

from __future__ import annotations

import math

import pydantic
import pytest
import torch

from sdar_bench import TokenView, get_method, method_names
from sdar_bench.objectives import group_advantages, kl_k3, ppo_dual_clip
from sdar_bench.registry import param_error, register_method

if "gigpo" not in method_names():  # until the package is reinstalled with its new entry point
    from methods.gigpo import GiGPO

    register_method("gigpo")(GiGPO)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(rows: list[list[float]], grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def approx(x: float, rel: float = 1e-9, abs: float = 1e-12):  # noqa: A002
    return pytest.approx(x, rel=rel, abs=abs)


# No KL, no entropy, no advantage: only the method's own term is left in the loss.
BARE = {"c_kl": 0.0, "c_ent": 0.0}


def gap_view(deltas: list[float], logp0: float = -1.0, **extra: torch.Tensor) -> TokenView:
    """One sample, one token per gap: logp = logp0, teach = logp0 + Δ, old = logp, A = 0."""
    logp = t([[logp0] * len(deltas)], grad=True)
    return TokenView(
        mask=t([[1.0] * len(deltas)]),
        logp=logp,
        old_logp=logp.detach().clone(),
        teacher_logp=t([[logp0 + d for d in deltas]]),
        advantages=t([[0.0] * len(deltas)]),
        **extra,
    )


# --------------------------------------------------------------------------- group advantages


def test_group_advantages_two_groups_and_a_singleton() -> None:
    rewards = torch.tensor([1.0, 10.0, 0.0, 0.0, 7.0, 0.0, 5.0, 1.0])
    groups = torch.tensor([0, 1, 0, 1, 2, 0, 1, 0])
    adv = group_advantages(rewards, groups)
    # group 0: rewards 1, 0, 0, 1 → mean 0.5, unbiased std sqrt(4·0.25/3) = sqrt(1/3)
    a0 = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    # group 1: rewards 10, 0, 5 → mean 5, unbiased std sqrt((25 + 25 + 0)/2) = 5
    a1 = 5.0 / (5.0 + 1e-6)
    # group 2: one sample → 0
    expected = [a0, a1, -a0, -a1, 0.0, -a0, 0.0, a0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_default_advantages_broadcast_and_mask() -> None:
    method = get_method("grpo")
    view = TokenView(mask=t([[1, 1, 0], [1, 0, 0]]))
    adv = method.advantages(view, torch.tensor([1.0, 0.0]), torch.tensor([3, 3]), step=0)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # mean 0.5, unbiased std sqrt(0.5)
    assert adv.tolist() == [[approx(a, 1e-6), approx(a, 1e-6), 0.0], [approx(-a, 1e-6), 0.0, 0.0]]


# --------------------------------------------------------------------------- GRPO


def grpo_example() -> TokenView:
    """2×3: row 0 has A = +1, row 1 A = −1; the last token of row 1 is padding."""
    ratios = [[1.5, 1.0, 0.5], [0.5, 5.0, 7.0]]
    old = [[-1.0, -2.0, -0.5], [-1.5, -3.0, -0.1]]
    logp = [
        [o + math.log(r) for o, r in zip(orow, rrow, strict=True)]
        for orow, rrow in zip(old, ratios, strict=True)
    ]
    return TokenView(
        mask=t([[1, 1, 1], [1, 1, 0]]),
        logp=t(logp, grad=True),
        old_logp=t(old),
        advantages=t([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]),
    )


def test_ppo_dual_clip_per_token() -> None:
    view = grpo_example()
    pg, clipped = ppo_dual_clip(view.logp, view.old_logp, view.advantages, 0.2, 3.0)
    # A = +1, ratio 1.5: max(−1.5, −1.2) = −1.2 (clipped); ratio 1: −1; ratio 0.5: max(−0.5, −0.8) = −0.5
    # A = −1, ratio 0.5: max(0.5, 0.8) = 0.8 (clipped); ratio 5: max(5, 1.2) = 5 → dual clip min(5, 3) = 3
    assert pg[0].tolist() == pytest.approx([-1.2, -1.0, -0.5])
    assert pg[1, :2].tolist() == pytest.approx([0.8, 3.0])
    assert clipped[:, :2].tolist() == [[True, False], [True, False]]


def test_grpo_loss_pg_kl_entropy() -> None:
    view = grpo_example()
    logp = view.logp.detach()
    # ref − logp: 12 (k3 = e^12 − 13 ≫ 10 → clamped to 10), −0.5, 0, 0, 0.3 on the real tokens
    ref = logp + t([[12.0, -0.5, 0.0], [0.0, 0.3, 50.0]])
    entropy = t([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    view = view.with_(ref_logp=ref, entropy=entropy)
    loss, m = get_method("grpo").loss(view)

    pg = (-1.2 - 1.0 - 0.5 + 0.8 + 3.0) / 5  # = 0.22
    k3 = [10.0, math.exp(-0.5) + 0.5 - 1, 0.0, 0.0, math.exp(0.3) - 0.3 - 1]
    kl = sum(k3) / 5
    ent = (1 + 2 + 3 + 4 + 5) / 5
    assert m["loss/pg"] == approx(pg)
    assert m["loss/kl"] == approx(kl)
    assert m["entropy/mean"] == approx(ent)
    assert m["ppo/clipfrac"] == approx(2 / 5)
    assert m["loss/aux"] == 0.0
    # approx_kl: k3 of KL(old ‖ θ) = ratio − log ratio − 1 on the five real tokens
    ratios = [1.5, 1.0, 0.5, 0.5, 5.0]
    assert m["ppo/approx_kl"] == approx(sum(r - math.log(r) - 1 for r in ratios) / 5)
    assert loss.item() == approx(pg + 0.01 * kl - 0.001 * ent)


def test_kl_k3_values_and_clamp() -> None:
    logp = t([[-1.0, -1.0, -1.0]])
    ref = t([[-1.5, -1.0, 11.0]])  # ref − logp = −0.5, 0, 12
    assert kl_k3(logp, ref)[0].tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, 0.0, 10.0])


def test_kl_term_off_without_ref_or_coef() -> None:
    view = grpo_example()
    ref = view.logp.detach() + 1.0
    _, with_ref_zero_coef = get_method("grpo", c_kl=0.0).loss(view.with_(ref_logp=ref))
    _, without_ref = get_method("grpo").loss(view)
    assert with_ref_zero_coef["loss/kl"] == 0.0 and without_ref["loss/kl"] == 0.0


# --------------------------------------------------------------------------- SDAR


def test_sdar_gate_values() -> None:
    view = gap_view([0.2, -0.2, -1.0])
    loss, m = get_method("sdar", **BARE).loss(view)
    g = [sigmoid(5 * 0.2), sigmoid(5 * -0.2), sigmoid(5 * -1.0)]
    assert g == pytest.approx([0.7311, 0.2689, 0.0067], abs=1e-4)
    assert m["gate/mean"] == approx(sum(g) / 3)
    assert m["gate/active_ratio"] == approx(1 / 3)
    assert m["gap/mean"] == approx((0.2 - 0.2 - 1.0) / 3)
    assert m["gap/positive_ratio"] == approx(1 / 3)
    assert m["gap/abs_mean"] == approx((0.2 + 0.2 + 1.0) / 3)
    # quantiles over the 3 tokens (fp32), linear interpolation: sorted Δ = (-1.0, -0.2, 0.2)
    assert m["gap/q10"] == pytest.approx(-1.0 + 0.2 * 0.8, abs=1e-6)  # position 0.1 × 2 = 0.2
    assert m["gap/q50"] == pytest.approx(-0.2, abs=1e-6)
    assert m["gap/q90"] == pytest.approx(-0.2 + 0.8 * 0.4, abs=1e-6)  # position 1.8
    assert m["gate/q50"] == pytest.approx(g[1], abs=1e-6)  # the gate is monotone in Δ here
    assert m["gate/q90"] == pytest.approx(g[1] + 0.8 * (g[0] - g[1]), abs=1e-6)
    mean = -1 / 3
    assert m["gap/std"] == approx(
        math.sqrt(((0.2 - mean) ** 2 + (-0.2 - mean) ** 2 + (-1 - mean) ** 2) / 3)
    )
    aux = (g[0] * 0.2 + g[1] * -0.2 + g[2] * -1.0) / 3  # Agg(g·(teach − logp)) = Agg(g·Δ)
    assert m["loss/aux"] == approx(aux)
    assert loss.item() == approx(0.01 * aux)


def test_sdar_beta0_equals_grpo_opsd_uniform() -> None:
    def run(name: str, **params: object) -> tuple[float, torch.Tensor]:
        view = grpo_example()
        view = view.with_(
            teacher_logp=view.logp.detach() + t([[0.3, -0.7, 0.1], [-2.0, 0.5, 9.0]]),
            ref_logp=view.logp.detach() - 0.2,
            entropy=t([[1.0, 0.5, 0.2], [0.3, 0.9, 0.0]]),
        )
        loss, _ = get_method(name, **params).loss(view)
        loss.backward()
        return loss.item(), view.logp.grad

    l_sdar, g_sdar = run("sdar", beta=0.0)
    l_hyb, g_hyb = run("grpo_opsd", form="uniform")
    assert l_sdar == approx(l_hyb)
    assert torch.allclose(g_sdar, g_hyb)

    l_sdar0, g_sdar0 = run("sdar", coef=0.0)
    l_grpo, g_grpo = run("grpo")
    assert l_sdar0 == approx(l_grpo)
    assert torch.allclose(g_sdar0, g_grpo)


def test_sdar_aux_gradient_raises_every_token() -> None:
    # tokens: Δ = +0.5, +0.1, −0.1, −2.0, then a padding token
    deltas = [0.5, 0.1, -0.1, -2.0, 3.0]
    view = gap_view(deltas)
    view = view.with_(mask=t([[1, 1, 1, 1, 0]]))
    loss, _ = get_method("sdar", **BARE).loss(view)
    loss.backward()
    grad = view.logp.grad[0]
    # d/dlogp of λ·Agg(g·(teach − logp)) = −λ·g / Σm, with g = σ(5Δ)
    expected = [-0.01 * sigmoid(5 * d) / 4 for d in deltas[:4]] + [0.0]
    assert grad.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert (grad[:4] < 0).all()
    assert grad[4] == 0.0  # padding gets no gradient
    positive, negative = grad[:2].abs(), grad[2:4].abs()
    assert positive.min() > negative.max()


def test_sdar_aux_gradient_on_logits_raises_sampled_token() -> None:
    logits = torch.tensor([[[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -0.5, 0.3]]], requires_grad=True)
    sampled = torch.tensor([[1, 3]])
    logp = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]  # [1, 2]
    view = TokenView(
        mask=torch.ones(1, 2),
        logp=logp,
        old_logp=logp.detach(),
        teacher_logp=logp.detach() + torch.tensor([[0.4, -0.6]]),  # one endorsed, one rejected
        advantages=torch.zeros(1, 2),
    )
    loss, _ = get_method("sdar", **BARE).loss(view)
    loss.backward()
    own = logits.grad[0].gather(-1, sampled[0][:, None])[:, 0]  # [2]
    assert (own < 0).all()  # gradient descent raises each sampled token's logit
    # by hand: d loss / d z_y = −λ·g/Σm·(1 − p_y)
    p = torch.softmax(logits.detach(), -1)[0]
    for i, (y, d) in enumerate([(1, 0.4), (3, -0.6)]):
        assert own[i].item() == approx(-0.01 * sigmoid(5 * d) / 2 * (1 - p[i, y].item()), rel=1e-5)


def test_sdar_gate_variants() -> None:
    vocab = 100
    log_v = math.log(vocab)
    deltas = [0.0, 1.0]
    # normalised entropies h = 0.5 and 0.25
    entropy = t([[0.5 * log_v, 0.25 * log_v]])
    view = gap_view(deltas, entropy=entropy).with_(vocab_size=vocab)

    _, m = get_method("sdar", gate="entropy", **BARE).loss(view)
    g_ent = [sigmoid(5 * 0.5), sigmoid(5 * 0.25)]
    assert m["gate/mean"] == approx(sum(g_ent) / 2)
    assert m["loss/aux"] == approx((g_ent[0] * 0.0 + g_ent[1] * 1.0) / 2)

    _, m = get_method("sdar", gate="soft_or", **BARE).loss(view)
    # σ(β·[1 − (1 − h)(1 − σ(Δ))]): Δ = 0 → 1 − 0.5·0.5 = 0.75; Δ = 1 → 1 − 0.75·(1 − σ(1))
    g_or = [sigmoid(5 * 0.75), sigmoid(5 * (1 - 0.75 * (1 - sigmoid(1.0))))]
    assert m["gate/mean"] == approx(sum(g_or) / 2)
    assert m["loss/aux"] == approx(g_or[1] * 1.0 / 2)

    loss, m = get_method("sdar", gate="none", **BARE).loss(view)
    assert m["gate/mean"] == 1.0
    assert loss.item() == approx(0.01 * (0.0 + 1.0) / 2)


def test_entropy_gate_needs_vocab_size() -> None:
    view = gap_view([0.1], entropy=t([[1.0]]))
    with pytest.raises(ValueError, match="vocab_size"):
        get_method("sdar", gate="entropy").loss(view)


# --------------------------------------------------------------------------- OPSD, GRPO+OPSD


def test_opsd_value_and_no_pg_term() -> None:
    deltas = [0.4, -0.3]
    view = gap_view(deltas, logp0=-0.7).with_(ref_logp=t([[-0.2, -1.7]]), entropy=t([[1.5, 0.5]]))
    loss, m = get_method("opsd").loss(view)
    g = [sigmoid(5 * 0.4), sigmoid(5 * -0.3)]
    aux = (g[0] * 0.4 + g[1] * -0.3) / 2
    kl = ((math.exp(0.5) - 0.5 - 1) + (math.exp(-1.0) + 1.0 - 1)) / 2  # ref − logp = 0.5, −1
    ent = (1.5 + 0.5) / 2
    assert m["loss/aux"] == approx(aux)
    assert m["loss/pg"] == 0.0
    assert loss.item() == approx(0.01 * aux + 0.01 * kl - 0.001 * ent)

    other, _ = get_method("opsd").loss(view.with_(advantages=t([[5.0, -3.0]])))
    assert other.item() == loss.item()


def test_grpo_opsd_uniform_and_signed() -> None:
    deltas = [0.4, -0.3, 1.0]
    logp0 = -0.5
    view = gap_view(deltas, logp0=logp0)

    loss, m = get_method("grpo_opsd", **BARE).loss(view)
    aux = 0.5 * (0.4 - 0.3 + 1.0) / 3  # Agg(0.5·(teach − logp))
    assert m["loss/aux"] == approx(aux)
    assert m["gate/mean"] == 0.5
    assert loss.item() == approx(0.01 * aux)

    loss, m = get_method("grpo_opsd", form="signed", **BARE).loss(view)
    aux = -(0.4 * logp0 - 0.3 * logp0 + 1.0 * logp0) / 3  # −Agg(sg(Δ)·logp)
    assert m["loss/aux"] == approx(aux)
    assert loss.item() == approx(0.01 * aux)
    loss.backward()
    # signed: −λ·Δ/Σm, so a rejected token (Δ < 0) is pushed down
    assert view.logp.grad[0].tolist() == pytest.approx([-0.01 * d / 3 for d in deltas])


# --------------------------------------------------------------------------- Skill-SD


def test_skill_sd_clamps_and_rho_gradient() -> None:
    # token 0: logp − old = 12 → ρ = e^10 (clamped); teach − logp = 0.5
    # token 1: logp − old = 0.3; teach − logp = −ℓ = 25 → exp clamped to e^20
    # token 2: logp − old = −0.2; teach − logp = −0.4
    logp = t([[-1.0, -30.0, -0.6]], grad=True)
    old = t([[-13.0, -30.3, -0.4]])
    teach = t([[-0.5, -5.0, -1.0]])
    view = TokenView(
        mask=t([[1, 1, 1]]), logp=logp, old_logp=old, teacher_logp=teach, advantages=t([[0.0] * 3])
    )
    loss, m = get_method("skill_sd", **BARE).loss(view)

    rho = [math.exp(10.0), math.exp(0.3), math.exp(-0.2)]
    neg_ell = [0.5, 25.0, -0.4]
    k3 = [math.exp(min(n, 20.0)) - 1 - n for n in neg_ell]
    aux = sum(r * k for r, k in zip(rho, k3, strict=True)) / 3
    assert m["loss/aux"] == approx(aux)
    assert loss.item() == approx(0.001 * aux)

    loss.backward()
    # d/dlogp [ρ·k3]: ρ' = ρ below the clamp (0 above); k3' = 1 − exp(−ℓ) below its clamp (1 above)
    d_rho = [0.0, rho[1], rho[2]]
    d_k3 = [1 - math.exp(0.5), 1.0, 1 - math.exp(-0.4)]
    full = [
        0.001 / 3 * (dr * k + r * dk) for dr, k, r, dk in zip(d_rho, k3, rho, d_k3, strict=True)
    ]
    detached = [0.001 / 3 * r * dk for r, dk in zip(rho, d_k3, strict=True)]
    grad = logp.grad[0].tolist()
    assert grad == pytest.approx(full, rel=1e-9)
    assert grad[1:] != pytest.approx(detached[1:], rel=1e-3)  # ρ carries gradient
    assert grad[0] == approx(detached[0])  # ... except where its clamp is active


# --------------------------------------------------------------------------- RLSD


@pytest.mark.parametrize(("step", "w"), [(0, 0.5), (50, 0.25), (100, 0.0), (150, 0.0)])
def test_rlsd_reshaped_advantage(step: int, w: float) -> None:
    method = get_method("rlsd")
    # two samples of one group: rewards 1 and 0 → A = ±0.5/(sqrt(0.5) + 1e-6)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    old = t([[-1.0, -1.0], [-1.0, -1.0]])
    teach = old + t([[0.1, 0.5], [0.1, 0.5]])  # teach − old = 0.1 (inside), 0.5 (clipped)
    view = TokenView(mask=t([[1, 1], [1, 1]]), old_logp=old, teacher_logp=teach)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)
    adv = method.advantages(view, rewards, torch.tensor([0, 0]), step)

    # A > 0: exp(+0.1) = 1.1052 inside [0.8, 1.2]; exp(0.5) = 1.6487 → 1.2
    # A < 0: exp(−0.1) = 0.9048 inside;              exp(−0.5) = 0.6065 → 0.8
    factors = [[math.exp(0.1), 1.2], [math.exp(-0.1), 0.8]]
    expected = [
        [sign * a * ((1 - w) + w * f) for f in row]
        for sign, row in zip((1.0, -1.0), factors, strict=True)
    ]
    assert adv.tolist() == [pytest.approx(row, rel=1e-9) for row in expected]

    logp = old.clone().requires_grad_(True)
    _, m = method.loss(view.with_(logp=logp, advantages=adv))
    mean_factor = sum((1 - w) + w * f for row in factors for f in row) / 4
    assert m["rlsd/weight"] == approx(mean_factor)


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert get_method("sdar", beta=1.0).params.beta == 1.0
    assert method_names() == sorted(
        [
            "vanilla",
            "skill_prompt",
            "grpo",
            "skill_grpo",
            "opsd",
            "grpo_opsd",
            "skill_sd",
            "rlsd",
            "sdar",
            "gigpo",
        ]
    )
    with pytest.raises(KeyError, match="grpo"):
        get_method("sdarr")
    with pytest.raises(pydantic.ValidationError):
        get_method("sdar", bta=1.0)
    msg = param_error("sdar", {"bta": 1})
    assert msg is not None and "bta" in msg
    assert param_error("sdar", {"beta": 1}) is None


def test_method_flags() -> None:
    def cls(name: str):
        return type(get_method(name))

    for name in method_names():
        assert cls(name).name == name
    assert not cls("vanilla").trains and not cls("skill_prompt").trains
    assert cls("skill_prompt").eval_skill_modes == (True,)
    assert cls("skill_grpo").student_sees_skills
    assert cls("skill_grpo").eval_skill_modes == (False, True)
    for name in ("opsd", "grpo_opsd", "skill_sd", "rlsd", "sdar"):
        assert cls(name).needs_teacher
        assert get_method(name, teacher="ema").params.ema_decay == 0.99
    for name in ("skill_grpo", "skill_prompt"):
        assert get_method(name, retrieval="full").params.retrieval == "full"
    with pytest.raises(NotImplementedError):
        get_method("vanilla").loss(gap_view([0.0]))
