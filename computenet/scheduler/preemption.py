"""Preemption: room for a request that fits nowhere, made by evicting lower-priority pods from one node.

As kube-scheduler's default preemption: pick one node and a minimal set of victims there, every victim
strictly below the preemptor's priority. Candidate plans rank by
(fewest victims, lowest highest-victim priority, least GPU milli evicted, node index).

Why greedy-then-prune and not an exact search: the smallest victim set on a node is a subset-sum
problem (exponential in the pods a node holds), and every test of a set costs one run of the policy's
filters over the whole cluster. So, per node:
* every single victim is tried first, lowest priority and GPU milli first: victim count ranks first,
  one victim is the common case, and once some node needs only one, no node needing more can win, so
  the rest of the cluster is only scanned for a better single victim;
* otherwise victims are added in a fixed order until the request fits, then each is offered a reprieve
  (the most important first, as kube-scheduler does) and stays bound if the request still fits without
  evicting it. The set is minimal (no victim can be spared) though not always minimum. Two orders are
  tried, both lowest priority first: smallest GPU share first spares big pods when small ones make
  room; largest first frees a whole GPU with one eviction where the other order would evict every
  small sharer on it. The better of the two plans counts.
Sets are checked against the node's capacity with arithmetic before the filters run, since bind needs
that capacity anyway and most sets fail on it.

Why simulate on the live state (unbind, run the filters, bind again) rather than on copies: the
policy's own filters and GPU chooser decide, so a plan is exactly what the scheduler would do once the
victims are gone. Each unbind and bind bumps the node's `version`; versions are left where they end
(never wound back), because scorers cache per node version and a version the simulation used must never
come back to name another state. Everything else (free capacity, placements and their order, pods per
node, replica counts) is as before; the scheduler's RNG is not drawn from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .framework import Scheduler
from .inventory import MILLI_PER_GPU
from .request import Placement, Request
from .state import CapacityError, ClusterState
from .trial import Trial


class PreemptionError(RuntimeError):
    """A plan that no longer applies (the state moved since it was made) or breaks the priority rule."""


@dataclass(frozen=True)
class PreemptionPlan:
    """Evict `victims` (request names, all on `node`), then bind `placement`."""

    node: int
    victims: tuple[str, ...]
    placement: Placement


@dataclass(frozen=True)
class PreemptionResult:
    """A plan, or None and why there is none."""

    plan: PreemptionPlan | None
    reason: str


PlanKey = tuple[int, int, int, int]


def plan_preemption(scheduler: Scheduler, req: Request, *, seed: int = 0) -> PreemptionResult:
    """The best plan to make `req` fit by evicting lower-priority pods, computed without changing state.

    `seed` feeds the GPU chooser of the final placement (a fresh generator, so that planning leaves the
    scheduler's own RNG untouched and the same inputs give the same plan).
    """
    state = scheduler.state
    if req.name in state.placements:
        return PreemptionResult(
            None, f"{req.name} is already bound to {state.names[state.placements[req.name].node]}"
        )
    fits, _ = scheduler.feasible(req)
    if fits.size:
        return PreemptionResult(None, f"{req.name} fits on {fits.size} node(s) without preemption; place it")
    lower = _lower_priority_pods(state, req)
    if not lower:
        return PreemptionResult(None, f"no bound pod has a priority below {req.name}'s {req.priority}")
    best: tuple[PlanKey, tuple[Placement, ...]] | None = None
    for node, pods in lower.items():
        if best is not None and _lower_bound(node, pods) > best[0]:
            continue
        if not _could_fit(state, req, node, pods):
            continue
        for victims in _node_plans(scheduler, req, node, pods, best[0] if best else None):
            key = _plan_key(node, victims)
            if best is None or key < best[0]:
                best = (key, victims)
    if best is None:
        return PreemptionResult(
            None,
            f"{req.name} fits on none of the {len(lower)} node(s) holding pods below priority "
            f"{req.priority}, even with all of those evicted",
        )
    node, victims = best[0][3], best[1]
    plan = PreemptionPlan(node, _names(victims), _placement(scheduler, req, node, victims, seed))
    return PreemptionResult(plan, f"evict {len(victims)} pod(s) on {state.names[node]}")


def apply_preemption(state: ClusterState, plan: PreemptionPlan) -> tuple[Placement, ...]:
    """Evict the victims and bind the preemptor; returns the evicted placements for the caller to requeue.

    Checks first that every victim is still bound on the plan's node below the preemptor's priority. If
    the preemptor does not fit after all (the state moved since the plan), the victims are bound again
    and PreemptionError is raised: nothing is evicted for nothing, and nothing is lost.
    """
    req = plan.placement.request
    if req.name in state.placements:
        raise PreemptionError(f"{req.name} is already bound; nothing to preempt for")
    if plan.placement.node != plan.node:
        raise PreemptionError(
            f"plan for {req.name} names node {plan.node} but places on {plan.placement.node}"
        )
    for name in plan.victims:
        victim = state.placements.get(name)
        if victim is None or victim.node != plan.node:
            raise PreemptionError(f"victim {name} is no longer bound on {state.names[plan.node]}; plan again")
        if victim.request.priority >= req.priority:
            raise PreemptionError(
                f"victim {name} has priority {victim.request.priority}, not below {req.name}'s {req.priority}"
            )
    trial = Trial(state)
    evicted = tuple(trial.unbind(name) for name in plan.victims)
    try:
        state.bind(plan.placement)
    except CapacityError as exc:
        trial.undo()
        raise PreemptionError(f"{req.name} no longer fits on {state.names[plan.node]}; plan again") from exc
    return evicted


# ---- planning steps ----------------------------------------------------------------------------------


def _lower_priority_pods(state: ClusterState, req: Request) -> dict[int, list[Placement]]:
    """Per node (in index order), the pods strictly below the preemptor's priority."""
    out: dict[int, list[Placement]] = {}
    for node, names in enumerate(state.node_pods):
        pods = [state.placements[n] for n in names if state.placements[n].request.priority < req.priority]
        if pods:
            out[node] = pods
    return out


def _could_fit(state: ClusterState, req: Request, node: int, pods: Sequence[Placement]) -> bool:
    """Whether `node` has the capacity for `req` once every pod in `pods` is gone.

    What bind checks (GPU memory aside), computed without touching the state: a necessary condition for
    any plan, and far cheaper than a run of the filters.
    """
    cpu = int(state.cpu_free[node]) + sum(p.request.cpu_milli for p in pods)
    mem = int(state.mem_free[node]) + sum(p.request.memory_mib for p in pods)
    if cpu < req.cpu_milli or mem < req.memory_mib:
        return False
    if not req.num_gpu:
        return True
    freed = np.zeros(state.gpu_free.shape[1], dtype=np.int64)
    for pod in pods:
        for gpu in pod.gpus:
            freed[gpu] += pod.request.gpu_milli
    usable = state.gpu_exists[node] & state.gpu_healthy[node]
    free = np.where(usable, state.gpu_free[node] + freed, 0)
    if req.is_share:
        return bool((free >= req.gpu_milli).any())
    return int((free == MILLI_PER_GPU).sum()) >= req.num_gpu


def _ordered(pods: Sequence[Placement], *, descending: bool) -> list[Placement]:
    """Lowest priority first; within a priority by GPU milli (either way), then by name for determinism."""
    sign = -1 if descending else 1
    return sorted(pods, key=lambda p: (p.request.priority, sign * p.request.gpu_demand_milli, p.request.name))


def _node_plans(
    scheduler: Scheduler, req: Request, node: int, pods: Sequence[Placement], best: PlanKey | None
) -> list[tuple[Placement, ...]]:
    """The victim sets worth ranking on `node`: the best single victim if one will do, else the
    greedy-then-prune set of each order (none if even evicting all of `pods` is not enough)."""
    ascending = _ordered(pods, descending=False)
    bound = (best[1], best[2]) if best is not None and best[0] == 1 else None
    for pod in ascending:
        if bound is not None and (pod.request.priority, pod.request.gpu_demand_milli) >= bound:
            break
        if _room_without(scheduler, req, node, [pod]):
            return [(pod,)]
    if bound is not None:
        return []
    plans = []
    for ordered in (ascending, _ordered(pods, descending=True)):
        victims = _minimal_victims(scheduler, req, node, ordered)
        if victims is None:
            break  # not even evicting every lower-priority pod makes room here
        plans.append(victims)
    return plans


def _minimal_victims(
    scheduler: Scheduler, req: Request, node: int, ordered: Sequence[Placement]
) -> tuple[Placement, ...] | None:
    """Add victims in order until `req` fits on `node`, then spare each that is not needed."""
    chosen: list[Placement] = []
    for pod in ordered:
        chosen.append(pod)
        if _room_without(scheduler, req, node, chosen):
            break
    else:
        return None
    for pod in reversed(chosen[:]):
        rest = [p for p in chosen if p is not pod]
        if rest and _room_without(scheduler, req, node, rest):
            chosen = rest
    return tuple(chosen)


def _room_without(scheduler: Scheduler, req: Request, node: int, victims: Sequence[Placement]) -> bool:
    """Whether `req` would pass the policy's filters on `node` with `victims` gone; the state is as
    before on return. Capacity is tested first with arithmetic: the filters cost a pass over every node."""
    if not _could_fit(scheduler.state, req, node, victims):
        return False
    trial = _without(scheduler.state, victims)
    try:
        nodes, _ = scheduler.feasible(req)
        return bool((nodes == node).any())
    finally:
        trial.undo()


def _lower_bound(node: int, pods: Sequence[Placement]) -> PlanKey:
    """No plan on `node` ranks better: it evicts at least one of `pods`, of at least their least
    priority and GPU milli. Once some node needs a single victim, this skips most of the others unseen."""
    return (
        1,
        min(p.request.priority for p in pods),
        min(p.request.gpu_demand_milli for p in pods),
        node,
    )


def _plan_key(node: int, victims: Sequence[Placement]) -> PlanKey:
    return (
        len(victims),
        max(v.request.priority for v in victims),
        sum(v.request.gpu_demand_milli for v in victims),
        node,
    )


def _placement(
    scheduler: Scheduler, req: Request, node: int, victims: Sequence[Placement], seed: int
) -> Placement:
    """Where the policy's GPU chooser puts `req` on `node` once `victims` are gone."""
    trial = _without(scheduler.state, victims)
    try:
        gpus = scheduler.policy.chooser.choose(scheduler.state, req, node, np.random.default_rng(seed))
    finally:
        trial.undo()
    return Placement(req, node, gpus)


def _without(state: ClusterState, victims: Sequence[Placement]) -> Trial:
    """A trial with `victims` unbound; the caller undoes it."""
    trial = Trial(state)
    for pod in victims:
        trial.unbind(pod.request.name)
    return trial


def _names(victims: Sequence[Placement]) -> tuple[str, ...]:
    return tuple(v.request.name for v in victims)
