"""The WebShop env: reward, expert coverage, determinism, pages, parser, vocabulary, real data."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from envcheck import played_words, wander

from sdar_bench.envs.base import Observation, Task
from sdar_bench.envs.webshop import WebshopEnv, WebshopGame
from sdar_bench.envs.webshop.catalog import CATEGORIES, Goal, Product
from sdar_bench.envs.webshop.data import category_of
from sdar_bench.envs.webshop.env import words
from sdar_bench.envs.webshop.expert import goal_query
from sdar_bench.envs.webshop.scoring import score_purchase, type_reward

FIXTURE = Path(__file__).parent / "fixtures" / "webshop"


def play_expert(
    env: WebshopEnv, task: Task, noise: float = 0.0, rng: random.Random | None = None
) -> tuple[WebshopGame, list[tuple[str, str]], Observation]:
    """Play the expert (with ``noise`` random admissible actions) to the end of the episode."""
    game = env.new_game(task)
    obs = game.reset()
    history: list[tuple[str, str]] = []
    while not obs.done:
        action = game.expert_action()
        assert action is not None
        parsed = env.parse(env.format_response(action, "buy it"), obs.admissible)
        assert parsed.action == action, (task.id, action, obs.admissible)
        if rng is not None and rng.random() < noise:
            action = rng.choice(obs.admissible)
        history.append((obs.text, action))
        obs = game.step(action)
    return game, history, obs


# ---- the reward on hand-built cases --------------------------------------------------------
HOODIE = Product(
    asin="b0hood",
    title="alpine women soft cotton hoodie",
    category="apparel",
    product_category="clothing › women › hoodie",
    query="hoodie",
    price=23.99,
    options=(("color", ("black", "navy blue", "red")), ("size", ("small", "large", "x large"))),
    attributes=("soft cotton", "machine wash", "relaxed fit"),
    bullets=("soft cotton", "machine wash for daily use"),
    description="this hoodie from alpine is machine wash and relaxed fit.",
)
GOAL = Goal(
    asin="b0hood",
    instruction="i need a soft cotton and machine wash hoodie in red color and size large",
    attributes=("soft cotton", "machine wash"),
    options=("red", "large"),
    price_upper=40.0,
    query="hoodie",
    name=HOODIE.title,
    product_category=HOODIE.product_category,
    category="apparel",
)
EARBUDS = Product(
    asin="b0buds",
    title="alpine wireless earbuds",
    category="electronics",
    product_category="electronics › all › wireless earbuds",
    query="wireless earbuds",
    price=30.0,
    options=(("color", ("black", "red")),),
    attributes=("noise cancelling",),
    bullets=("noise cancelling",),
    description="wireless earbuds with a charging case.",
)


def test_perfect_purchase_scores_one() -> None:
    parts = score_purchase(HOODIE, GOAL, {"color": "red", "size": "large"})
    assert parts.score == 1.0
    assert (parts.n_attr, parts.n_opt, parts.price_ok, parts.r_type) == (2, 2, True, 1.0)


def test_wrong_colour_and_wrong_size() -> None:
    # (2 attributes + 1 option + price) / (2 + 2 + 1) = 4/5
    assert score_purchase(HOODIE, GOAL, {"color": "black", "size": "large"}).score == 0.8
    # size matches exactly only: "x large" is not "large" (token-set similarity would say 100)
    assert score_purchase(HOODIE, GOAL, {"color": "red", "size": "x large"}).score == 0.8
    # nothing selected: (2 + 0 + 1) / 5
    assert score_purchase(HOODIE, GOAL, {}).score == pytest.approx(0.6, abs=1e-12)


def test_price_over_the_bound() -> None:
    goal = replace(GOAL, price_upper=20.0)  # 23.99 > 20: (2 + 2 + 0) / 5
    parts = score_purchase(HOODIE, goal, {"color": "red", "size": "large"})
    assert parts.score == 0.8 and not parts.price_ok


def test_wrong_product_type_reduces_r_type() -> None:
    # title overlap {alpine} / {alpine, women, soft, cotton, hoodie} = 0.2: not > 0.2, no query
    # or category match → r_type 0.5; (0 attributes + "red" + price) / 5 = 0.4; 0.5 · 0.4 = 0.2
    parts = score_purchase(EARBUDS, GOAL, {"color": "red"})
    assert (parts.r_type, parts.title_score, parts.n_attr, parts.n_opt) == (0.5, 0.2, 0, 1)
    assert parts.score == pytest.approx(0.2, abs=1e-12)
    # no title word in common → r_type 0 → score 0
    other = replace(EARBUDS, title="nova wireless earbuds")
    assert score_purchase(other, GOAL, {"color": "red"}).score == 0.0
    # overlap 1/11 < 0.1 → r_type 0.1 → 0.1 · 0.4
    long_name = replace(
        GOAL, name="alpine women soft cotton hoodie pocket winter camping hiking trips outdoors"
    )
    assert type_reward(EARBUDS, long_name)[0] == 0.1
    assert score_purchase(EARBUDS, long_name, {"color": "red"}).score == pytest.approx(
        0.04, abs=1e-12
    )
    # the same category path (≥ 2 levels) keeps r_type 1 for a different product type
    jacket = replace(HOODIE, title="nova women jacket", query="jacket")
    jacket = replace(jacket, product_category="clothing › women › jacket")
    assert type_reward(jacket, GOAL)[:3] == (1.0, False, True)


# ---- the expert -----------------------------------------------------------------------------
def test_expert_solves_every_panel_task() -> None:
    env = WebshopEnv()
    turns = []
    for task in env.panel(100):
        game, history, obs = play_expert(env, task)
        assert obs.done and obs.won, task.id
        assert game.score() == 1.0 and env.episode_reward(game) == 10.0
        assert game.expert_action() is None
        turns.append(len(history))
    assert sum(turns) / len(turns) == 4.61


def test_expert_recovers_from_random_actions() -> None:
    env = WebshopEnv(max_turns=30)
    rng = random.Random(0)
    wins = sum(play_expert(env, t, 0.3, rng)[2].won for t in env.panel(100))
    assert wins == 89  # ≥ 85 required; the misses are random "buy now" clicks


def test_search_finds_the_target_on_the_first_page() -> None:
    env = WebshopEnv()
    for task in env.panel(100):
        goal = env.goal(task.split, task.index)
        ranked = env.shop.search(goal_query(goal.instruction), env.params.max_results)
        assert goal.asin in ranked[: env.params.results_per_page], task.id


def test_expert_pages_or_searches_again() -> None:
    env = WebshopEnv()
    # eval 1: "black" lists the target on page 5 of 5; searching again is shorter
    game = env.new_game(env.task("eval", 1))
    game.step("search[black]")
    assert game.n_pages == 5 and game.results.index(game.goal.asin) == 40
    assert game.expert_action() == "click[back to search]"
    assert env.expert_thought(game, "click[back to search]") == "search again"
    # eval 3: "black" lists the target on page 2: the expert pages there and opens it
    game = env.new_game(env.task("eval", 3))
    game.step("search[black]")
    assert game.results.index(game.goal.asin) == 14
    assert game.expert_action() == "click[next >]"
    game.step("click[next >]")
    target = game.goal.asin
    assert game.expert_action() == f"click[{target}]"
    other = next(i for i in game.page_items() if i != target)
    game.step(f"click[{other}]")
    assert game.expert_action() == "click[< prev]"
    assert env.expert_thought(game, "click[< prev]") == "wrong item, go back"
    assert env.expert_thought(game, "click[buy now]") == "find the right item"
    game.step("click[< prev]")
    assert "page 2 of 5" in game.page_text() and game.expert_action() == f"click[{target}]"


# ---- determinism and balance ----------------------------------------------------------------
def test_panel_is_deterministic_and_prefix_stable() -> None:
    first, second = WebshopEnv().panel(50), WebshopEnv().panel(50)
    assert [(t.id, t.goal, t.seed, t.task_type) for t in first] == [
        (t.id, t.goal, t.seed, t.task_type) for t in second
    ]
    assert WebshopEnv().panel(20) == first[:20]
    assert WebshopEnv().panel_hash(first) == WebshopEnv().panel_hash(second)
    assert WebshopEnv(catalog_seed=1).panel(5) != first[:5]


def test_categories_are_balanced_and_goals_webshop_like() -> None:
    env = WebshopEnv()
    tasks = env.panel(70)
    assert Counter(t.task_type for t in tasks) == {c: 10 for c in CATEGORIES}
    assert len(env.shop.products) == 420
    for task in tasks:
        assert task.goal.startswith(("i need", "i am looking", "find me", "i want", "i would"))
        assert ", and price lower than " in task.goal and task.goal.endswith("0.00 dollars")
        goal = env.goal(task.split, task.index)
        assert env.shop.by_id[goal.asin].price < goal.price_upper


def test_train_tasks_are_valid() -> None:
    env = WebshopEnv()
    for task in env.train_tasks(seed=0, step=3, count=4):
        assert task.split == "train" and env.new_game(task).reset().admissible


# ---- pages ----------------------------------------------------------------------------------
def test_pages_and_buttons() -> None:
    env = WebshopEnv()
    game = env.new_game(env.task("eval", 0))
    obs = game.reset()
    assert obs.text == "You are on the search page."
    assert obs.admissible == ("search[<your query>]",)
    obs = game.step("search[black]")
    assert obs.text.startswith("Results for black: page 1 of 5.\n")
    assert obs.admissible[:2] == ("click[back to search]", "click[next >]")
    assert len(obs.admissible) == 12 and len(obs.text.split("\n")) == 11
    first = game.page_items()[0]
    product = game.shop.by_id[first]
    assert f"{first}: {product.title}, ${product.price:.2f}" in obs.text
    obs = game.step("click[next >]")
    assert "page 2 of 5" in obs.text and "click[< prev]" in obs.admissible
    assert game.step("click[< prev]").text.startswith("Results for black: page 1 of 5.")
    obs = game.step(f"click[{first}]")
    assert obs.text.startswith(f"Item {first}: {product.title}\nPrice: $")
    assert obs.text.endswith("Selected: none")
    assert obs.admissible[:4] == (
        "click[back to search]",
        "click[< prev]",
        "click[description]",
        "click[features]",
    )
    assert obs.admissible[-1] == "click[buy now]"
    name, values = product.options[0]
    obs = game.step(f"click[{values[-1]}]")
    assert obs.text.endswith(f"Selected: {name} {values[-1]}")
    obs = game.step("click[description]")
    assert obs.text == f"Description of {first}:\n{product.description}"
    assert obs.admissible == ("click[back to search]", "click[< prev]")
    assert game.step("click[< prev]").text.endswith(f"Selected: {name} {values[-1]}")
    assert game.step("click[features]").text.startswith(f"Features of {first}:\n")
    game.step("click[< prev]")
    obs = game.step("click[back to search]")
    assert obs.text == "You are on the search page." and game.selected == {}


def test_invalid_actions_are_no_ops_and_turns_run_out() -> None:
    env = WebshopEnv(max_turns=4)
    game = env.new_game(env.task("eval", 1))
    obs = game.reset()
    assert game.step(None).text == obs.text and game.turns == 1
    assert game.step("click[buy now]").text == obs.text  # not admissible on the search page
    obs = game.step("search[ zzz ]")
    assert obs.text == "No results for zzz." and obs.admissible == ("click[back to search]",)
    obs = game.step("click[back to search]")
    assert obs.done and not obs.won and game.score() == 0.0 and env.episode_reward(game) == 0.0


def test_buying_the_wrong_option_scores_below_one() -> None:
    env = WebshopEnv()
    game = env.new_game(env.task("eval", 0))
    while game.page != "item":
        game.step(game.expert_action())
    obs = game.step("click[buy now]")  # no option chosen
    goal = game.goal
    expected = (len(goal.attributes) + 1) / (len(goal.attributes) + len(goal.options) + 1)
    assert obs.done and not obs.won and game.score() == pytest.approx(expected, abs=1e-12)
    assert obs.text == f"Thank you for shopping. Your score is {expected:.2f}."
    assert obs.admissible == () and game.expert_action() is None


# ---- prompt, parser, vocabulary ---------------------------------------------------------------
def test_prompt_layout() -> None:
    env = WebshopEnv()
    task = env.task("eval", 4)
    game = env.new_game(task)
    obs = game.reset()
    prompt = env.render_prompt(task, [], obs, 0)
    assert prompt == (
        "Current observation: You are on the search page.\n"
        "Admissible actions: search[ <your query> ]\n"
        f"Your task is to: {task.goal}\n"
        "Answer with <think> your reasoning </think> <action> one admissible action </action>."
    )
    history = [("obs one", "click[x]"), ("Results for a: page 1 of 5.\nb0aaaa: t, $1.00", "y")]
    history.insert(0, ("obs zero", "click[z]"))
    prompt = env.render_prompt(task, history, obs, 3)
    assert "obs zero" not in prompt and "b0aaaa" not in prompt
    assert prompt.startswith("Observation: obs one\nAction: click[x]\n")
    assert "Observation: Results for a: page 1 of 5.\nAction: y\nCurrent observation: " in prompt
    assert prompt.index("Admissible actions") < prompt.index(f"Your task is to: {task.goal}")
    assert "obs one" not in WebshopEnv(history_length=0).render_prompt(task, history, obs, 3)


def test_parser_forms() -> None:
    env = WebshopEnv()
    game = env.new_game(env.task("eval", 0))
    search_page = game.reset().admissible
    results = game.step(game.expert_action()).admissible
    target = game.goal.asin
    title = game.shop.by_id[target].title

    def parse(
        body: str, admissible: tuple[str, ...], think: str = "<think>ok</think>"
    ) -> str | None:
        return env.parse(f"{think}<action>{body}</action>", admissible).action

    assert parse("search[long lasting perfume]", search_page) == "search[long lasting perfume]"
    spaced = "<think> ok </think> <action> search [ long lasting perfume ] </action>"
    assert env.parse(spaced, search_page).action == "search[long lasting perfume]"
    assert parse("SEARCH [ 3 . 4 fl oz Perfume ]", search_page) == "search[3.4 fl oz perfume]"
    assert parse(f"click[{target}]", results) == f"click[{target}]"
    assert parse(f"click [ {target.upper()} ]", results) == f"click[{target}]"
    assert parse(f"click[{title}]", results) == f"click[{target}]"  # a title clicks its id
    assert parse("click [ next > ]", results) == "click[next >]"
    assert parse("click [ back to search ]", results) == "click[back to search]"
    item = game.step(f"click[{target}]").admissible
    assert parse("click [ < prev ]", item) == "click[< prev]"
    assert parse("Click [ Buy Now ]", item) == "click[buy now]"

    invalid = [
        "<think>ok</think><action>click[buy now]",  # unclosed tag
        "<think>ok</think><action>click[buy now]</action><action>click[< prev]</action>",
        "<action>click[buy now]</action>",  # no think block
        "<think>ok</think><action>click[buy now] click[< prev]</action>",  # two actions
        "<think>ok</think><action>click[b0zzzz]</action>",  # not admissible here
        "<think>ok</think><action>search[hoodie]</action>",  # search on an item page
        "<think>ok</think><action>buy now</action>",  # no verb
        "<think>ok</think><action></action>",
        "<think>ok</think><action>click</action> trailing text",
        "",
    ]
    for text in invalid:
        parsed = env.parse(text, item)
        assert not parsed.valid and parsed.reason, text
    assert not env.parse("<think>ok</think><action>search[ ]</action>", search_page).valid


def test_vocabulary_covers_prompts_and_expert_responses() -> None:
    env = WebshopEnv()
    vocab = set(env.vocabulary())
    assert len(vocab) < 1500
    seen = played_words(env, env.panel(100, split="train"), wander(0.2), seed=1)
    assert seen - vocab == set()
    assert "think" not in seen


def test_word_tokenizer_round_trip() -> None:
    """No prompt or expert response hits an unknown token of the tiny models' word tokenizer
    (its pre-tokenizer glues adjacent punctuation such as "[<"), and a decoded response, spaced
    around every token, parses back to the expert's action."""
    from sdar_bench.policy.tokenizer import build_word_tokenizer

    env = WebshopEnv()
    tokenizer = build_word_tokenizer([" ".join(env.vocabulary())])
    unk = tokenizer.unk_token_id
    rng = random.Random(2)
    for task in env.panel(20):
        game = env.new_game(task)
        obs = game.reset()
        history: list[tuple[str, str]] = []
        while not obs.done:
            prompt = env.render_prompt(task, history, obs, len(history))
            assert unk not in tokenizer(prompt, add_special_tokens=False)["input_ids"], prompt
            action = game.expert_action()
            assert action is not None
            ids = tokenizer(env.format_response(action, "go"), add_special_tokens=False)
            assert unk not in ids["input_ids"]
            decoded = tokenizer.decode(ids["input_ids"], skip_special_tokens=True)
            assert env.parse(decoded, obs.admissible).action == action, decoded
            if rng.random() < 0.3:
                action = rng.choice(obs.admissible)
            history.append((obs.text, action))
            obs = game.step(action)


