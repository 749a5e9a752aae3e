"""The action parsers never crash on model output, and say "invalid" cleanly when they refuse it.

Every env's ``parse`` gets random text, adversarial tag soup (unclosed, nested, repeated, tags
inside ``<think>``), 100k-character strings and bytes decoded the ways a detokeniser might, on
real observations of each env. The outcome must be either the invalid turn (``action is None``
with a reason) or an action the env accepts as is: admissible (ALFWorld), a canonical
``search[...]`` / admissible ``click[...]`` that the game applies unchanged (WebShop), or
``search: q`` / ``answer: a`` that the game decodes back (Search-QA).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sdar_bench.envs import Env, Observation, make_env
from sdar_bench.envs.base import Game
from sdar_bench.envs.parsing import ParsedTurn, normalize_command
from sdar_bench.envs.searchqa.engine import decode_action
from sdar_bench.envs.webshop.engine import SEARCH_ACTION, canonical_action

# Small engines: the parser does not depend on their size, and building them stays cheap.
ENV_PARAMS: dict[str, dict[str, object]] = {
    "alfworld": {"n_receptacles": 3, "n_distractors": 1},
    "webshop": {"catalog_size": 70},
    "searchqa": {"n_people": 12, "n_cities": 4, "n_countries": 2, "n_orgs": 2, "n_works": 2},
}
# The tags the parser knows (SPEC §1), spelled here independently of parsing._TAG.
KNOWN_TAG = re.compile(r"</?(think|action|search|answer)>")
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class State:
    """A real observation of an env, and how to reach it again in a fresh game."""

    name: str
    env: Env
    replay: tuple[str, ...]  # actions from reset to this observation
    obs: Observation

    def game(self) -> Game:
        game = self.env.new_game(self.env.task("eval", 0))
        game.reset()
        for action in self.replay:
            game.step(action)
        return game

    @property
    def id(self) -> str:
        return f"{self.name}@{len(self.replay)}"


@cache
def states() -> tuple[State, ...]:
    """Each env at reset; WebShop also on a results page and an item page, where clicks count."""
    out = []
    for name, params in ENV_PARAMS.items():
        env = make_env(name, **params)
        game = env.new_game(env.task("eval", 0))
        obs, replay = game.reset(), []
        out.append(State(name, env, (), obs))
        for _ in range(2 if name == "webshop" else 0):
            action = game.expert_action()
            assert action is not None
            obs = game.step(action)
            replay.append(action)
            out.append(State(name, env, tuple(replay), obs))
    return tuple(out)


STATE_IDS = [s.id for s in states()]


def check_outcome(state: State, text: str, parsed: ParsedTurn, step: bool = True) -> None:
    """The invariant every parse must meet: a clean invalid turn, or an action the env takes."""
    assert isinstance(parsed, ParsedTurn)
    if parsed.action is None:
        assert not parsed.valid
        assert isinstance(parsed.reason, str) and parsed.reason, "an invalid turn says why"
        return
    assert parsed.valid and parsed.reason == ""
    action, admissible = parsed.action, state.obs.admissible
    # Only a response with a think block and an answer block can be valid.
    assert "<think>" in text and "</think>" in text
    assert f"<{parsed.kind}>" in text and f"</{parsed.kind}>" in text
    if state.name == "alfworld":
        assert parsed.kind == "action"
        assert admissible is not None and action in admissible
    elif state.name == "webshop":
        assert parsed.kind == "action" and admissible is not None
        if action.startswith("search["):
            assert SEARCH_ACTION in admissible and action != "search[< your query >]"
            query = action[len("search[") : -1]
            assert action.endswith("]") and query.strip()
            assert "]" not in query and "[" not in query
        else:
            assert action in admissible
        # The game re-reads the action with the same rules: it must take it unchanged.
        assert canonical_action(action, admissible, state.env.shop.title_ids) == (action, "")
    else:
        assert parsed.kind in ("search", "answer") and admissible is None
        decoded = decode_action(action)
        assert decoded is not None and decoded[0] == parsed.kind
        assert decoded[1] == normalize_command(decoded[1]) and decoded[1]
    if step and len(action) < 2_000:  # the env's own step must take what the parser passed on
        state.game().step(action)


def answer_tag(state: State) -> str:
    """A tag that can carry this env's answer."""
    return "answer" if state.name == "searchqa" else "action"


