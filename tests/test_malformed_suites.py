"""Every malformed suite is refused by ``sdar-bench run`` in one line that names the field.

Each file in ``malformed_suites/`` starts with ``# expect: <text>``: the text the one-line error
must contain. Validation errors come from ``load_suite``; a model or data that is not on this
machine comes from ``run``'s pre-flight check. Nothing may train: a suite that gets past both
fails the test instead of starting a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdar_bench.cli import app
from sdar_bench.config import SpecError, load_suite

CORPUS = Path(__file__).parent / "malformed_suites"
FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = "# expect: "
runner = CliRunner()

# Files that show a bug still open outside this test's reach; strict, so that the fix turns the
# test red until its entry is removed here.
KNOWN_BUGS: dict[str, str] = {}


def expectation(path: Path) -> str:
    """The text after ``# expect: `` on the file's first line (read as bytes: some files are
    deliberately not UTF-8)."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith(EXPECT), f"{path.name}: the first line must be '{EXPECT}<text>'"
    return first.removeprefix(EXPECT)


@pytest.fixture(autouse=True)
def _from_the_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths inside the corpus files (a data file under malformed_suites/data) are relative to
    the repository root, like every path a suite names is relative to where it is run."""
    monkeypatch.chdir(CORPUS.parents[1])


@pytest.fixture(autouse=True)
def _never_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite that passes every check would start training here: fail fast instead."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the suite passed validation and pre-flight; it would have run")

    monkeypatch.setattr("sdar_bench.suite.run_suite", refuse)


def one_line_error(args: list[str]) -> str:
    """Invoke the CLI; assert exit code 2 and a single ``error:`` line; return that line."""
    result = runner.invoke(app, args)
    output = result.output  # stdout and stderr together
    assert "Traceback" not in output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: raised {result.exception!r}") from result.exception
    assert result.exit_code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_the_corpus_covers_enough_cases() -> None:
    assert len(FILES) >= 25
    for path in FILES:
        assert expectation(path)
    assert set(KNOWN_BUGS) <= {p.name for p in FILES}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p,
            id=p.stem,
            marks=[pytest.mark.xfail(reason=KNOWN_BUGS[p.name], strict=True)]
            if p.name in KNOWN_BUGS
            else [],
        )
        for p in FILES
    ],
)
def test_run_refuses_a_malformed_suite_in_one_line(path: Path, tmp_path: Path) -> None:
    expect = expectation(path)
    # --no-mlflow: the tracking store is not under test, and a suite that wrongly gets past the
    # checks then fails at run_suite without importing MLflow first (seconds per file).
    line = one_line_error(["run", str(path), "-o", str(tmp_path / "results"), "--no-mlflow"])
    assert expect in line, line
    assert str(path) in line or expect.startswith(("models:", "retriever_url", "corpus_path"))
    try:
        load_suite(path)
    except SpecError as exc:
        # A validation error: `plan` (which prints a table otherwise) refuses it the same way.
        assert expect in str(exc) and "\n" not in str(exc)
        assert one_line_error(["plan", str(path)]) == line


def test_a_suite_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "suite.yaml"
    line = one_line_error(["run", str(missing), "-o", str(tmp_path / "results")])
    assert line == f"error: {missing}: no such suite file"
    line = one_line_error(["run", str(tmp_path), "-o", str(tmp_path / "results")])
    assert line == f"error: {tmp_path}: no such suite file"  # a directory is not a suite


def test_brackets_in_a_message_reach_the_terminal() -> None:
    path = CORPUS / "type_models_scalar.yaml"
    with pytest.raises(SpecError) as info:
        load_suite(path)
    assert "[tiny-qwen-1m]" in str(info.value)
    assert "[tiny-qwen-1m]" in one_line_error(["plan", str(path)])


# ---- suites too big to keep as files: generated, each refused in one line and quickly --------
HEAD = "name: generated\nmodels: [tiny-qwen-1m]\nenvs: [alfworld]\n"


def _alias_bomb(levels: int = 9) -> str:
    """ "Billion laughs": each anchor lists ten aliases of the one before (10^9 values)."""
    lines = ["    x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"    x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return HEAD + "methods: [grpo]\nenv_params:\n  alfworld:\n" + "\n".join(lines) + "\n"


def _grid(params: int, values: int) -> str:
    lists = ", ".join(f"p{i}: [{', '.join(str(v) for v in range(values))}]" for i in range(params))
    return HEAD + f"methods: [{{sdar: {{{lists}}}}}]\n"


GENERATED = {
    "alias_bomb": (
        _alias_bomb(),
        "more than 100,000 values with its aliases (*name) expanded, at line 11; a suite holds "
        "a few hundred (is an alias repeated in a loop?)",
    ),
    "alias_cycle": (
        HEAD + "methods: [grpo]\nx: &loop [1, *loop]\n",
        "line 5: the alias *loop is inside the value it names (a cycle)",
    ),
    "nested_brackets": (
        HEAD + "methods: [grpo]\nx: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "nested too deeply at line 5: more than 64 levels of lists and mappings",
    ),
    "nested_mappings": (
        HEAD + "methods: [grpo]\nx: " + "{a: " * 100_000 + "\n",
        "nested too deeply at line 5: more than 64 levels of lists and mappings",
    ),
    "flat_list": (
        HEAD + "methods: [grpo]\nx: [" + "1, " * 150_000 + "1]\n",
        "more than 100,000 values with its aliases (*name) expanded, at line 5",
    ),
    "seeds_20000": (
        HEAD + "methods: [grpo]\nseeds: [" + ", ".join(map(str, range(20_000))) + "]\n",
        "seeds: 20,000 items, more than the cap of 1,000; list fewer or split the suite",
    ),
    "seeds_1000_one_twice": (
        HEAD + "methods: [grpo]\nseeds: [" + ", ".join(map(str, [*range(999), 7])) + "]\n",
        "seeds: 7 listed twice; list each once",
    ),
    # p0..p9 are no parameters of sdar: the cap must be checked before anything expands
    "grid_10_to_the_7": (
        _grid(params=7, values=10),
        "methods: the suite expands to 10,000,000 runs (models 1 × envs 1 × methods "
        "10,000,000 × seeds 1), more than the cap of 10,000",
    ),
    "grid_10_to_the_10": (
        _grid(params=10, values=10),
        "methods: the suite expands to 10,000,000,000 runs",
    ),
    "name_5000_characters": (
        "name: " + "n" * 5000 + "\nmodels: [tiny-qwen-1m]\nenvs: [alfworld]\nmethods: [grpo]\n",
        f"name: must be 1 to 100 letters, digits, '-', '_' or '.', not only dots, as it names "
        f"the results folder (e.g. my-suite); got '{'n' * 56}... (5,000 characters)",
    ),
    "file_over_1_mib": (
        HEAD + "methods: [grpo]\n" + "# padding\n" * 110_000,
        "more than 1,048,576 bytes (1 MiB), the cap for a suite file",
    ),
}


@pytest.mark.parametrize("case", sorted(GENERATED))
def test_generated_suite_is_refused_in_one_line(case: str, tmp_path: Path) -> None:
    import tracemalloc

    text, expect = GENERATED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(SpecError) as info:
            load_suite(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{path}: {expect}"), str(info.value)
    # An alias bomb expanded even to 10^6 values would take well over 50 MB of Python objects.
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB"
    line = one_line_error(["plan", str(path)])
    assert line.startswith(f"error: {path}: {expect}"), line


def test_merge_keys_are_yaml_and_a_key_of_the_mapping_overrides_the_merged_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text(
        HEAD
        + "methods: [grpo]\n"
        + "train: &small {steps: 3, lr: 0.001, tasks_per_step: 2}\n"
        + "overrides:\n"
        + "  - when: {seed: 0}\n"
        + "    train:\n"
        + "      <<: *small\n"
        + "      steps: 4\n"
    )
    (run,) = load_suite(path).expand()
    assert (run.train.steps, run.train.lr, run.train.tasks_per_step) == (4, 0.001, 2)


def test_a_plain_int_is_a_valid_float_and_stays_one_run(tmp_path: Path) -> None:
    path = tmp_path / "ints.yaml"
    path.write_text(HEAD + "methods: [{sdar: {beta: 5}}]\ntrain: {lr: 1, temperature: 2}\n")
    (run,) = load_suite(path).expand()
    assert run.train.lr == 1.0 and isinstance(run.train.lr, float)
    assert run.method_params == {"beta": 5}


def test_the_largest_allowed_suite_loads(tmp_path: Path) -> None:
    """The caps are limits, not off-by-one refusals: 10,000 runs and 1,000 seeds load."""
    path = tmp_path / "largest.yaml"
    seeds = ", ".join(map(str, range(999_000, 1_000_000)))
    path.write_text(
        HEAD + f"methods: [{{sdar: {{beta: [{', '.join(map(str, range(10)))}]}}}}]\n"
        f"seeds: [{seeds}]\ntrain: {{steps: 100000, max_new_tokens: 131072}}\n"
    )
    suite = load_suite(path)
    assert len(suite.seeds) == 1000 and len(suite.expand()) == 10_000


def test_printable_escapes_what_could_drive_a_terminal() -> None:
    from sdar_bench.config import printable

    assert printable("plain 'text' [1] é 🙂") == "plain 'text' [1] é 🙂"
    assert printable("a\x1b[2Jb\nc\x00\u202e") == "a\\x1b[2Jb\\nc\\x00\\u202e"
