"""The FGD paper's evaluation, every variant x policy x seed, against the authors' published results.

    .venv/bin/python benchmarks/sched_fgd.py [--workloads default,cpu050,...] [--policies ...]
        [--seeds 42-51] [--jobs N] [--out benchmarks/results/sched_fgd.json.gz] [--plot docs/img/x.png]
    .venv/bin/python benchmarks/sched_fgd.py --merge a.json.gz,b.json [--markdown] [--plot ...]

Each run is `computenet sched replay` in-process (the same `replay` function) on the trace copied into
`data/alibaba-gpu-2023/`. It prints, per workload, the unallocated GPU % at 100 % arrived demand of
each policy — ours next to the artifact's (`fgd_expected_allo_discrete.csv.gz`) — as the mean over
seeds (the paper's bar plots) and, for `default`, also the median (its line plot), then the decision
time per pod of each policy (median over runs of each run's median, and the worst run's p99) and the
slowest run's wall time. `--merge` reports runs saved by earlier `--out`s, so a long matrix can be run
in parts (say, the paper's policies once, ours after every change); `--markdown` prints the table of
docs/benchmarks.md with each workload's largest gap between a paper policy and the artifact.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from computenet.scheduler.replay import replay
from computenet.scheduler.trace import load_nodes, load_pods

DATA = Path(__file__).resolve().parent.parent / "data" / "alibaba-gpu-2023"
WORKLOADS = [
    "default",
    "cpu050",
    "cpu100",
    "cpu200",
    "cpu250",
    "gpushare40",
    "gpushare60",
    "gpushare80",
    "gpushare100",
    "gpuspec10",
    "gpuspec20",
    "gpuspec25",
    "gpuspec33",
    "multigpu20",
    "multigpu30",
    "multigpu40",
    "multigpu50",
]
PAPER = {
    "random": "01-Random",
    "dotprod": "02-DotProd",
    "gpuclustering": "03-GpuClustering",
    "gpupacking": "04-GpuPacking",
    "bestfit": "05-BestFit",
    "fgd": "06-FGD",
}
POLICIES = (*PAPER, "computenet")
CURVE_POINTS = (80, 85, 90, 95, 100, 105, 110, 120, 130)


def run_one(job: tuple[str, str, int]) -> dict[str, Any]:
    workload, policy, seed = job
    inventory = load_nodes(DATA / "openb_node_list_gpu_node.csv.gz")
    pods = load_pods(DATA / f"openb_pod_list_{workload}.csv.gz")
    started = time.perf_counter()
    result = replay(inventory, pods, policy, seed=seed)
    wall_s = time.perf_counter() - started
    unallocated, frag_rate = result.curve("unallocated"), result.curve("frag_rate")
    return {
        "workload": workload,
        "policy": policy,
        "seed": seed,
        "wall_s": wall_s,
        "unallocated": {p: unallocated[p] for p in CURVE_POINTS if p in unallocated},
        "frag_rate": {p: frag_rate[p] for p in (60, 80, 90) if p in frag_rate},
        "decision_ms": {
            "p50": 1000 * float(np.median(result.decision_s)),
            "p99": 1000 * float(np.percentile(result.decision_s, 99)),
        },
    }


def expected() -> dict[tuple[str, str], list[float]]:
    """(workload, policy) -> the artifact's unallocated GPU % at 100 % arrived, one value per seed."""
    raw = gzip.decompress((DATA / "fgd_expected_allo_discrete.csv.gz").read_bytes()).decode()
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_label = {label: name for name, label in PAPER.items()}
    for row in csv.DictReader(io.StringIO(raw)):
        workload = row["workload"].removeprefix("openb_pod_list_")
        out[(workload, by_label[row["sc_policy"]])].append(100 - float(row["100"]))
    return out


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode()