def parse_and_check(state: State, text: str, step: bool = True) -> ParsedTurn:
    parsed = state.env.parse(text, state.obs.admissible)
    check_outcome(state, text, parsed, step)
    return parsed


# ---- strategies --------------------------------------------------------------------------------
TAGS = ("think", "action", "search", "answer", "information")
TAG_PIECES = (
    *(f"<{t}>" for t in TAGS), *(f"</{t}>" for t in TAGS),
    "<Think>", "<THINK>", "< think>", "<think >", "<think", "think>", "</", "<", ">", "<//think>",
    "<action/>", "<answer></answer>", "<think></think>", "<search></search>",
)  # fmt: skip
NOISE_PIECES = (
    "", " ", "\n", "\t", "\r\n", "\x00", "\x1b[31m", "\u00a0", "\u2028", "\u200b", "\ufeff",
    "\ufffd", "search[", "click[", "[", "]", "search: ", "answer: ", ":", "<your query>",
    "back to search", "< prev", "next >", "buy now", "look", "go to", "é", "İ", "ß", "🙂",
)  # fmt: skip
# Unicode text with control characters; lone surrogates are left to the bytes strategies.
any_text = st.text(st.characters(codec="utf-8"), max_size=300)


def tag_soup(state: State) -> st.SearchStrategy[str]:
    """Concatenations of tags, noise, the state's own admissible actions and random text."""
    pieces = [*TAG_PIECES, *NOISE_PIECES, *(state.obs.admissible or ())]
    piece = st.sampled_from(pieces) | st.text(st.characters(codec="utf-8"), max_size=12)
    return st.lists(piece, max_size=40).map("".join)


def tagged(state: State) -> st.SearchStrategy[str]:
    """Sequences of blocks, each with or without its opening and closing tag."""
    names = ("think", "action", "search", "answer", "information")
    actions = st.sampled_from(state.obs.admissible or ("who wrote it", "paris"))
    body = actions | any_text | tag_soup(state)
    block = st.builds(
        lambda name, inner, open_, close: (
            (f"<{name}>" if open_ else "") + inner + (f"</{name}>" if close else "")
        ),
        st.sampled_from(names),
        body,
        st.booleans(),
        st.booleans() | st.just(True),
    )
    return st.lists(block, min_size=1, max_size=5).map("".join)


@st.composite
def near_miss(draw: st.DrawFn, state: State) -> str:
    """A well-formed response, then up to three edits (insert a piece, cut a span, repeat a
    span): valid turns and those one edit away from valid, where a parser's corners are."""
    tag = draw(st.sampled_from(["search", "answer"] if state.name == "searchqa" else ["action"]))
    body = draw(st.sampled_from(state.obs.admissible or ("who wrote it", "paris")) | any_text)
    thought = draw(st.text(st.characters(codec="utf-8"), max_size=40))
    text = f"<think>{thought}</think><{tag}>{body}</{tag}>"
    piece = st.sampled_from([*TAG_PIECES, *NOISE_PIECES]) | st.text(max_size=5)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, len(text)))
        edit = draw(st.sampled_from(["insert", "cut", "repeat"]))
        if edit == "insert":
            text = text[:i] + draw(piece) + text[i:]
        elif edit == "cut":
            text = text[:i] + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


def decoded_bytes() -> st.SearchStrategy[str]:
    """Bytes turned into text the ways a detokeniser or a log reader might."""
    decoders: list[Callable[[bytes], str]] = [
        lambda b: b.decode("utf-8", errors="replace"),
        lambda b: b.decode("utf-8", errors="surrogateescape"),  # lone surrogates
        lambda b: b.decode("utf-8", errors="backslashreplace"),
        lambda b: b.decode("latin-1"),
        lambda b: b.decode("cp1252", errors="replace"),
        lambda b: b.decode("utf-16-le", errors="replace"),
        lambda b: b.decode("utf-8", errors="ignore"),
    ]
    raw = st.binary(max_size=300) | st.lists(
        st.sampled_from([b"<think>", b"</think>", b"<action>", b"</action>", b"\xff", b"\xc3"])
        | st.binary(max_size=8),
        max_size=30,
    ).map(b"".join)
    return st.tuples(raw, st.sampled_from(decoders)).map(lambda pair: pair[1](pair[0]))


