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
