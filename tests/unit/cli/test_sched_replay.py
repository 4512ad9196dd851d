"""`computenet sched replay`: the FGD paper's protocol from the command line, on the real trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from computenet.cli.main import main

DATA = Path(__file__).resolve().parents[3] / "data" / "alibaba-gpu-2023"
NODES = DATA / "openb_node_list_gpu_node.csv.gz"
DEFAULT = DATA / "openb_pod_list_default.csv.gz"


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    return int(caught.value.code or 0)


def _tiny(tmp_path: Path) -> tuple[Path, Path]:
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,4,T4\nn1,32000,131072,1,V100M16\n")
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "p0,4000,1024,1,1000,\np1,4000,1024,1,500,\np2,2000,1024,0,0,\np3,4000,1024,2,1000,T4\n"
    )
    return nodes, pods


def test_writes_one_line_per_pod_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = _tiny(tmp_path)
    out = tmp_path / "placements.jsonl"
    argv = ["sched", "replay", "--nodes", str(nodes), "--pods", str(pods), "--policy", "bestfit"]
    assert _exit_code([*argv, "--seed", "7", "--out", str(out), "--json"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["pods"] == summary["placed"] + summary["failed"]
    # inflation to 130 % of the 5 GPUs resamples trace pods under their own name plus -dupN
    assert {line["pod"].split("-dup")[0] for line in lines} <= {"p0", "p1", "p2", "p3"}
    assert any("-dup" in line["pod"] for line in lines)
    for line in lines:
        assert set(line) == {"pod", "node", "gpus", "num_gpu", "gpu_milli", "cpu_milli", "memory_mib"}
        assert len(line["gpus"]) == (0 if line["node"] is None else line["num_gpu"])
    # the T4-only 2-GPU pod can only ever land on n0
    assert {line["node"] for line in lines if line["pod"].startswith("p3")} <= {"n0", None}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--policy", "nope"], "--policy 'nope' is unknown"),
        (["--inflate", "0"], "--inflate must be"),
        (["--pods", "/does/not/exist.csv"], "/does/not/exist.csv"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    nodes, pods = _tiny(tmp_path)
    base = {"--nodes": str(nodes), "--pods": str(pods)}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    assert _exit_code(["sched", "replay", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_a_bad_pod_row_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = _tiny(tmp_path)
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,4000,1024,1,1000\np1,lots,1,0,0\n")
    assert _exit_code(["sched", "replay", "--nodes", str(nodes), "--pods", str(pods)]) == 2
    assert "line 3" in capsys.readouterr().err


def test_fgd_reproduces_the_paper_on_the_default_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """FGD on seed 42 of the real trace lands within 1 point of the artifact's 4.77 % at 100 % arrived.

    Guards the protocol (shuffle, inflation, target workload, fragmentation measure, FGD score, ties):
    a slip in any of them moves this by whole points (random ties alone give 10.4 %).
    """
    argv = ["sched", "replay", "--nodes", str(NODES), "--pods", str(DEFAULT), "--policy", "fgd", "--json"]
    assert _exit_code(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert abs(summary["unallocated_gpu_pct"]["100"] - 4.77) < 1.0
    assert summary["unallocated_gpu_pct"]["80"] < 20.5  # everything fits until ~90 % arrived


def test_computenet_leaves_fewer_gpus_unallocated_than_fgd(capsys: pytest.CaptureFixture[str]) -> None:
    """Our preset on seed 42 of the real trace stays under the issue's 4.5 % (FGD: 4.77 in the paper,
    ~4.9 in our replay); without its CPU-stranding term it leaves ~4.7 %, so losing it fails here."""
    argv = ["sched", "replay", "--nodes", str(NODES), "--pods", str(DEFAULT), "--policy", "computenet"]
    assert _exit_code([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unallocated_gpu_pct"]["100"] < 4.5


def test_a_pod_list_without_rows_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = _tiny(tmp_path)
    pods.write_text("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n")
    assert _exit_code(["sched", "replay", "--nodes", str(nodes), "--pods", str(pods)]) == 2
    assert "no pods" in capsys.readouterr().err