def mojibake(text: str) -> str:
    """UTF-8 read as latin-1: "é" → "Ã©", the usual double-decoding accident."""
    return text.encode("utf-8", errors="surrogatepass").decode("latin-1")


# ---- properties --------------------------------------------------------------------------------
@pytest.mark.parametrize("state", states(), ids=STATE_IDS)
@PROPERTY
@given(text=any_text)
@example(text="")
@example(text="\x00\x01\x02\x7f\x80\x9f")
@example(text="<think>")
def test_arbitrary_text_never_crashes(state: State, text: str) -> None:
    parse_and_check(state, text)


@pytest.mark.parametrize("state", states(), ids=STATE_IDS)
@PROPERTY
@given(data=st.data())
def test_tag_soup_gives_a_valid_action_or_a_clean_invalid_turn(
    state: State, data: st.DataObject
) -> None:
    text = data.draw(tag_soup(state) | tagged(state) | near_miss(state))
    parse_and_check(state, text)


@pytest.mark.parametrize("state", states(), ids=STATE_IDS)
@PROPERTY
@given(text=decoded_bytes())
def test_bytes_decoded_any_way_never_crash(state: State, text: str) -> None:
    parse_and_check(state, text)
    parse_and_check(state, mojibake(text))


def _respell(action: str, cases: list[bool], gaps: list[str]) -> str:
    """An action as a model might print it: letters re-cased, words spaced differently."""
    words = action.split(" ")
    spelled = [w.upper() if up else w for w, up in zip(words, cases, strict=True)]
    return "".join(
        w + (gaps[i % len(gaps)] if i < len(words) - 1 else "") for i, w in enumerate(spelled)
    )


thinking = st.text(st.characters(codec="utf-8"), max_size=200).filter(
    lambda t: KNOWN_TAG.search(t) is None
)
spacing = st.sampled_from(["", " ", "\n", " \n\t ", "\r\n"])


@pytest.mark.parametrize(
    "state",
    [s for s in states() if s.obs.admissible],
    ids=[s.id for s in states() if s.obs.admissible],
)
@PROPERTY
@given(data=st.data(), thought=thinking, before=spacing, between=spacing, after=spacing)
def test_well_formed_response_yields_exactly_its_admissible_action(
    state: State, data: st.DataObject, thought: str, before: str, between: str, after: str
) -> None:
    """Case and spacing are forgiven; the canonical admissible string comes back."""
    assert state.obs.admissible is not None
    action = data.draw(
        st.sampled_from(
            [a for a in state.obs.admissible if a != SEARCH_ACTION] or ["search[hoodie]"]
        )
    )
    n = len(action.split(" "))
    cases = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    gaps = data.draw(
        st.lists(st.sampled_from([" ", "  ", "\t", "\n", " \u00a0"]), min_size=1, max_size=3)
    )
    body = _respell(action, cases, gaps)
    text = f"{before}<think>{thought}</think>{between}<action>{body}</action>{after}"
    parsed = parse_and_check(state, text)
    assert parsed.action == action, (text, parsed)


@pytest.mark.parametrize("kind", ["search", "answer"])
@PROPERTY
@given(thought=thinking, body=thinking, between=spacing)
def test_searchqa_well_formed_response_yields_its_normalised_text(
    kind: str, thought: str, body: str, between: str
) -> None:
    (state,) = [s for s in states() if s.name == "searchqa"]
    text = f"<think>{thought}</think>{between}<{kind}>{body}</{kind}>"
    parsed = parse_and_check(state, text)
    if body.split():
        assert (parsed.action, parsed.kind) == (f"{kind}: {normalize_command(body)}", kind)
    else:
        assert parsed.action is None and parsed.reason == f"empty <{kind}>"


