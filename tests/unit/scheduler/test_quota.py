"""Tenant GPU quotas: nominal quota, borrowing within a cohort, reclaim, accounting and user errors."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from computenet.scheduler.quota import QuotaError, Quotas, TenantQuota
from computenet.scheduler.request import Request

_names = itertools.count(1)


def _req(
    tenant: str, gpus: int = 1, *, milli: int = 1000, priority: int = 0, name: str = "", **kw: Any
) -> Request:
    """A request of `gpus` whole GPUs (or one GPU's `milli`), named uniquely unless `name` is given."""
    return Request(
        name or f"{tenant}-{next(_names)}",
        num_gpu=gpus,
        gpu_milli=milli,
        tenant=tenant,
        priority=priority,
        **kw,
    )


def _charged(quotas: Quotas, *reqs: Request) -> None:
    for req in reqs:
        quotas.charge(req)


def _cohort(**nominal: int) -> Quotas:
    """Tenants of one cohort "c", nominal quotas in whole GPUs."""
    return Quotas(TenantQuota(t, n * 1000, cohort="c") for t, n in nominal.items())


# ---- configuration and user errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nominal_milli": -1}, "nominal_milli"),
        ({"nominal_milli": 0, "cohort": "c", "borrowing_limit": -1}, "borrowing_limit"),
        ({"nominal_milli": 0, "type_limits": {"H100": -1}}, "type_limits"),
    ],
)
def test_a_negative_quota_is_refused_naming_tenant_and_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(QuotaError, match=rf"'team-a'.*{field}.*>= 0"):
        TenantQuota("team-a", **kwargs)


def test_a_quota_without_a_tenant_name_is_refused() -> None:
    with pytest.raises(QuotaError, match=r"needs a tenant name; set TenantQuota\.tenant"):
        TenantQuota("", 1000)


def test_a_borrowing_limit_without_a_cohort_is_refused() -> None:
    with pytest.raises(QuotaError, match=r"'team-a'.*needs a cohort"):
        TenantQuota("team-a", 1000, borrowing_limit=500)


def test_two_quotas_for_one_tenant_are_refused() -> None:
    with pytest.raises(QuotaError, match="'team-a' has two quotas"):
        Quotas([TenantQuota("team-a", 1000), TenantQuota("team-a", 2000)])


def test_an_unknown_tenant_is_refused_naming_it_and_the_fix() -> None:
    quotas = Quotas([TenantQuota("team-a", 1000)])
    for call in (quotas.admit, quotas.charge, quotas.reclaim):
        with pytest.raises(QuotaError, match=r"tenant 'ghost' has no quota; add a TenantQuota.*team-a"):
            call(_req("ghost"))


def test_a_request_without_a_tenant_is_refused_when_quotas_are_enforced() -> None:
    quotas = Quotas([TenantQuota("team-a", 1000)])
    for call in (quotas.admit, quotas.charge, quotas.reclaim):
        with pytest.raises(QuotaError, match=r"r1 has no tenant.*set Request.tenant.*team-a"):
            call(Request("r1", num_gpu=1, gpu_milli=1000))


# ---- admission ---------------------------------------------------------------------------------------


def test_within_nominal_quota_is_admitted_without_borrowing() -> None:
    quotas = Quotas([TenantQuota("a", 2000)])
    _charged(quotas, _req("a"))
    admission = quotas.admit(_req("a"))
    assert (admission.ok, admission.borrowed_milli) == (True, 0)


def test_over_nominal_without_a_cohort_is_refused() -> None:
    quotas = Quotas([TenantQuota("a", 2000), TenantQuota("b", 8000)])
    _charged(quotas, _req("a"))
    admission = quotas.admit(_req("a", 2))
    assert not admission.ok and "no cohort" in admission.reason


def test_idle_quota_of_the_cohort_is_borrowed_and_only_the_excess_counts_as_borrowed() -> None:
    quotas = _cohort(a=4, b=4)
    _charged(quotas, _req("a", 3))
    admission = quotas.admit(_req("a", 2))
    assert (admission.ok, admission.borrowed_milli) == (True, 1000)


def test_a_gpu_share_counts_its_milli() -> None:
    quotas = _cohort(a=1, b=1)
    _charged(quotas, _req("a", milli=700))
    admission = quotas.admit(_req("a", milli=500))
    assert (admission.ok, admission.borrowed_milli) == (True, 200)


