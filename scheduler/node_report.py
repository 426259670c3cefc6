"""What `labq nodes` shows of each node, as the scheduler last saw it: totals,
what labq allocated there, its running attempts and its GPUs (NVML readings,
allocation and the part still draining).  Written by the loop, read by the CLI
without touching Ray."""

from __future__ import annotations

import collections
from typing import Iterable

from scheduler import policy
from scheduler.attempt_table import Running
from scheduler.backend import NodeInfo
from scheduler.gpu_books import GpuBooks
from scheduler.records import NodeSnapshot


def snapshots(known: Iterable[NodeInfo], free: Iterable[policy.Node], running: Iterable[Running],
              gpus: GpuBooks, now: float) -> list[NodeSnapshot]:
    free_by_id = {n.node_id: n for n in free}
    per_node = collections.Counter(r.attempt.node_id or "" for r in running)
    out = []
    for n in known:
        f = free_by_id.get(n.node_id) if n.alive else None
        allocated = {}
        if f is not None:
            allocated = {"CPU": round(f.cpu_total - f.cpu_free, 4), "GPU": round(len(f.gpu_free) - sum(f.gpu_free), 4),
                         "memory": f.memory_total - f.memory_free}
        out.append(NodeSnapshot(
            node_id=n.node_id, address=n.address, alive=n.alive,
            total={k: v for k, v in n.resources.items() if not k.startswith("node:")}, allocated=allocated,
            running_jobs=per_node.get(n.node_id, 0), gpus=gpus.per_gpu(n.node_id, f.gpu_free) if f else [],
            updated_at=now))
    return out
