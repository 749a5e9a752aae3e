"""The reactive expert: the next command from any state, plus a short reason for it.

Unlike ALFWorld's hand-coded expert it does not know where objects are: it searches the room in
listing order (``_fetch``), so its choices follow from what the prompt shows and a small model
can imitate them. It recomputes its subgoal from the state on every call, so it recovers from
any detour: a wrong object in hand is put down, a closed container is opened, a
transformed-then-misplaced object is fetched again.
Every command it returns is admissible in the state it was computed from.
"""

from __future__ import annotations

from sdar_bench.envs.alfworld.world import (
    APPLIANCE_OF,
    LAMP,
    VERB_OF,
    World,
    kind,
    name_key,
)
from sdar_bench.envs.base import ExpertStep

# The expert's reasons; ``vocabulary`` reads their words from here.
THOUGHT_TEMPLATES: tuple[str, ...] = (
    "find the {o}",
    "find another {o}",
    "take the {o}",
    "heat the {o}",
    "cool the {o}",
    "clean the {o}",
    "put it in {r}",
    "put down the {o}",
    "go to the desklamp",
    "turn on the desklamp",
    "work toward the goal",
)
FALLBACK_THOUGHT = "work toward the goal"


def plan(world: World) -> ExpertStep | None:
    """The expert's next step, or None once the goal holds."""
    if world.won():
        return None
    goal = world.goal
    if world.held is not None and kind(world.held) != goal.obj_type:
        return _put_down(world, world.held)
    if goal.task_type == "look":
        return _light_up(world) if world.held is not None else _fetch(world)
    return _deliver(world, world.held) if world.held is not None else _fetch(world)


def _reach(world: World, recep: str, thought: str) -> ExpertStep | None:
    """Go to ``recep`` and open it if needed; None once standing at it with it open."""
    if world.location != recep:
        return ExpertStep(f"go to {recep}", thought)
    if world.is_closed(recep):
        return ExpertStep(f"open {recep}", thought)
    return None


def _put_down(world: World, obj: str) -> ExpertStep:
    """Drop a useless object where we stand (the first open surface if we stand nowhere)."""
    thought = f"put down the {kind(obj)}"
    here = world.location
    if here is None:
        here = next(r for r in world.receptacles if not world.is_closed(r))
    return _reach(world, here, thought) or ExpertStep(f"move {obj} to {here}", thought)


def _fetch(world: World) -> ExpertStep:
    """Search for a goal object the way an agent without a map must, then take it.

    The search is a function of what the prompt shows (where we stand and what is in sight):
    take a goal object in sight, else open the closed receptacle we stand at, else go to the
    next receptacle in the room's listing order after this one. A policy that imitates it needs
    no hidden knowledge of where things are.
    """
    goal = world.goal
    here = world.location
    placed = len(world.objects_of(goal.obj_type)) - len(_candidates(world))
    find = f"find another {goal.obj_type}" if placed else f"find the {goal.obj_type}"
    if here is not None and not world.is_closed(here):
        in_sight = [o for o in world.contents[here] if o in _candidates(world)]
        if in_sight:
            # An object already transformed saves the appliance trip.
            obj = min(in_sight, key=lambda o: (not world.has_condition(o), name_key(o)))
            return ExpertStep(f"take {obj} from {here}", f"take the {goal.obj_type}")
    if here is not None and world.is_closed(here) and here in _search_order(world):
        return ExpertStep(f"open {here}", find)
    return ExpertStep(f"go to {_next_place(world)}", find)


def _candidates(world: World) -> list[str]:
    """Goal objects not yet in place."""
    goal = world.goal
    return [o for o in world.objects_of(goal.obj_type) if not world.counts_for_goal(o)]


def _search_order(world: World) -> list[str]:
    """Where to look, in listing order: never a goal receptacle (objects start elsewhere),
    unless a stray action has put a goal object there."""
    goal = world.goal
    candidates = set(_candidates(world))
    return [
        r
        for r in world.receptacles
        if kind(r) != goal.recep_type or candidates & set(world.contents[r])
    ]


def _next_place(world: World) -> str:
    """The receptacle after the current one in the search order, cyclically."""
    order = _search_order(world)
    here = world.location
    if here is None or here not in world.receptacles:
        return order[0]
    start = world.receptacles.index(here)
    after = [r for r in world.receptacles[start + 1 :] + world.receptacles[: start + 1]]
    return next(r for r in after if r in order and r != here)


def _deliver(world: World, obj: str) -> ExpertStep:
    """Transform the held goal object if the goal asks for it, then put it in a goal receptacle."""
    goal = world.goal
    if not world.has_condition(obj):
        assert goal.condition is not None
        appliance, verb = APPLIANCE_OF[goal.condition], VERB_OF[goal.condition]
        thought = f"{verb} the {goal.obj_type}"
        if world.location != appliance:
            return ExpertStep(f"go to {appliance}", thought)
        return ExpertStep(f"{verb} {obj} with {appliance}", thought)
    target = _goal_receptacle(world)
    thought = f"put it in {goal.recep_type}"
    return _reach(world, target, thought) or ExpertStep(f"move {obj} to {target}", thought)


def _goal_receptacle(world: World) -> str:
    """The goal receptacle to use: the one we stand at, else an open one, else the first."""
    options = [r for r in world.receptacles if kind(r) == world.goal.recep_type]
    return min(options, key=lambda r: (r != world.location, world.is_closed(r), name_key(r)))


def _light_up(world: World) -> ExpertStep:
    """Holding the object to look at: go to the desklamp and switch it on."""
    host = world.scene.lamp_host
    if world.location != host:
        return ExpertStep(f"go to {host}", "go to the desklamp")
    return ExpertStep(f"use {LAMP}", "turn on the desklamp")
