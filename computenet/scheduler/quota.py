"""Per-tenant GPU quotas in Kueue's model: nominal quota, cohorts, borrowing and reclaim.

Each tenant is one Kueue ClusterQueue with a nominal quota of GPU milli. Tenants in one cohort pool
their nominal quotas: a tenant may use more than its own while others leave theirs idle (borrowing, up
to its `borrowing_limit`), and a tenant that asks for no more than its nominal quota gets it back by
preempting borrowers (reclaim). Quota is accounting, not placement: whether a request physically fits
is the scheduler's question, asked after admission.

Per-model caps (`type_limits`) are kept deliberately simple: a ceiling on a tenant's milli of one GPU
model inside its total, never borrowed, for "at most 4 H100s for this team" without Kueue's full
resource-flavor matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .request import Request


class QuotaError(ValueError):
    """A quota configuration or request the user must fix; the message names the tenant or field."""


@dataclass(frozen=True)
class TenantQuota:
    """One tenant's ClusterQueue: its nominal GPU milli, its cohort, how much it may borrow."""

    tenant: str
    nominal_milli: int
    cohort: str = ""
    """Tenants with the same non-empty cohort lend one another their idle nominal quota."""
    borrowing_limit: int | None = None
    """The most milli above nominal the tenant may use; None is no limit beyond the cohort's idle quota."""
    type_limits: Mapping[str, int] = field(default_factory=dict)
    """Per GPU model: the most milli of that model the tenant may hold (inside `nominal_milli`)."""

    def __post_init__(self) -> None:
        if not self.tenant:
            raise QuotaError("a quota needs a tenant name; set TenantQuota.tenant")
        if self.nominal_milli < 0:
            raise QuotaError(f"tenant {self.tenant!r}: nominal_milli must be >= 0, got {self.nominal_milli}")
        if self.borrowing_limit is not None:
            if self.borrowing_limit < 0:
                raise QuotaError(
                    f"tenant {self.tenant!r}: borrowing_limit must be >= 0 or None, "
                    f"got {self.borrowing_limit}"
                )
            if not self.cohort:
                raise QuotaError(
                    f"tenant {self.tenant!r}: borrowing_limit needs a cohort to borrow from; set cohort "
                    "or drop borrowing_limit"
                )
        for model, limit in self.type_limits.items():
            if limit < 0:
                raise QuotaError(f"tenant {self.tenant!r}: type_limits[{model!r}] must be >= 0, got {limit}")


@dataclass(frozen=True)
class Admission:
    """Whether a request is within quota, how much of it is borrowed, and why (not)."""

    ok: bool
    borrowed_milli: int
    reason: str
    blocked_types: frozenset[str] = frozenset()
    """GPU models whose per-model cap this request would exceed: keep it off them."""


@dataclass(frozen=True)
class _Charge:
    tenant: str
    milli: int
    gpu_type: str
    priority: int
    seq: int
    """Admission order: reclaim takes the newest first."""


