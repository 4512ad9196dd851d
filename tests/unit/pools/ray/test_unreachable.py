"""A Ray pool whose address answers nothing: a clear error naming the address, soon, and no leftovers.

The agent is the real one (a subprocess that would connect to Ray); nothing listens on the address.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from computenet.api import PoolSpec
from computenet.pools.processes import free_port

pytest.importorskip("ray")

from computenet.pools.ray import RayPool
from computenet.pools.ray.client import AgentError


async def test_a_pool_at_an_address_where_nothing_listens_says_so(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    pool = RayPool(name="gone", spec=PoolSpec(type="ray", address=address), state_dir=tmp_path)
    try:
        with pytest.raises(AgentError, match=rf"cannot reach the Ray cluster at {address} \(spec.address\)"):
            await pool.nodes()
        with pytest.raises(AgentError, match="cannot reach"):
            await pool.replicas()
        assert pool.agent_pid is None
    finally:
        await pool.close()