def test_skill_bank_files() -> None:
    from importlib.resources import files

    vocab = set(WebshopEnv().vocabulary())
    folder = files("sdar_bench") / "skills" / "webshop"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".md"))
    assert names == sorted(f"{n}.md" for n in ("general", *CATEGORIES))
    for path in folder.iterdir():
        if path.name.endswith(".md"):
            text = path.read_text()
            assert text.startswith("# ") and len(text.split()) <= 62
            assert set(words(text)) <= vocab


def test_expert_thoughts_are_short() -> None:
    env = WebshopEnv()
    for task in env.panel(20):
        game = env.new_game(task)
        obs = game.reset()
        while not obs.done:
            action = game.expert_action()
            assert 2 <= len(env.expert_thought(game, action).split()) <= 5
            obs = game.step(action)


# ---- env conventions ------------------------------------------------------------------------
def test_env_class_attributes_and_metrics() -> None:
    assert WebshopEnv.name == "webshop" and WebshopEnv.task_types == CATEGORIES
    assert WebshopEnv.invalid_penalty == 0.1 and WebshopEnv.reward_scale == 10.0
    assert WebshopEnv.eval_temperature == 0.4 and WebshopEnv.default_c_kl == 0.01
    env = WebshopEnv()
    assert (env.params.max_turns, env.params.history_length) == (15, 2)
    tasks = env.panel(3)  # apparel, footwear, home_decor
    metrics = env.metrics(list(zip(tasks, [1.0, 0.5, 0.0], strict=True)))
    assert metrics["score"] == 50.0
    assert metrics["accuracy"] == metrics["success/all"] == pytest.approx(100 / 3)
    assert metrics["success/apparel"] == 100.0 and metrics["success/footwear"] == 0.0
    assert "success/electronics" not in metrics
    assert WebshopEnv.table_columns()[-2:] == ["score", "accuracy"]
    assert WebshopEnv.table_columns()[:-2] == [f"success/{c}" for c in CATEGORIES]