@pytest.mark.parametrize("state", states(), ids=STATE_IDS)
@settings(max_examples=25, deadline=None)  # each example is up to 100k characters: keep it few
@given(
    piece=st.sampled_from(
        [*TAG_PIECES, "a", " ", "search[", "[", "]", "\ufffd", "<think><action>"]
    ),
    count=st.integers(1_000, 50_000),
    wrap=st.booleans(),
)
def test_huge_repetitions_stay_fast_and_clean(
    state: State, piece: str, count: int, wrap: bool
) -> None:
    text = piece * count
    if wrap:
        tag = answer_tag(state)
        text = f"<think>{text}</think><{tag}>{text}</{tag}>"
    started = time.perf_counter()
    parse_and_check(state, text[:200_000], step=False)
    # Linear-time parsing takes milliseconds here; a quadratic path would take minutes.
    assert time.perf_counter() - started < 5.0


# ---- targeted examples with exact outcomes -----------------------------------------------------
def _state(name: str, replay_len: int = 0) -> State:
    return next(s for s in states() if s.name == name and len(s.replay) == replay_len)


@pytest.mark.parametrize("name", ["alfworld", "webshop", "searchqa"])
@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("", "needs exactly one leading <think> block"),
        ("{act}", "needs exactly one leading <think> block"),  # no think at all
        ("<think>x</think>", "needs exactly one answer block, got 0"),
        ("<think>x</think>{act}{act}", "needs exactly one answer block, got 2"),
        ("<think>x</think><think>y</think>{act}", "needs exactly one leading <think> block"),
        ("{act}<think>x</think>", "needs exactly one leading <think> block"),  # wrong order
        ("<think>I will answer {act}</think>", "<{tag}> inside <think>"),  # only inside think
        ("<think>x {act}</think>{act}", "<{tag}> inside <think>"),  # tags in think are refused
        ("<think>x", "unclosed <think>"),
        ("<think>x</think><{tag}>y", "unclosed <{tag}>"),
        ("<think>x</{tag}>", "unclosed <think>"),
        ("</think>{act}", "stray </think>"),
        ("so: <think>x</think>{act}", "text outside the tags"),
        ("<think>x</think> and then {act}", "text outside the tags"),
        ("<think>x</think>{act} done", "text after the last tag"),
        ("<think>x</think><{tag}>  \n </{tag}>", "empty <{tag}>"),
        ("<think>x</think><information>y</information>", "text after the last tag"),
        # Search-R1-style models write the retrieval result themselves: refused, not truncated.
        ("<think>x</think>{act}<information>made up</information>", "text after the last tag"),
    ],
)
def test_malformed_responses_give_the_documented_reason(
    name: str, template: str, reason: str
) -> None:
    state = _state(name)
    tag = answer_tag(state)
    action = (state.obs.admissible or ("paris",))[0]
    act = f"<{tag}>{action}</{tag}>"
    parsed = parse_and_check(state, template.format(act=act, tag=tag))
    assert parsed.action is None and parsed.reason == reason.format(tag=tag)


@pytest.mark.parametrize(
    ("name", "replay_len", "body", "expected"),
    [
        ("alfworld", 0, "look", "look"),
        ("alfworld", 0, "  Go   TO\ncabinet 1 ", "go to cabinet 1"),
        ("alfworld", 0, "go to cabinet 99", None),  # not admissible
        ("alfworld", 0, "look. inventory", None),
        ("webshop", 0, "search [ Long  Lasting Perfume ]", "search[long lasting perfume]"),
        ("webshop", 0, "search[]", None),
        ("webshop", 0, "search[<your query>]", None),  # the template copied as is
        ("webshop", 0, "Search [ < Your  Query > ]", None),
        ("webshop", 0, "search[<your query> hoodie]", "search[< your query > hoodie]"),
        ("webshop", 0, "search[a] click[b]", None),  # two actions in one block
        ("webshop", 0, "click[buy now]", None),  # no such button on the search page
        ("webshop", 1, "search[hoodie]", None),  # no search box on a results page
        ("webshop", 1, "click [ Back To Search ]", "click[back to search]"),
        ("webshop", 2, "click[<prev]", "click[< prev]"),
        ("webshop", 2, "click[ < prev]", "click[< prev]"),
        ("searchqa", 0, "<search>Who  Wrote it</search>", "search: who wrote it"),
        ("searchqa", 0, "<answer>Paris</answer>", "answer: paris"),
        ("searchqa", 0, "<answer>a: b</answer>", "answer: a: b"),
        ("searchqa", 0, "<action>paris</action>", None),
    ],
)
def test_well_formed_examples(name: str, replay_len: int, body: str, expected: str | None) -> None:
    state = _state(name, replay_len)
    answer = body if name == "searchqa" else f"<action>{body}</action>"
    parsed = parse_and_check(state, f"<think>because</think>\n{answer}")
    assert parsed.action == expected, parsed