def load_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run read back from JSON, whose object keys (the arrived-demand percentages) came back as text."""
    for curve in ("unallocated", "frag_rate"):
        run[curve] = {int(p): v for p, v in run[curve].items()}
    return run


def seeds(text: str) -> list[int]:
    """argparse type: `42` or `42-51`."""
    first, _, last = text.partition("-")
    try:
        return list(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed or a range like 42-51") from None


def names(known: list[str] | tuple[str, ...]) -> Callable[[str], list[str]]:
    """argparse type: a comma-separated subset of `known`."""

    def parse(text: str) -> list[str]:
        wanted = text.split(",")
        if unknown := [w for w in wanted if w not in known]:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(known)}")
        return wanted

    return parse


def load_runs(files: str) -> list[dict[str, Any]]:
    """Runs saved by earlier `--out`s (comma-separated files)."""
    runs = []
    for name in files.split(","):
        try:
            runs += [load_run(run) for run in json.loads(read_text(Path(name)))]
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"error: --merge {name}: {exc}") from None
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=names(WORKLOADS), default=WORKLOADS)
    parser.add_argument("--policies", type=names(POLICIES), default=list(POLICIES))
    parser.add_argument("--seeds", type=seeds, default=seeds("42-51"), help="a seed or a range, e.g. 42-51")
    parser.add_argument("--jobs", type=int, default=0, help="worker processes (default: all cores)")
    parser.add_argument("--out", type=Path, help="write every run's figures here as JSON (.json.gz: gzipped)")
    parser.add_argument("--plot", type=Path, help="draw unallocated GPU % vs arrived demand (default trace)")
    parser.add_argument("--merge", help="comma-separated JSON files from earlier --out runs: report those")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown (docs)")
    args = parser.parse_args()
    if args.merge:
        runs = load_runs(args.merge)
    else:
        jobs = [(w, p, s) for w in args.workloads for p in args.policies for s in args.seeds]
        with ProcessPoolExecutor(max_workers=args.jobs or None) as pool:
            runs = list(pool.map(run_one, jobs))
    report(runs, expected())
    if args.markdown:
        markdown(runs, expected())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(runs)
        args.out.write_bytes(gzip.compress(text.encode()) if args.out.suffix == ".gz" else text.encode())
    if args.plot:
        plot(runs, args.plot)


def report(runs: list[dict[str, Any]], paper: dict[tuple[str, str], list[float]]) -> None:
    at100: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        at100[(run["workload"], run["policy"])].append(run["unallocated"][100])
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    print("unallocated GPU % at 100 % arrived, mean over seeds: ours (paper's artifact)")
    print("workload".ljust(12) + "".join(p.rjust(18) for p in policies))
    for workload in dict.fromkeys(r["workload"] for r in runs):
        cells = []
        for policy in policies:
            ours = statistics.mean(at100[(workload, policy)])
            theirs = paper.get((workload, policy))
            cells.append(f"{ours:.2f} ({statistics.mean(theirs):.2f})" if theirs else f"{ours:.2f}")
        print(workload.ljust(12) + "".join(c.rjust(18) for c in cells))
        if workload == "default":
            medians = [f"{statistics.median(at100[(workload, p)]):.2f}" for p in policies]
            print("  median".ljust(12) + "".join(m.rjust(18) for m in medians))
    print("decision time per pod: median of run medians / worst run's p99 ms, slowest run s")
    for policy in policies:
        mine = [r for r in runs if r["policy"] == policy]
        p50 = statistics.median(r["decision_ms"]["p50"] for r in mine)
        p99 = max(r["decision_ms"]["p99"] for r in mine)
        slowest = max(r["wall_s"] for r in mine)
        print(f"  {policy:14} {p50:.3f} / {p99:.3f}   {slowest:.1f}")


def markdown(runs: list[dict[str, Any]], paper: dict[tuple[str, str], list[float]]) -> None:
    """The mean table as docs/benchmarks.md shows it, plus each paper policy's largest gap to the artifact."""
    at100: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in runs:
        at100[(run["workload"], run["policy"])].append(run["unallocated"][100])
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    print("| workload | " + " | ".join(policies) + " | largest gap |")
    print("|---|" + "---:|" * (len(policies) + 1))
    for workload in dict.fromkeys(r["workload"] for r in runs):
        cells, gaps = [], []
        for policy in policies:
            ours = statistics.mean(at100[(workload, policy)])
            theirs = paper.get((workload, policy))
            if theirs:
                cells.append(f"{ours:.2f} ({statistics.mean(theirs):.2f})")
                gaps.append(ours - statistics.mean(theirs))
            else:
                cells.append(f"**{ours:.2f}**")
        worst = max(gaps, key=abs, default=0.0)
        print(f"| {workload} | " + " | ".join(cells) + f" | {worst:+.2f} |")


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in runs if r["workload"] == "default"):
        mine = [r for r in runs if r["workload"] == "default" and r["policy"] == policy]
        xs = [p for p in CURVE_POINTS if all(p in r["unallocated"] for r in mine)]
        ax.plot(
            xs, [statistics.median(r["unallocated"][p] for r in mine) for p in xs], marker="o", label=policy
        )
    ax.plot([80, 100], [20, 0], color="grey", linestyle=":", label="ideal")
    ax.set(
        xlabel="arrived GPU demand, % of capacity",
        ylabel="unallocated GPUs, % of capacity",
        title="Alibaba openb default trace, 1213 nodes / 6212 GPUs (median of seeds)",
        ylim=(0, 22),
    )
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