def test_borrowing_stops_at_the_borrowing_limit() -> None:
    quotas = Quotas(
        [TenantQuota("a", 2000, cohort="c", borrowing_limit=1000), TenantQuota("b", 8000, cohort="c")]
    )
    assert quotas.admit(_req("a", 3)).ok
    admission = quotas.admit(_req("a", 4))
    assert not admission.ok and "borrowing_limit" in admission.reason


def test_borrowing_stops_when_the_cohort_has_no_idle_quota() -> None:
    quotas = _cohort(a=2, b=2)
    _charged(quotas, _req("b", 1))
    assert quotas.admit(_req("a", 3)).ok
    admission = quotas.admit(_req("a", 4))
    assert not admission.ok and "3000 milli idle" in admission.reason


def test_no_borrowing_from_another_cohort() -> None:
    quotas = Quotas([TenantQuota("a", 1000, cohort="c"), TenantQuota("b", 8000, cohort="other")])
    assert not quotas.admit(_req("a", 2)).ok


def test_within_nominal_but_lent_out_is_refused_until_borrowers_are_reclaimed() -> None:
    quotas = _cohort(a=4, b=4)
    borrowed = [_req("b", 2), _req("b", 2)]
    _charged(quotas, _req("b", 4), *borrowed)
    req = _req("a", 3)
    admission = quotas.admit(req)
    assert not admission.ok and "reclaim" in admission.reason
    victims = quotas.reclaim(req)
    assert set(victims) == {r.name for r in borrowed}
    for name in victims:
        quotas.release(name)
    assert quotas.admit(req).ok


def test_a_request_without_gpus_is_within_quota_even_for_a_tenant_over_it() -> None:
    quotas = Quotas([TenantQuota("a", 1000)])
    _charged(quotas, _req("a", 2))  # charged as found running: over its nominal quota
    assert quotas.admit(Request("cpu", cpu_milli=1000, tenant="a")).ok


# ---- per-model caps ----------------------------------------------------------------------------------


def test_a_request_pinned_to_a_capped_model_is_refused_over_the_cap() -> None:
    quotas = Quotas([TenantQuota("a", 8000, type_limits={"H100": 2000})])
    quotas.charge(_req("a", 2), gpu_type="H100")
    admission = quotas.admit(_req("a", gpu_types=frozenset({"H100"})))
    assert not admission.ok and "H100" in admission.reason and admission.blocked_types == {"H100"}


def test_an_unpinned_request_is_admitted_off_the_capped_model() -> None:
    quotas = Quotas([TenantQuota("a", 8000, type_limits={"H100": 2000, "T4": 1000, "A100": 8000})])
    quotas.charge(_req("a", 2), gpu_type="H100")
    quotas.charge(_req("a"), gpu_type="T4")
    admission = quotas.admit(_req("a"))
    assert admission.ok and admission.blocked_types == {"H100", "T4"}
    pinned = quotas.admit(_req("a", gpu_types=frozenset({"H100", "A100"})))
    assert pinned.ok and pinned.blocked_types == {"H100"}  # only the models it may land on


def test_a_model_cap_is_freed_by_release() -> None:
    quotas = Quotas([TenantQuota("a", 8000, type_limits={"H100": 2000})])
    req = _req("a", 2)
    quotas.charge(req, gpu_type="H100")
    assert quotas.type_usage("a", "H100") == 2000
    quotas.release(req.name)
    assert quotas.type_usage("a", "H100") == 0
    assert quotas.admit(_req("a", 2, gpu_types=frozenset({"H100"}))).ok


def test_charging_a_tenant_with_model_caps_needs_the_model() -> None:
    quotas = Quotas([TenantQuota("a", 8000, type_limits={"H100": 2000})])
    with pytest.raises(QuotaError, match=r"'a' caps GPU models.*gpu_type="):
        quotas.charge(_req("a"))
    pinned = _req("a", gpu_types=frozenset({"H100"}))
    quotas.charge(pinned)  # one allowed model: that is where it runs
    assert quotas.type_usage("a", "H100") == 1000


# ---- accounting --------------------------------------------------------------------------------------


def test_charge_and_release_keep_usage_and_borrowing() -> None:
    quotas = _cohort(a=2, b=4)
    first, second = _req("a", 2), _req("a", milli=500)
    _charged(quotas, first, second)
    assert (quotas.usage("a"), quotas.borrowed("a"), quotas.cohort_free("c")) == (2500, 500, 3500)
    assert quotas.release(first.name) == 2000
    assert (quotas.usage("a"), quotas.borrowed("a"), quotas.charged) == (500, 0, {second.name})