# ---- real data ------------------------------------------------------------------------------
def test_real_data_fixture() -> None:
    env = WebshopEnv(data_dir=str(FIXTURE))
    assert [p.category for p in env.shop.products] == [
        "apparel",
        "beauty_health",
        "electronics",
        "other",
    ]
    hoodie = env.shop.by_id["b09qkp7xql"]
    assert hoodie.price == 18.99 and hoodie.attributes == ("long sleeve", "machine wash")
    assert dict(hoodie.options)["size"] == ("small", "medium", "x-large")
    assert dict(env.shop.by_id["b08hj5wq4n"].options)["color"] == ("black", "blue | grey")
    tasks = env.panel(3)
    assert [t.task_type for t in tasks] == ["apparel", "beauty_health", "electronics"]
    for task in tasks:
        game, _, obs = play_expert(env, task)
        assert obs.won and game.score() == 1.0, task.id
    assert env.task("train", 4).goal == tasks[1].goal  # small goal lists cycle in every split
    assert {"hoodie", "lavender", "speaker"} <= set(env.vocabulary())


def test_missing_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data_dir"):
        WebshopEnv(data_dir=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="data_dir"):
        WebshopEnv(data_dir=str(tmp_path))  # exists, but holds no WebShop file


def test_category_of_real_paths() -> None:
    shoes = "Clothing, Shoes & Jewelry › Women › Shoes › Sandals"
    assert category_of("fashion", shoes) == "footwear"
    assert category_of("food", "Grocery & Gourmet Food › Pantry Staples › Dressings") == "other"
    assert category_of("furniture", "Home & Kitchen › Furniture › Bedroom") == "home_decor"
    assert category_of("", "") == "other"
