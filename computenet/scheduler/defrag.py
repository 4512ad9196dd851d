"""Defragmentation: the fewest migrations that make a request fit that fits nowhere as the cluster stands.

A 4-GPU replica can be unplaceable while the cluster has eight free GPUs, scattered one or two per node.
`plan_defrag` proposes moves of running pods (each a restart elsewhere) that open room on one node,
within a disruption budget; `apply_plan` carries a plan out. Planning changes nothing: every candidate
is simulated on the real state with `Trial` and undone, RNG included.

How a plan is found, greedily per target node:
1. For every node that the request's static constraints allow (health, pool, taints, GPU model), list
   the sets of its pods whose eviction would leave room for the request. For whole GPUs it enumerates
   the sets of GPUs the request could take (within one NVLink island when it asks for one) and evicts
   every pod on them: exact, for nodes of up to a dozen GPUs. For a share it empties, per GPU, the
   largest pods first until the share fits. A CPU or memory shortfall left after that is covered by the
   node's other pods, the one covering most of it first.
2. Sort all candidates of all nodes by (pods moved, GPU milli moved, node index) and simulate them in
   that order: evict, check the request passes every filter of the policy on the target, bind it, and
   re-place the evicted pods (largest first, as a gang) with the scheduler's own filters and scorers on
   any node but the target. The first candidate whose pods all find a place is the plan.

Why that is good enough: a plan that frees room on one node by moving only that node's pods straight to
nodes with room already is what an operator can carry out and reason about, and among those plans the
search returns one with the fewest moves: the GPU part is exact for whole GPUs (every GPU set is tried,
and the pods on it must all go) and for a share's milli (largest first), while the CPU/memory cover is
greedy and may, rarely, take a pod more than needed. The request's
other constraints (spread, NVLink island, custom filters) are checked by the simulation, never guessed.
What it misses: chains (moving pod A off node X so that an evicted pod B fits on X), plans that move
pods of several nodes, and evicted pods that would fit only if the scheduler placed them differently than
it does (it takes the policy's choice, not the one that best keeps room for the others). Those need a
search over the whole cluster; when the greedy finds nothing within the budget the request waits, as it
would without a defragmenter. At most `max_attempts` simulations bound the cost of a hopeless request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from itertools import combinations, islice

import numpy as np

from .filters import GpuTypeFilter, HealthFilter, PoolFilter, TaintFilter
from .framework import Scheduler
from .gang import gang_order
from .inventory import MILLI_PER_GPU
from .request import Placement, Request
from .state import BoolArray, ClusterState
from .trial import Trial

Movable = Callable[[Placement], bool]

STATIC_FILTERS = (HealthFilter, PoolFilter, TaintFilter, GpuTypeFilter)
"""Filters whose verdict no eviction changes; they prune target nodes before anything is simulated."""

MAX_GPU_SETS = 4096
"""GPU sets tried per node and island (C(8, 4) = 70; only nodes with many GPUs ever reach it)."""


class StalePlanError(ValueError):
    """A plan no longer matches the cluster: a moved pod left its node, or the request is bound."""


@dataclass(frozen=True)
class Move:
    pod: str
    from_node: int
    to_node: int
    gpus: tuple[int, ...]
    """The GPU indices the pod gets on `to_node`."""


@dataclass(frozen=True)
class DefragPlan:
    target_node: int
    moves: tuple[Move, ...]
    placement: Placement
    """Where the request goes once the moves are done."""


@dataclass(frozen=True)
class DefragResult:
    plan: DefragPlan | None
    reason: str


def anything(_: Placement) -> bool:
    return True


def below_priority(priority: int) -> Movable:
    """Only pods of strictly lower priority than `priority` may be moved."""
    return lambda placement: placement.request.priority < priority


@dataclass(frozen=True)
class _AvoidNodes:
    """Keeps evicted pods off the node they were evicted to make room on."""

    nodes: frozenset[int]
    name: str = "defrag-target"

    def feasible(self, state: ClusterState, req: Request) -> BoolArray:
        ok = np.ones(state.node_count, dtype=bool)
        ok[sorted(self.nodes)] = False
        return ok


@dataclass(frozen=True, order=True)
class _Candidate:
    moves: int
    gpu_milli: int
    node: int
    pods: tuple[str, ...]


def plan_defrag(
    scheduler: Scheduler,
    req: Request,
    *,
    max_moves: int = 4,
    movable: Movable = anything,
    max_attempts: int = 64,
) -> DefragResult:
    """The plan with the fewest moves (then least GPU moved, then lowest node) that lets `req` fit.

    `movable` says which running pods may be moved; at most `max_moves` are, and at most `max_attempts`
    candidate plans are simulated. A request that fits already gets a plan without moves.
    """
    state = scheduler.state
    if req.name in state.placements:
        raise ValueError(f"{req.name} is already bound to {state.names[state.placements[req.name].node]}")
    trial = Trial(state, scheduler.rng)
    decision = scheduler.decide(req)
    trial.undo()
    if decision.placement is not None:
        return DefragResult(DefragPlan(decision.placement.node, (), decision.placement), "fits without moves")
    short = _total_shortfall(state, req)
    if short:
        return DefragResult(None, short)
    allowed = np.ones(state.node_count, dtype=bool)
    for flt in scheduler.policy.filters:
        if isinstance(flt, STATIC_FILTERS):
            allowed &= flt.feasible(state, req)
    candidates = sorted(
        c for node in np.flatnonzero(allowed) for c in _candidates(state, req, int(node), movable)
    )
    if not candidates:
        return DefragResult(None, "no node can be cleared for the request: the pods in the way may not move")
    within = [c for c in candidates if c.moves <= max_moves]
    if not within:
        return DefragResult(
            None, f"budget too small: the fewest moves found is {candidates[0].moves} > max_moves={max_moves}"
        )
    last = ""
    for candidate in within[:max_attempts]:
        plan, last = _simulate(scheduler, req, candidate)
        if plan is not None:
            moved = len(plan.moves)
            return DefragResult(
                plan, f"moving {moved} pod{'s' * (moved != 1)} opens room on {state.names[plan.target_node]}"
            )
    tried = min(len(within), max_attempts)
    return DefragResult(None, f"none of {tried} candidate plans within the budget works (last: {last})")


def apply_plan(state: ClusterState, plan: DefragPlan) -> None:
    """Move the pods and bind the request, all or nothing: on any error the state is as before.

    Raises StalePlanError when the cluster moved on since planning, CapacityError when a destination
    no longer has room.
    """
    name = plan.placement.request.name
    if name in state.placements:
        raise StalePlanError(f"{name} is already bound")
    for move in plan.moves:
        current = state.placements.get(move.pod)
        if current is None or current.node != move.from_node:
            raise StalePlanError(f"{move.pod} is no longer on {state.names[move.from_node]}")
    trial = Trial(state)
    try:
        evicted = [trial.unbind(move.pod) for move in plan.moves]
        for move, old in zip(plan.moves, evicted, strict=True):
            trial.bind(Placement(old.request, move.to_node, move.gpus))
        trial.bind(plan.placement)
    except BaseException:
        trial.undo()
        raise


def _total_shortfall(state: ClusterState, req: Request) -> str:
    """Why no moves can help: moves shift what is used, so the free total must cover the request."""
    healthy = state.node_healthy
    totals = (
        ("GPU milli", int(state.gpu_free[healthy].sum()), req.gpu_demand_milli),
        ("CPU milli", int(state.cpu_free[healthy].sum()), req.cpu_milli),
        ("memory MiB", int(state.mem_free[healthy].sum()), req.memory_mib),
    )
    for what, free, need in totals:
        if free < need:
            return f"not enough free {what} in total: {free} free on healthy nodes, {need} needed"
    return ""


def _candidates(state: ClusterState, req: Request, node: int, movable: Movable) -> list[_Candidate]:
    """Sets of `node`'s pods whose eviction leaves room for `req` there, deduplicated."""
    pods = [state.placements[name] for name in sorted(state.node_pods[node])]
    may_move = {p.request.name for p in pods if movable(p)}
    sets: set[frozenset[str]] = set()
    for evict in _gpu_evictions(state, req, node, pods, may_move):
        topped = _cover_cpu_memory(state, req, node, pods, may_move, evict)
        if topped is not None:
            sets.add(topped)
    demand = {p.request.name: p.request.gpu_demand_milli for p in pods}
    return [_Candidate(len(s), sum(demand[n] for n in s), node, tuple(sorted(s))) for s in sets]


