"""The capacity book: what is free on each node, its totals less what running
jobs hold.

One rule for what a job holds on its node (cpu, memory, its custom resources,
and on each of its GPUs its share, all of a GPU when it asked for more than
one), used by the live loop (`Scheduler.free_capacity`), the simulator and the
estimates (`scheduler.virtual_cluster`).  A decision then works on an integer
copy of the nodes it is given (`room.NodeRoom`), whose ``release`` gives back
the same amounts.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from scheduler.policy.records import Node, RunningJob


def empty_copy(node: Node) -> Node:
    """A copy of ``node`` with everything free."""
    return dataclasses.replace(node, cpu_free=node.cpu_total, memory_free=node.memory_total,
                               gpu_free=[1.0] * node.gpu_total, custom_total=dict(node.custom_total),
                               custom_free=dict(node.custom_total), gpu_memory=list(node.gpu_memory))


class CapacityBook:
    """Free capacity per node, kept as :class:`Node` records (which the book owns
    and changes in place).  A job on a node the book does not hold (a dead one)
    holds nothing placeable: taking or giving back for it changes nothing."""

    def __init__(self, nodes: Iterable[Node]):
        self._nodes = {n.node_id: n for n in nodes}

    def take(self, job: RunningJob) -> bool:
        """Book what ``job`` holds on its node; False if the book lacks that node."""
        return self._hold(job, -1)

    def give_back(self, job: RunningJob) -> bool:
        """Undo :meth:`take`."""
        return self._hold(job, +1)

    def hold_gpus(self, node_id: str, gpu_indices: Iterable[int], share: float) -> None:
        """Book ``share`` of each GPU: a share still draining after its attempt ended."""
        node = self._nodes.get(node_id)
        for i in gpu_indices if node is not None else ():
            if i < len(node.gpu_free):
                node.gpu_free[i] -= share

    def _hold(self, job: RunningJob, sign: int) -> bool:
        node = self._nodes.get(job.node_id)
        if node is None:
            return False
        node.cpu_free += sign * job.cpu
        node.memory_free += sign * job.memory
        for k, v in job.custom.items():
            node.custom_free[k] = node.custom_free.get(k, 0.0) + sign * v
        share = job.share_per_gpu
        for i in job.gpu_indices:
            if i < len(node.gpu_free):
                node.gpu_free[i] += sign * share
        return True

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def nodes(self) -> list[Node]:
        """The nodes with what is free on each, in the order given."""
        return list(self._nodes.values())
