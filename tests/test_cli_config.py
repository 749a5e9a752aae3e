"""Suite validation, the CLI's one-line errors, and the comparison table from fixed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdar_bench.cli import app
from sdar_bench.config import SpecError, load_suite
from sdar_bench.report.table import write_report

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

GOOD = """
name: t
models: [tiny-qwen-1m]
envs: [alfworld]
methods: [grpo, {sdar: {beta: [1.0, 5.0]}}]
seeds: [0, 1]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def test_grid_expansion_and_stable_run_ids(tmp_path) -> None:
    suite = load_suite(_write(tmp_path, GOOD))
    runs = suite.expand()
    assert [(r.method, r.method_params.get("beta"), r.seed) for r in runs] == [
        ("grpo", None, 0), ("grpo", None, 1),
        ("sdar", 1.0, 0), ("sdar", 1.0, 1), ("sdar", 5.0, 0), ("sdar", 5.0, 1),
    ]  # fmt: skip
    assert len({r.run_id for r in runs}) == 6
    assert runs[2].run_id == load_suite(_write(tmp_path, GOOD)).expand()[2].run_id


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("grpo,", "grpoo,"), "methods: unknown method 'grpoo' (known: "),
        (GOOD.replace("beta:", "bta:"), "methods.sdar: unknown parameter 'bta'"),
        (
            GOOD.replace("[alfworld]", "[alfwrld]"),
            "envs: unknown env 'alfwrld' (known: alfworld, searchqa, webshop)",
        ),
        (GOOD + "train: {steps: -1}\n", "train.steps: Input should be greater than or equal to 0"),
        (GOOD + "train: {stepz: 3}\n", "train.stepz: unknown key; remove it or check its spelling"),
        (GOOD.replace("name: t\n", ""), "name: required; add it"),
        (GOOD + "methods: [\n", "not valid YAML"),
        ("- a\n- b\n", "a suite is a YAML mapping"),
        (GOOD.replace("seeds: [0, 1]", "seeds: []"), "seeds: List should have at least 1 item"),
        (GOOD.replace("beta: [1.0, 5.0]", "beta: high"), "methods.sdar: parameter 'beta'"),
    ],
)
def test_bad_suites_give_one_line_errors_with_exit_code_2(
    tmp_path, text: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert message in str(info.value)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: ")


def test_methods_command_lists_all_nine() -> None:
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in (
        "vanilla",
        "skill_prompt",
        "grpo",
        "skill_grpo",
        "opsd",
        "grpo_opsd",
        "skill_sd",
        "rlsd",
        "sdar",
    ):
        assert name in result.output


def test_shipped_suites_validate() -> None:
    for path in sorted((ROOT / "suites").rglob("*.yaml")):  # ablations/ too
        assert load_suite(path).expand()


def _fake_run(root: Path, method: str, seed: int, final: float, best: float) -> None:
    run = root / "runs" / f"{method}-{seed}"
    run.mkdir(parents=True)
    label = {"grpo": "GRPO", "sdar": "SDAR"}[method]
    spec = {"model": "m", "env": "alfworld", "method": method, "method_params": {}, "seed": seed}
    (run / "manifest.json").write_text(json.dumps({"spec": spec}))
    rows = {
        "final": {
            label: {"step": 10, "panel_hash": "h", "success/pick": final, "success/all": final}
        },
        "best": {label: {"step": 5, "panel_hash": "h", "success/pick": best, "success/all": best}},
    }
    (run / "result.json").write_text(json.dumps(rows))


def test_table_cells_are_mean_and_t_interval_over_seeds(tmp_path) -> None:
    for seed, (final, best) in enumerate([(10.0, 20.0), (20.0, 30.0), (30.0, 40.0)]):
        _fake_run(tmp_path, "sdar", seed, final, best)
        _fake_run(tmp_path, "grpo", seed, 5.0, 5.0)
    report = write_report(tmp_path)
    final = report.tables[("alfworld", "final")].set_index("label")
    cell = final.loc["SDAR", "success/all"]
    # mean 20, sample std 10, t(0.975, 2) = 4.302653 → half-width 4.302653·10/√3 = 24.8414;
    # the low end −4.84 is clipped to 0: a success rate's interval stays in [0, 100]
    assert cell.mean == pytest.approx(20.0)
    assert (cell.low, cell.high) == (0.0, pytest.approx(44.8414, abs=1e-3))
    grpo = final.loc["GRPO", "success/all"]
    assert (grpo.mean, grpo.low, grpo.high) == (5.0, 5.0, 5.0)
    best = report.tables[("alfworld", "best")].set_index("label")
    assert best.loc["SDAR", "success/all"].mean == pytest.approx(30.0)
    assert list(report.tables[("alfworld", "final")]["label"]) == ["GRPO", "SDAR"]  # Table-1 order
    assert report.columns["alfworld"] == ["success/pick", "success/all"]
    md = (tmp_path / "table.md").read_text()
    # Δ paired by seed: 5, 15, 25 → 15 ± 24.84 (the same t interval), not bold: it spans 0
    assert "| SDAR | 3 | 20.0 [0.0, 44.8] | 20.0 [0.0, 44.8] | +15.0 [-9.8, +39.8] |" in md


def test_overrides_set_a_learning_rate_per_model_and_c_kl_per_env() -> None:
    from sdar_bench.config import SuiteSpec

    suite = SuiteSpec(
        name="o",
        models=["tiny-qwen-1m", "tiny-qwen-5m"],
        envs=["alfworld", "searchqa"],
        methods=["grpo", {"sdar": {"c_kl": 0.05}}],
        train={"lr": 1e-3},
        overrides=[
            {"when": {"model": "tiny-qwen-5m"}, "train": {"lr": 1e-4}},
            {"when": {"env": "searchqa"}, "method_params": {"c_kl": 0.001}},
        ],
    )
    got = {(r.model, r.env, r.method): (r.train.lr, r.method_params) for r in suite.expand()}
    assert got[("tiny-qwen-1m", "alfworld", "grpo")] == (1e-3, {})
    assert got[("tiny-qwen-5m", "alfworld", "grpo")] == (1e-4, {})
    assert got[("tiny-qwen-1m", "searchqa", "grpo")] == (1e-3, {"c_kl": 0.001})
    # the suite's own method entry is more specific than an override: it wins
    assert got[("tiny-qwen-5m", "searchqa", "sdar")] == (1e-4, {"c_kl": 0.05})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"when": {"modle": "x"}}, "overrides.0.when: unknown axis 'modle'"),
        ({"when": {"model": "nope"}}, "overrides.0.when.model: 'nope' is not in the suite's"),
        ({"train": {"lr": -1}}, "overrides.0.train.lr: Input should be greater than 0"),
        ({"method_params": {"betta": 1}}, "overrides.0.method_params.betta: no matched method"),
    ],
)
def test_bad_overrides_are_one_line_errors(tmp_path, override: dict, message: str) -> None:
    import yaml

    from sdar_bench.config import SpecError, load_suite

    path = tmp_path / "s.yaml"
    suite = {"name": "o", "models": ["tiny-qwen-1m"], "envs": ["alfworld"], "methods": ["grpo"]}
    path.write_text(yaml.safe_dump({**suite, "overrides": [override]}))
    with pytest.raises(SpecError) as err:
        load_suite(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_paper_table_gives_the_7b_model_lora_and_checkpointing_only() -> None:
    from sdar_bench.config import load_suite

    runs = load_suite("suites/paper_table.yaml").expand()
    by_model = {r.model: r.policy for r in runs}
    big = by_model["Qwen/Qwen2.5-7B-Instruct"]
    assert big.lora is not None and big.lora.r == 16 and big.gradient_checkpointing
    assert by_model["Qwen/Qwen2.5-3B-Instruct"].lora is None
    searchqa = [r for r in runs if r.env == "searchqa" and r.method == "sdar"]
    assert {r.train.tasks_per_step for r in searchqa} == {128}
    assert {r.method_params["c_kl"] for r in searchqa} == {0.001}