def _gpu_evictions(
    state: ClusterState, req: Request, node: int, pods: list[Placement], may_move: set[str]
) -> Iterable[frozenset[str]]:
    """Pod sets whose eviction frees GPU room for `req` on `node` (the empty set if it has room)."""
    if not req.num_gpu:
        yield frozenset()
        return
    usable = state.gpu_exists[node] & state.gpu_healthy[node]
    on_gpu: dict[int, list[Placement]] = {}
    for p in pods:
        for index in p.gpus:
            on_gpu.setdefault(index, []).append(p)
    if not req.is_share:
        yield from _free_whole(state, req, node, usable, on_gpu, may_move)
        return
    for gpu in (int(g) for g in np.flatnonzero(usable)):
        evict = _free_share(state, req, node, gpu, on_gpu.get(gpu, []), may_move)
        if evict is not None:
            yield evict


def _free_whole(
    state: ClusterState,
    req: Request,
    node: int,
    usable: BoolArray,
    on_gpu: dict[int, list[Placement]],
    may_move: set[str],
) -> Iterable[frozenset[str]]:
    """Per set of GPUs the request could take (in one island if it asks): every pod on them."""
    eligible = np.flatnonzero(usable & (state.gpu_mem_cap[node] >= req.gpu_memory_mib))
    one_island = req.same_island and req.num_gpu > 1
    islands = state.island[node, eligible] if one_island else np.zeros(eligible.size, dtype=np.int64)
    for island in np.unique(islands):
        gpus = [int(g) for g in eligible[islands == island]]
        free = [g for g in gpus if state.gpu_free[node, g] == MILLI_PER_GPU]
        busy = [g for g in gpus if state.gpu_free[node, g] < MILLI_PER_GPU]
        need = req.num_gpu - len(free)
        if need > len(busy):
            continue
        for chosen in islice(combinations(busy, max(need, 0)), MAX_GPU_SETS):
            evict = {p.request.name for g in chosen for p in on_gpu.get(g, [])}
            if evict <= may_move:
                yield frozenset(evict)


