"""Loaders for Search-R1's data formats (the real adapter's corpus and questions).

* Corpus: JSONL, one passage per line, ``{"id": ..., "contents": "\\"Title\\"\\ntext"}``
  (the wiki-18 dump Search-R1 indexes).
* Questions: JSONL, a JSON list, or parquet (read with pandas), rows with ``question``,
  ``golden_answers`` (a list, or one string) and ``data_source``. Search-R1's processed parquet
  files also keep the answers under ``reward_model.ground_truth.target``, which is read when
  ``golden_answers`` is absent; a file without ``data_source`` takes its file name's stem.

``balanced_order`` interleaves the data sources, so the first ``n`` questions of a panel cover
every source evenly, whatever order the file lists them in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from sdar_bench.envs.searchqa.world import DATA_SOURCES

# Search-R1's data_source names → the names of this benchmark's metrics.
SOURCE_ALIASES: dict[str, str] = {
    "2wikimultihopqa": "2wiki",
    "2wikimultihop": "2wiki",
    "trivia_qa": "triviaqa",
    "natural_questions": "nq",
    "hotpot_qa": "hotpotqa",
}


@dataclass(frozen=True)
class Passage:
    id: str
    contents: str


@dataclass(frozen=True)
class QAItem:
    question: str
    golden_answers: tuple[str, ...]
    data_source: str


def existing(path: str | Path, param: str) -> Path:
    """``path`` as a Path; a missing file is one ValueError naming the env parameter."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise ValueError(f"{param}: no such file {str(path)!r}")
    return found


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc


def load_corpus(path: str | Path) -> list[Passage]:
    """Every passage of a Search-R1 corpus JSONL, in file order."""
    source = existing(path, "corpus_path")
    passages = []
    for number, row in enumerate(_jsonl(source)):
        if "contents" not in row:
            raise ValueError(f"{source}: passage {number} has no 'contents'")
        passages.append(Passage(str(row.get("id", number)), str(row["contents"])))
    if not passages:
        raise ValueError(f"{source}: the corpus is empty")
    return passages


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json question file must hold a list of objects")
        return data
    return list(_jsonl(path))


def _answers(row: dict[str, Any]) -> tuple[str, ...]:
    value = row.get("golden_answers")
    if value is None:
        reward = row.get("reward_model") or {}
        value = (reward.get("ground_truth") or {}).get("target")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in list(value))  # lists and numpy arrays (parquet)


def source_rank(name: str) -> tuple[int, str]:
    """Sort key: the paper's seven data sources in its order, then the others by name."""
    return (DATA_SOURCES.index(name) if name in DATA_SOURCES else len(DATA_SOURCES), name)


def normalize_source(name: str) -> str:
    key = name.strip().lower()
    return SOURCE_ALIASES.get(key, key)


def load_qa(path: str | Path, param: str = "qa_path") -> list[QAItem]:
    """Every question of a Search-R1 QA file, in file order."""
    source = existing(path, param)
    items = []
    for number, row in enumerate(_rows(source)):
        answers = _answers(row)
        if "question" not in row or not answers:
            raise ValueError(f"{source}: row {number} needs 'question' and 'golden_answers'")
        data_source = normalize_source(str(row.get("data_source") or source.stem))
        items.append(QAItem(str(row["question"]).strip(), answers, data_source))
    if not items:
        raise ValueError(f"{source}: no questions")
    return items


def qa_file_problem(path: str | Path) -> str | None:
    """What makes an existing QA file unreadable, with the line of the first bad row; None for a
    readable file, and for a missing one (the data check of ``plan`` and ``run`` reports that).

    Checked when a suite is loaded, so a wrong file is one line before any work rather than a
    traceback when the first task is drawn. Remembered per file version: the env settings are
    validated again each time an env is built.
    """
    found = Path(path).expanduser()
    if not found.is_file():
        return None
    stat = found.stat()
    problem = _qa_file_problem(str(found.resolve()), stat.st_mtime_ns, stat.st_size)
    return None if problem is None else f"{path}: {problem}"  # the path as the suite gives it


_QA_ROW = "an object with 'question' and 'golden_answers' (Search-R1 format)"


@lru_cache(maxsize=16)
def _qa_file_problem(path: str, mtime_ns: int, size: int) -> str | None:
    source = Path(path)
    if source.suffix == ".parquet":
        # Reading it needs pandas and pyarrow; the magic number catches a file of another kind.
        with source.open("rb") as handle:
            head = handle.read(4)
        return None if head == b"PAR1" else "not a parquet file (no PAR1 header)"
    try:
        if source.suffix == ".json":
            try:
                rows = json.loads(source.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                return f"line {exc.lineno}: not JSON ({exc.msg})"
            if not isinstance(rows, list):
                return "a .json question file holds a list of objects"
            numbered: Iterable[tuple[str, Any]] = ((f"item {i}", r) for i, r in enumerate(rows))
        else:
            numbered = _numbered_json_lines(source)
        count = 0
        for where, row in numbered:
            if not isinstance(row, dict) or "question" not in row or not _answers(row):
                return f"{where}: not {_QA_ROW}"
            count += 1
    except _BadLine as exc:
        return str(exc)
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte offset {exc.start}); save it as UTF-8 JSON lines"
    return None if count else "no questions"


class _BadLine(ValueError):
    pass


def _numbered_json_lines(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _BadLine(
                        f"line {number}: not a JSON line ({exc.msg}); a QA file holds "
                        f"one JSON object per line, {_QA_ROW}"
                    ) from None


def balanced_order(items: Sequence[QAItem]) -> list[QAItem]:
    """Round-robin over data sources (the seven of the paper in their order, then any other by
    name), each source in file order."""
    by_source: dict[str, list[QAItem]] = {}
    for item in items:
        by_source.setdefault(item.data_source, []).append(item)
    queues = [by_source[name] for name in sorted(by_source, key=source_rank)]
    ordered: list[QAItem] = []
    for depth in range(max(len(q) for q in queues)):
        ordered.extend(q[depth] for q in queues if depth < len(q))
    return ordered
