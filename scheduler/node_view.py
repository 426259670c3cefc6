"""The scheduler's view of the cluster's nodes: every node seen (dead ones
included, with what they had), the ones it may place on now, and the ones an
attempt was just lost on."""

from __future__ import annotations

import dataclasses

from scheduler.backend import Backend, NodeInfo

# Nodes an attempt was just lost on: Ray reports a node dead only after its
# health checks fail (~10 s), so without this a retry lands on it again.
SUSPECT_NODE_SECONDS = 60.0


class NodeView:
    def __init__(self, backend: Backend):
        self._backend = backend
        self.known: dict[str, NodeInfo] = {}  # every node seen, by id
        self.placeable: list[NodeInfo] = []  # alive and not suspect
        self._suspect: dict[str, float] = {}  # node id -> placement resumes after
        self.refreshed_at = 0.0
        self._head: str | None = None

    def refresh(self, now: float) -> None:
        """All nodes the backend knows, dead ones included: they are shown as
        dead, never placed on, but still count when judging whether a job can
        ever fit (a node that died may rejoin)."""
        nodes = {n.node_id: n for n in self._backend.nodes()}
        for node_id, old in self.known.items():
            seen = nodes.get(node_id)
            if seen is None or (not seen.alive and not seen.resources):
                # Ray lists dead nodes with no resources; remember what they had.
                nodes[node_id] = dataclasses.replace(old, alive=False)
        self.known = nodes
        self._suspect = {k: until for k, until in self._suspect.items()
                         if until > now and nodes.get(k) and nodes[k].alive}
        self.placeable = [n for n in nodes.values() if n.alive and n.node_id not in self._suspect]
        self.refreshed_at = now

    def mark_suspect(self, node_id: str, now: float) -> None:
        """Stop placing on a node an attempt was just lost on, from now on: the
        placement view is cut at once, not at the next refresh, which may be
        seconds away while the requeued job is placed in the same pass."""
        self._suspect[node_id] = now + SUSPECT_NODE_SECONDS
        self.placeable = [n for n in self.placeable if n.node_id != node_id]

    def describe(self, node_id: str | None) -> str:
        """'ab12cd34 at 10.0.0.11, now dead'."""
        if not node_id:
            return "unknown"
        node = self.known.get(node_id)
        if node is None:
            return node_id[:8]
        return f"{node_id[:8]} at {node.address}" + ("" if node.alive else ", now dead")

    def gpus_of(self, node_id: str | None) -> int:
        node = self.known.get(node_id or "")
        return int(node.resources.get("GPU", 0)) if node else 0

    def alive_gpu_nodes(self) -> set[str]:
        return {n.node_id for n in self.placeable if n.resources.get("GPU", 0) > 0}

    def head(self) -> str:
        """The scheduler's own node (the head, on a cluster)."""
        if self._head is None:
            self._head = self._backend.local_node_id()
        return self._head