def _free_share(
    state: ClusterState, req: Request, node: int, gpu: int, pods: list[Placement], may_move: set[str]
) -> frozenset[str] | None:
    """The fewest pods on one GPU (largest first) whose eviction lets the share fit there."""
    milli = req.gpu_milli - int(state.gpu_free[node, gpu])
    mem = req.gpu_memory_mib - int(state.gpu_mem_free[node, gpu])

    def frees(p: Placement) -> tuple[int, int]:
        taken = p.request.gpu_memory_mib if p.request.is_share else int(state.gpu_mem_cap[node, gpu])
        return p.request.gpu_milli, taken

    def largest(p: Placement) -> tuple[int, int, str]:
        got_milli, got_mem = frees(p)
        return -got_milli, -got_mem, p.request.name

    evict: set[str] = set()
    for p in sorted((p for p in pods if p.request.name in may_move), key=largest):
        if milli <= 0 and mem <= 0:
            break
        got_milli, got_mem = frees(p)
        milli, mem = milli - got_milli, mem - got_mem
        evict.add(p.request.name)
    return frozenset(evict) if milli <= 0 and mem <= 0 else None


def _cover_cpu_memory(
    state: ClusterState,
    req: Request,
    node: int,
    pods: list[Placement],
    may_move: set[str],
    evict: frozenset[str],
) -> frozenset[str] | None:
    """`evict`, plus the node's other pods (greedily) until the request's CPU and memory fit too."""
    gone = [p.request for p in pods if p.request.name in evict]
    cpu = req.cpu_milli - int(state.cpu_free[node]) - sum(r.cpu_milli for r in gone)
    mem = req.memory_mib - int(state.mem_free[node]) - sum(r.memory_mib for r in gone)
    chosen = set(evict)
    rest = [p.request for p in pods if p.request.name in may_move and p.request.name not in evict]
    while cpu > 0 or mem > 0:
        if not rest:
            return None

        def covers(r: Request, cpu: int = cpu, mem: int = mem) -> tuple[float, str]:
            share = min(r.cpu_milli, max(cpu, 0)) / max(cpu, 1) + min(r.memory_mib, max(mem, 0)) / max(mem, 1)
            return -share, r.name

        best = min(rest, key=covers)
        if covers(best)[0] == 0:
            return None
        rest.remove(best)
        chosen.add(best.name)
        cpu, mem = cpu - best.cpu_milli, mem - best.memory_mib
    return frozenset(chosen)


def _simulate(scheduler: Scheduler, req: Request, candidate: _Candidate) -> tuple[DefragPlan | None, str]:
    """Carry the candidate out on the state, read off the plan, and undo it all."""
    state, node = scheduler.state, candidate.node
    avoid = replace(scheduler.policy, filters=(*scheduler.policy.filters, _AvoidNodes(frozenset({node}))))
    elsewhere = Scheduler(state, avoid)
    elsewhere.rng = scheduler.rng
    trial = Trial(state, scheduler.rng)
    try:
        evicted = [trial.unbind(name).request for name in candidate.pods]
        nodes, _ = scheduler.feasible(req)
        if node not in nodes:
            return None, f"{req.name} still does not pass the filters on {state.names[node]}"
        gpus = scheduler.policy.chooser.choose(state, req, node, scheduler.rng)
        placement = Placement(req, node, gpus)
        trial.bind(placement)
        moves = []
        for pod in gang_order(evicted):
            decision = trial.place(elsewhere, pod)
            if decision.placement is None:
                return None, f"{pod.name} from {state.names[node]} fits nowhere else ({decision.reason()})"
            moves.append(Move(pod.name, node, decision.placement.node, decision.placement.gpus))
        return DefragPlan(node, tuple(moves), placement), ""
    finally:
        trial.undo()