def test_a_request_is_charged_once_and_released_once() -> None:
    quotas = Quotas([TenantQuota("a", 2000)])
    req = _req("a")
    quotas.charge(req)
    with pytest.raises(QuotaError, match="already charged"):
        quotas.charge(req)
    quotas.release(req.name)
    with pytest.raises(QuotaError, match="not charged"):
        quotas.release(req.name)
    assert quotas.usage("a") == 0


def test_admission_changes_nothing() -> None:
    quotas = _cohort(a=2, b=2)
    quotas.admit(_req("a", 3))
    assert (quotas.usage("a"), quotas.charged) == (0, frozenset())


# ---- reclaim -----------------------------------------------------------------------------------------


def test_reclaim_takes_lowest_priority_first_then_newest() -> None:
    quotas = _cohort(a=4, b=2)
    old_low = _req("b", priority=0, name="old-low")
    high = _req("b", priority=5, name="high")
    new_low = _req("b", priority=0, name="new-low")
    _charged(quotas, _req("b", 2), old_low, high, new_low)  # b: 5 GPUs, 3 borrowed, cohort full but 1
    assert quotas.reclaim(_req("a", 2)) == ("new-low",)
    assert quotas.reclaim(_req("a", 3)) == ("new-low", "old-low")


def test_reclaim_never_touches_a_tenant_within_its_nominal_quota() -> None:
    quotas = _cohort(a=4, b=4, c=2)
    _charged(
        quotas,
        _req("c", 2, priority=-9),
        _req("b", 4),
        _req("b", 2, name="b-borrow"),
        _req("b", 2, name="b-old"),
    )
    # b borrows 4; c sits at its nominal quota with the lowest priority in the cohort.
    victims = quotas.reclaim(_req("a", 2))
    assert victims and all(v.startswith("b-") for v in victims)


def test_reclaim_takes_nothing_more_from_a_borrower_back_within_nominal() -> None:
    quotas = _cohort(a=4, b=2, c=2)
    _charged(quotas, _req("b", 2, name="b-old"), _req("b", name="b-new"))
    _charged(quotas, _req("c", 2, priority=5, name="c-old"), _req("c", priority=5, name="c-new"))
    # a needs 2000 more. Once b-new goes, b is at its nominal quota: b-old stays, although it has the
    # lowest priority left, and c's borrowed GPU goes instead.
    assert quotas.reclaim(_req("a", 4)) == ("b-new", "c-new")


def test_reclaim_spares_a_victim_that_turns_out_unneeded() -> None:
    quotas = _cohort(a=4, b=0)
    _charged(quotas, _req("a", 1), _req("a", milli=500))
    _charged(quotas, _req("b", 2, priority=1, name="big"), _req("b", milli=500, priority=0, name="small"))
    # The cohort is full; a needs 2000: `small` goes first, then `big`, and then `small` is spared.
    assert quotas.reclaim(_req("a", 2)) == ("big",)


def test_reclaim_never_takes_from_another_cohort() -> None:
    quotas = Quotas(
        [TenantQuota("a", 4000, cohort="c"), TenantQuota("b", 0, cohort="c"), TenantQuota("x", 0, cohort="d")]
    )
    _charged(quotas, _req("x", 4, priority=-9, name="x-borrow"), _req("b", 4, priority=5, name="b-borrow"))
    assert quotas.reclaim(_req("a", 2)) == ("b-borrow",)


def test_a_request_that_would_itself_borrow_reclaims_nothing() -> None:
    quotas = _cohort(a=1, b=1)
    _charged(quotas, _req("b", 2))
    assert quotas.reclaim(_req("a", 2)) == ()


def test_reclaim_is_empty_when_the_request_already_fits_or_has_no_cohort() -> None:
    quotas = _cohort(a=4, b=4)
    _charged(quotas, _req("b", 5))
    assert quotas.reclaim(_req("a", 3)) == ()  # 3 idle in the cohort
    alone = Quotas([TenantQuota("a", 4000), TenantQuota("b", 0)])
    assert alone.reclaim(_req("a", 4)) == ()


def test_reclaim_changes_nothing() -> None:
    quotas = _cohort(a=4, b=2)
    _charged(quotas, _req("b", 2), _req("b", 2))
    before = (quotas.usage("a"), quotas.usage("b"), quotas.charged)
    assert quotas.reclaim(_req("a", 4))
    assert (quotas.usage("a"), quotas.usage("b"), quotas.charged) == before
