"""The one capacity book (policy.CapacityBook) and the places that keep it: what
a running job holds is the same for the live loop's free capacity, a decision's
release of a running job, the simulator and the estimates, custom resources
included."""

from __future__ import annotations

from scheduler import estimate, policy
from scheduler.policy.room import NodeRoom
from scheduler.virtual_cluster import VirtualCluster


def _node(node_id: str = "n1", gpus: int = 4, custom: dict | None = None) -> policy.Node:
    return policy.node_of(node_id, {"CPU": 16, "GPU": gpus, "memory": 64 * 2**30, **(custom or {})})


def _room(node: policy.Node) -> tuple:
    w = NodeRoom.of(node)
    return (w.cpu, w.memory, w.gpu, w.custom)


def test_take_and_give_back_are_inverse_and_follow_the_share_rule():
    node = _node(custom={"tpu": 2.0})
    book = policy.CapacityBook([node])
    fraction = policy.RunningJob(1, cpu=2, gpu=0.25, memory=2**30, node_id="n1", gpu_indices=(0,), custom={"tpu": 1.0})
    whole = policy.RunningJob(2, cpu=4, gpu=2, node_id="n1", gpu_indices=(1, 2))
    assert book.take(fraction) and book.take(whole)
    assert node.cpu_free == 10 and node.memory_free == 63 * 2**30
    assert node.gpu_free == [0.75, 0.0, 0.0, 1.0]  # a multi-GPU job holds all of each of its GPUs
    assert node.custom_free == {"tpu": 1.0}
    book.give_back(whole)
    book.give_back(fraction)
    assert node == _node(custom={"tpu": 2.0})


def test_a_job_on_a_node_the_book_lacks_holds_nothing():
    book = policy.CapacityBook([_node()])
    assert book.take(policy.RunningJob(1, cpu=8, node_id="gone")) is False
    assert book.nodes()[0].cpu_free == 16


def test_draining_shares_and_indices_past_the_node_are_safe():
    node = _node(gpus=2)
    book = policy.CapacityBook([node])
    book.hold_gpus("n1", (1, 5), 0.5)
    book.hold_gpus("other", (0,), 0.5)
    assert node.gpu_free == [1.0, 0.5]


def test_a_decision_releases_exactly_what_the_book_took():
    """NodeRoom.release (reservations, preemption) gives back custom resources too."""
    empty = _node(custom={"tpu": 2.0})
    node = _node(custom={"tpu": 2.0})
    job = policy.RunningJob(7, cpu=3, gpu=0.5, memory=2**30, node_id="n1", gpu_indices=(3,), custom={"tpu": 2.0})
    policy.CapacityBook([node]).take(job)
    room = NodeRoom.of(node)
    assert room.custom == {"tpu": 0}
    room.release(job)
    assert (room.cpu, room.memory, room.gpu, room.custom) == _room(empty)


def test_a_reservation_counts_the_custom_resource_a_running_job_gives_back():
    """The head needs the node's only licence, held by a job that ends in 100 s:
    its reservation is then, on that node."""
    node = _node(custom={"licence": 1.0})
    running = policy.RunningJob(1, cpu=0.5, node_id="n1", started_at=0.0, time_limit=100.0, custom={"licence": 1.0})
    book = policy.CapacityBook([node])
    book.take(running)
    head = policy.Demand(job_id=2, cpu=1, custom={"licence": 1.0}, seq=2)
    # Fits now, but not beside the head once it starts, and with no time limit it would still run then.
    behind = policy.Demand(job_id=3, cpu=15.5, seq=3)
    decision = policy.decide([head, behind], book.nodes(), running=[running], now=0.0)
    assert decision.placements == []
    assert "would delay job 2, which has node n1 reserved in 100s" in decision.waiting[3]


def test_estimates_book_a_running_jobs_custom_resources():
    """A pending job that needs the licence a running job holds starts when that
    one ends, not now."""
    node = _node(custom={"licence": 1.0})
    running = policy.RunningJob(1, cpu=1, node_id="n1", started_at=0.0, custom={"licence": 1.0})
    pending = policy.Demand(job_id=2, cpu=1, custom={"licence": 1.0}, seq=2)
    starts = estimate.estimate_starts([pending], [running], [node], durations={1: 300.0, 2: 60.0}, now=100.0)
    assert starts == {2: 300.0}


def test_the_virtual_cluster_books_through_the_same_rule():
    cluster = VirtualCluster([_node(gpus=2)], [_node(gpus=2)], policy_name="labq", queues=None, half_life=3600.0)
    cluster.arrive(policy.Demand(job_id=1, cpu=2, gpu=2, seq=1), 50.0)
    cluster.arrive(policy.Demand(job_id=2, cpu=2, gpu=0.5, seq=2), 10.0)
    cluster.advance(0.0)
    cluster.decide(0.0)
    assert set(cluster.first_start) == {1}  # job 2 finds no GPU share free
    assert cluster.alloc == [2.0, 2.0]
    cluster.advance(50.0)
    cluster.end_due(50.0)
    cluster.decide(50.0)
    assert cluster.first_start == {1: 0.0, 2: 50.0}
    assert cluster.alloc == [0.5, 2.0]
    assert cluster.busy == [100.0, 100.0]


def test_a_kept_room_given_back_what_ended_is_the_room_built_afresh():
    """A caller may keep one ClusterRoom between decisions: the decision books
    its placements in it and give_back returns what an ended job held, so the
    room and both its indexes equal one built from the capacity book."""
    nodes = [_node("a", gpus=4, custom={"tpu": 2.0}), _node("b", gpus=2), _node("c", gpus=0)]
    book = policy.CapacityBook(nodes)
    room = policy.ClusterRoom(book.nodes())
    shapes = [dict(cpu=1, gpu=0.25), dict(cpu=2, gpu=2), dict(cpu=4), dict(cpu=1, gpu=1, custom={"tpu": 1.0}),
              dict(cpu=0.5, gpu=0.5, memory=2**30), dict(cpu=3)]
    demands = [policy.Demand(job_id=i, seq=i, **shapes[i % len(shapes)]) for i in range(18)]
    decision = policy.decide(demands, book.nodes(), room=room, explain=False)
    assert len(decision.placements) >= 10
    by_id = {d.job_id: d for d in demands}
    running = []
    for p in decision.placements:
        d = by_id[p.job_id]
        job = policy.RunningJob(d.job_id, cpu=d.cpu, gpu=p.gpu_share, memory=d.memory, node_id=p.node_id,
                                gpu_indices=p.gpu_indices, custom=d.custom)
        assert book.take(job)
        running.append(job)

    def same(kept: policy.ClusterRoom) -> None:
        fresh = policy.ClusterRoom(book.nodes())
        assert kept.by_cpu == fresh.by_cpu and kept.by_gpu == fresh.by_gpu
        assert kept.by_cpu_no_free_gpu == fresh.by_cpu_no_free_gpu and kept.by_state == fresh.by_state
        assert {i: (w.cpu, w.memory, w.gpu, w.custom, w.whole) for i, w in kept.nodes.items()} == {
            i: (w.cpu, w.memory, w.gpu, w.custom, w.whole) for i, w in fresh.nodes.items()}

    same(room)
    for job in running[::2]:  # half of them end
        book.give_back(job)
        room.give_back(job)
    same(room)
    room.give_back(policy.RunningJob(99, cpu=1, node_id="gone"))  # a node the room lacks: nothing changes
    same(room)