@pytest.mark.parametrize("state", states(), ids=STATE_IDS)
def test_huge_well_formed_and_broken_responses(state: State) -> None:
    """100k characters of thought still parse; 100k of nesting or junk is a clean refusal."""
    tag = answer_tag(state)
    offered = [a for a in state.obs.admissible or ("paris",) if a != SEARCH_ACTION]
    action = offered[-1] if offered else "search[hoodie]"
    big = "x" * 100_000
    parsed = parse_and_check(state, f"<think>{big}</think><{tag}>{action}</{tag}>")
    assert parsed.valid
    for text in (
        "<think>" * 20_000,
        "<think><action>" * 10_000 + "</action></think>" * 10_000,
        f"<think></think><{tag}>" + "<think>" * 20_000,
        big,
        f"<think>x</think><{tag}>{action}</{tag}>" * 5_000,
        "\ufffd" * 100_000,
    ):
        started = time.perf_counter()
        assert not parse_and_check(state, text, step=False).valid
        assert time.perf_counter() - started < 5.0


# ---- suite files: any value in any field is a suite or a one-line SpecError --------------------
_SUITE_FIELDS = (
    "name", "models", "envs", "methods", "seeds", "train", "eval", "warmstart", "policy",
    "env_params", "overrides", "tune", "train.steps", "train.lr", "eval.temperature",
    "warmstart.lr", "policy.lora", "methods.0.sdar", "methods.0.sdar.beta",
    "env_params.alfworld", "env_params.alfworld.max_turns", "overrides.0.when",
    "overrides.0.method_params", "tune.space", "tune.space.beta",
)  # fmt: skip
_yaml_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(st.characters(codec="utf-8"), max_size=20)
    | st.sampled_from(["1e-4", "8", ".inf", "..", "../x", "sdar", "grpo", "alfworld", "[]", "{}"])
)  # fmt: skip
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    node: object = data
    for part in parents:
        if isinstance(node, list):
            # an earlier edit may have replaced the list, or emptied it: the field is gone
            if not node or not part.isdigit():
                return
            node = node[int(part)] if int(part) < len(node) else node[-1]
        elif isinstance(node, dict):
            node = node.setdefault(part, {} if not part.isdigit() else [])
            if part == "overrides" and node == {}:
                node = data["overrides"] = [{}]
        else:
            return
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and node:
        node[min(int(last), len(node) - 1) if last.isdigit() else -1] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.sampled_from(_SUITE_FIELDS), _yaml_values), max_size=3))
def test_any_value_in_a_suite_is_accepted_or_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[str, object]]
) -> None:
    """Whatever a suite holds, load_suite gives a suite or one printable line naming the file:
    never another exception (a crash with a traceback), never a newline or escape sequence."""
    import yaml

    from sdar_bench.config import SpecError, load_suite

    data: dict = {
        "name": "p", "models": ["tiny-qwen-1m"], "envs": ["alfworld"],
        "methods": [{"sdar": {"beta": 5.0}}], "overrides": [{"when": {"env": "alfworld"}}],
    }  # fmt: skip
    for field, value in edits:
        _set(data, field, value)
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        suite = load_suite(path)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and message.isprintable(), message
        return
    assert len(suite.expand()) >= 1