class Quotas:
    """The quota ledger: configuration plus what each admitted request holds. Pure; no I/O."""

    def __init__(self, quotas: Iterable[TenantQuota]) -> None:
        self.quotas: dict[str, TenantQuota] = {}
        for quota in quotas:
            if quota.tenant in self.quotas:
                raise QuotaError(f"tenant {quota.tenant!r} has two quotas; give each tenant one")
            self.quotas[quota.tenant] = quota
        self._usage = dict.fromkeys(self.quotas, 0)
        self._type_usage: dict[tuple[str, str], int] = {}
        self._charges: dict[str, _Charge] = {}
        self._seq = 0

    # ---- reading -------------------------------------------------------------------------------------

    def usage(self, tenant: str) -> int:
        """GPU milli the tenant's charged requests hold."""
        return self._usage[self._quota(tenant).tenant]

    def borrowed(self, tenant: str) -> int:
        """GPU milli the tenant holds above its nominal quota."""
        return max(0, self.usage(tenant) - self._quota(tenant).nominal_milli)

    def type_usage(self, tenant: str, gpu_type: str) -> int:
        return self._type_usage.get((self._quota(tenant).tenant, gpu_type), 0)

    def cohort_free(self, cohort: str) -> int:
        """Nominal quota of the cohort's tenants that none of them uses; negative once charges overdraw it."""
        members = [q for q in self.quotas.values() if q.cohort == cohort]
        return sum(q.nominal_milli for q in members) - sum(self._usage[q.tenant] for q in members)

    @property
    def charged(self) -> frozenset[str]:
        return frozenset(self._charges)

    # ---- admission -----------------------------------------------------------------------------------

    def admit(self, req: Request) -> Admission:
        """Whether `req` fits its tenant's quota now; changes nothing (charge it once it is bound)."""
        quota = self._quota_of(req)
        demand = req.gpu_demand_milli
        if not demand:
            return Admission(True, 0, "no GPU asked")
        blocked = self._blocked_types(quota, req)
        if req.gpu_types and req.gpu_types <= blocked:
            return Admission(
                False,
                0,
                f"tenant {quota.tenant!r} is at its cap for {', '.join(sorted(blocked))}; "
                "allow another GPU model or release some",
                blocked,
            )
        usage = self._usage[quota.tenant]
        after = usage + demand
        if after <= quota.nominal_milli:
            if quota.cohort and self.cohort_free(quota.cohort) < demand:
                return Admission(
                    False,
                    0,
                    f"within tenant {quota.tenant!r}'s nominal quota, but cohort {quota.cohort!r} lends it "
                    "out; preempt the borrowers reclaim() names",
                    blocked,
                )
            return Admission(True, 0, "within nominal quota", blocked)
        if not quota.cohort:
            return Admission(
                False,
                0,
                f"tenant {quota.tenant!r} would use {after} of its {quota.nominal_milli} milli and has no "
                "cohort to borrow from",
                blocked,
            )
        borrowed_after = after - quota.nominal_milli
        if quota.borrowing_limit is not None and borrowed_after > quota.borrowing_limit:
            return Admission(
                False,
                0,
                f"tenant {quota.tenant!r} would borrow {borrowed_after} milli, above its borrowing_limit "
                f"{quota.borrowing_limit}",
                blocked,
            )
        free = self.cohort_free(quota.cohort)
        if free < demand:
            return Admission(
                False,
                0,
                f"cohort {quota.cohort!r} has {max(free, 0)} milli idle, {demand} asked by tenant "
                f"{quota.tenant!r}",
                blocked,
            )
        borrowed = demand - max(0, quota.nominal_milli - usage)
        return Admission(True, borrowed, f"borrows {borrowed} milli from cohort {quota.cohort!r}", blocked)

    def charge(self, req: Request, gpu_type: str = "") -> None:
        """Record that `req` holds its GPU milli (on `gpu_type`, the model it was placed on).

        It does not check admission: workloads found running (after a restart, or when quotas change)
        are charged as they are, and may leave a tenant over quota until they end.
        """
        quota = self._quota_of(req)
        if req.name in self._charges:
            raise QuotaError(f"{req.name} is already charged to tenant {self._charges[req.name].tenant!r}")
        if not gpu_type and len(req.gpu_types) == 1:
            (gpu_type,) = req.gpu_types
        if req.num_gpu and quota.type_limits and not gpu_type:
            raise QuotaError(
                f"tenant {quota.tenant!r} caps GPU models; charge {req.name} with gpu_type= "
                "the model it runs on"
            )
        self._seq += 1
        charge = _Charge(quota.tenant, req.gpu_demand_milli, gpu_type, req.priority, self._seq)
        self._charges[req.name] = charge
        self._usage[quota.tenant] += charge.milli
        if gpu_type:
            key = (quota.tenant, gpu_type)
            self._type_usage[key] = self._type_usage.get(key, 0) + charge.milli

    def release(self, name: str) -> int:
        """Forget what request `name` held; returns the milli released."""
        charge = self._charges.pop(name, None)
        if charge is None:
            raise QuotaError(f"{name} is not charged to any tenant; nothing to release")
        self._usage[charge.tenant] -= charge.milli
        if charge.gpu_type:
            self._type_usage[(charge.tenant, charge.gpu_type)] -= charge.milli
        return charge.milli

    # ---- reclaim -------------------------------------------------------------------------------------

    def reclaim(self, req: Request) -> tuple[str, ...]:
        """The requests to preempt so that `req`, within its tenant's nominal quota, is admitted.

        Only from borrowers: other tenants of the cohort while their usage is above their own nominal
        quota; a tenant within its nominal quota is never touched. Priority does not shield a borrower
        from the lender (Kueue's `reclaimWithinCohort: Any`): borrowed quota is lent, not owned.
        Candidates go lowest priority first, then newest first (the work that loses least and has run
        least, as Kueue orders them). A whole request may take a borrower below its nominal quota, since
        requests cannot be split, but once a borrower is no longer above it nothing more is taken from
        it. Victims that turn out not to be needed are spared again. Empty when `req` already fits or
        would itself borrow; otherwise the borrowers always hold at least what is missing, since `req`
        stays within its nominal quota.
        """
        quota = self._quota_of(req)
        demand = req.gpu_demand_milli
        if not demand or not quota.cohort or self._usage[quota.tenant] + demand > quota.nominal_milli:
            return ()
        need = demand - self.cohort_free(quota.cohort)
        usage = {t: self._usage[t] for t, q in self.quotas.items() if q.cohort == quota.cohort}
        candidates = sorted(
            (
                (name, c)
                for name, c in self._charges.items()
                if c.tenant != quota.tenant and c.tenant in usage and c.milli
            ),
            key=lambda item: (item[1].priority, -item[1].seq),
        )
        chosen: list[tuple[str, _Charge]] = []
        freed = 0
        for name, charge in candidates:
            if freed >= need:
                break
            if usage[charge.tenant] <= self.quotas[charge.tenant].nominal_milli:
                continue
            usage[charge.tenant] -= charge.milli
            freed += charge.milli
            chosen.append((name, charge))
        for item in reversed(chosen[:]):
            if freed - item[1].milli >= need:
                chosen.remove(item)
                freed -= item[1].milli
        return tuple(name for name, _ in chosen)

    # ---- helpers -------------------------------------------------------------------------------------

    def _quota(self, tenant: str) -> TenantQuota:
        quota = self.quotas.get(tenant)
        if quota is None:
            known = ", ".join(sorted(self.quotas)) or "none"
            raise QuotaError(f"tenant {tenant!r} has no quota; add a TenantQuota for it (known: {known})")
        return quota

    def _quota_of(self, req: Request) -> TenantQuota:
        if not req.tenant:
            raise QuotaError(
                f"{req.name} has no tenant and quotas are enforced; set Request.tenant to one of "
                f"{', '.join(sorted(self.quotas)) or 'the configured tenants'}"
            )
        return self._quota(req.tenant)

    def _blocked_types(self, quota: TenantQuota, req: Request) -> frozenset[str]:
        demand = req.gpu_demand_milli
        blocked = frozenset(
            model
            for model, limit in quota.type_limits.items()
            if self._type_usage.get((quota.tenant, model), 0) + demand > limit
        )
        return blocked & req.gpu_types if req.gpu_types else blocked
