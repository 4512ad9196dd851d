"""Manifests: what loads, and the errors a user sees for what does not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from computenet.api import Deployment, ManifestError, Model, kind_from_user, load_file, load_text
from computenet.api.routing import FilterName, PickerName, PresetName, ScorerName
from computenet.gateway.routing.pipeline import PICKERS
from computenet.gateway.routing.presets import PRESETS
from computenet.gateway.routing.scorers import FILTERS, SCORERS

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def _problems(text: str, source: str = "t.yaml") -> list[str]:
    with pytest.raises(ManifestError) as err:
        load_text(textwrap.dedent(text), source=source)
    return [str(p) for p in err.value.problems]


def test_bundled_demo_loads_a_model_and_a_two_replica_deployment() -> None:
    model, deployment = load_file(DEMO)
    assert isinstance(model, Model) and model.name == "demo-llm"
    assert isinstance(deployment, Deployment)
    assert deployment.spec.engine == "sim"
    assert deployment.desired_replicas == 2


def test_every_problem_in_every_document_is_reported_with_file_doc_and_path() -> None:
    problems = _problems("""\
        apiVersion: computenet.io/v1
        kind: Model
        metadata: {name: ok}
        spec: {source: sim://ok}
        ---
        apiVersion: computenet.io/v1
        kind: Deployment
        metadata: {name: Bad_Name}
        spec:
          model: ok
          engine: tgi
          roles: [{name: server, replicas: -1, gpu: 1}]
        """)
    assert problems == [
        "t.yaml doc 2: metadata.name: must be lower-case letters, digits and '-', "
        "starting and ending with a letter or digit, got 'Bad_Name'",
        "t.yaml doc 2: spec.engine: must be 'vllm', 'sglang' or 'sim', got 'tgi'",
        "t.yaml doc 2: spec.roles[0].replicas: must be >= 0, got -1",
        "t.yaml doc 2: spec.roles[0].gpu: is not a known field; remove it or check its spelling",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Gadget\nmetadata: {name: x}\n",
            "t.yaml doc 1: kind: must be one of APIKey, Deployment, Model, Pool, Provider, Route, Tenant, got 'Gadget'",
        ),
        ("- a\n- b\n", "t.yaml doc 1: must be a mapping with apiVersion, kind, metadata and spec, got list"),
        ("kind: Model\nmetadata: {name: x}\n", "t.yaml doc 1: spec: is required"),
        (
            "apiVersion: computenet.io/v2\nkind: Pool\nmetadata: {name: p}\n",
            "t.yaml doc 1: apiVersion: must be 'computenet.io/v1', got 'computenet.io/v2'",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {model: m, engine: sim, roles: [{name: prefill}]}\n",
            "t.yaml doc 1: spec.roles: roles must be [server] or [prefill, decode] (+ router), got ['prefill']",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {model: m, engine: sim, routing: {policy: fastest}}\n",
            "t.yaml doc 1: spec.routing.policy.preset: must be 'random', 'round-robin', 'least-request', "
            "'power-of-two', 'prefix' or 'precise-prefix', got 'fastest'",
        ),
        ("kind: Model\nmetadata: {name: x\n", "t.yaml doc 1: invalid YAML at line 3, column 1"),
        (
            "kind: Pool\nmetadata: {name: p}\nspec: {type: ray}\n",
            "t.yaml doc 1: spec: a ray pool needs spec.address: the head's GCS address, e.g. 10.0.0.5:6379",
        ),
        (
            "kind: Pool\nmetadata: {name: p}\nspec: {address: 10.0.0.5:6379}\n",
            "t.yaml doc 1: spec: spec.address is for ray pools; a local pool takes no address",
        ),
        (
            "kind: Pool\nmetadata: {name: p}\nspec: {type: ray, address: h:1, kubeconfig: k}\n",
            "t.yaml doc 1: spec: spec.kubeconfig and spec.context are for kubernetes pools, not ray",
        ),
        (
            "kind: Pool\nmetadata: {name: p}\nspec: {type: gce}\n",
            "t.yaml doc 1: spec.type: must be 'local', 'ray' or 'kubernetes', got 'gce'",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {model: m, engine: sim, placement: {spread: {key: rack}}}\n",
            "t.yaml doc 1: spec.placement.spread.key: must be 'node', 'zone' or 'region', got 'rack'",
        ),
    ],
)
def test_single_problems_are_phrased_for_people(text: str, expected: str) -> None:
    (problem,) = _problems(text)
    assert problem.startswith(expected)


def test_the_same_name_twice_in_one_file_is_rejected() -> None:
    doc = "kind: Model\nmetadata: {name: twin}\nspec: {source: s}\n"
    assert _problems(doc + "---\n" + doc) == [
        "t.yaml doc 2: metadata.name: Model 'twin' is already defined in doc 1; give it another name"
    ]


def test_wire_form_is_camel_case_without_nulls() -> None:
    (dep,) = load_text("kind: Deployment\nmetadata: {name: d}\nspec: {model: m, engine: sim}\n")
    wire = dep.to_wire()
    assert wire["apiVersion"] == "computenet.io/v1"
    assert "restartPolicy" in wire["spec"] and "restart_policy" not in wire["spec"]
    assert "status" not in wire
    assert load_text(__import__("json").dumps(wire))[0] == dep


def test_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read file"):
        load_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("typed", "kind"), [("deploy", "Deployment"), ("Models", "Model"), ("pool", "Pool")])
def test_kind_aliases(typed: str, kind: str) -> None:
    assert kind_from_user(typed) == kind


def test_unknown_kind_lists_the_choices() -> None:
    with pytest.raises(
        ValueError, match="use one of: apikeys, deployments, models, pools, providers, routes, tenants"
    ):
        kind_from_user("gizmos")


def test_policy_names_accepted_by_the_schema_are_the_gateways() -> None:
    assert set(PresetName.__args__) == set(PRESETS)
    assert set(FilterName.__args__) == set(FILTERS)
    assert set(ScorerName.__args__) == set(SCORERS)
    assert set(PickerName.__args__) == set(PICKERS)
