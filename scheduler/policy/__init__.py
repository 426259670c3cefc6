"""The scheduling policy: a pure function from (queue, capacity, usage) to decisions.

No database, no Ray, no clock: the live loop, the simulator and the tests all call
:func:`decide` with plain records, so what the simulator measures is what runs.

Policies (``policy=``):

* ``fifo``: submission order only; the first job that does not fit blocks the rest.
* ``priority``: priority (higher first), then submission order; a job that does
  not fit is skipped, so smaller jobs behind it use the capacity.
* ``fair``: weighted fair share (below), otherwise as ``priority``.
* ``labq`` (the default, used live): fair share, queue quotas with borrowing,
  backfill with reservations for the first blocked jobs, and preemption of
  borrowers.

Fair share is dominant-resource fairness (DRF) over two levels, queues by weight,
then users within a queue, then priority and age within a user.  A user's *load*
is the dominant share of what they hold now plus their decayed past usage turned
into a share (past dominant-share-seconds / the decay's mean lifetime, i.e. the
share they held on average lately), so history counts but fades with the
half-life.  The next job always comes from the least-loaded queue (per weight),
then its least-loaded user; placing a job raises both, so one user's sweep
interleaves with everyone else's jobs instead of jumping ahead of them.  DRF
rather than GPU-only share because CPU-only data prep competes too.

Queues (``QueueConfig``): a *guarantee* in cpu/gpu/memory, an optional hard
*limit*; a queue over its guarantee *borrows* idle capacity (if ``borrow``).
Queues under their guarantee are served before borrowing ones, and a queue with
``preempt`` that is under its guarantee may take back capacity from borrowers:
the policy names the running jobs to preempt, the loop stops and requeues them.

Backfill: the first job that cannot start for want of capacity gets a
reservation: the node and time at which it can start, from the time limits of
running jobs; so does the first blocked job of another shape, up to
``backfill.MAX_RESERVATIONS``.  A later job starts only if it cannot delay them:
it ends (by its time limit) before a reservation, or it fits in what the
reserved job leaves on that node, or it goes elsewhere.  With no time limits known nothing can be
reserved, and any job that fits starts (capacity never idles on a guess).

Placement is per node and per GPU: a 0.5-GPU job needs 0.5 free on *one* GPU.
Fractional jobs go best-fit onto the fullest GPU that still has room, preferring
nodes with fewer whole GPUs free, so whole GPUs stay free for whole-GPU jobs.
CPU-only jobs go best-fit onto the nodes without a free GPU share first, so they
do not take a GPU node's last cores and strand its GPUs.  Under ``labq``, with a mix
of expected shapes, a job goes where it adds the least fragmentation for them
(policy.fragmentation, in FGD's score buckets), ties as above, then a fixed
node order.

Speed: demands are grouped into classes (same queue, user, priority, shape and
time limit), and a class that failed this pass is not tried again (capacity only
shrinks within a pass); nodes are indexed by free cpu and by free share per GPU.
With ``explain=False`` (the simulator) a failed class is skipped whole, so a pass
costs O((placed + classes) log n) however long the queue.

The package, one concern a module: ``records`` (what goes in and comes out),
``usage`` (totals and decayed use), ``indexes`` (pending classes, running jobs),
``capacity`` (the one capacity book the loop, simulator and estimates keep),
``room`` (where a job fits during a decision), ``shares`` (fair share and
quotas), ``backfill``, ``preemption``, ``explain`` (why a job waits) and
``walk`` (one decision, over those parts).
"""

from scheduler.policy.capacity import CapacityBook, empty_copy
from scheduler.policy.durations import DEFAULT_STRETCH, DurationBook
from scheduler.policy.fragmentation import MixBook, ShapeMix, mix_of
from scheduler.policy.indexes import PendingIndex, RunningIndex
from scheduler.policy.records import (AHEAD_COUNTED, DEFAULT_HALF_LIFE, DEFAULT_POLICY, GRAIN, POLICIES, RESOURCES,
                                      Decision, Demand, GiB, Node, Placement, QueueConfig, RunningJob, demand_of,
                                      node_of, order)
from scheduler.policy.room import ClusterRoom, fits_now, never_fits
from scheduler.policy.tiers import pending_tier, running_service, tier_of
from scheduler.policy.usage import Capacity, Usage, UsageBook
from scheduler.policy.walk import decide

__all__ = [
    "AHEAD_COUNTED", "DEFAULT_HALF_LIFE", "DEFAULT_POLICY", "DEFAULT_STRETCH", "DurationBook", "GRAIN", "MixBook", "ShapeMix", "mix_of", "POLICIES", "RESOURCES", "Capacity",
    "CapacityBook", "ClusterRoom", "Decision", "Demand", "GiB", "Node", "PendingIndex", "Placement", "QueueConfig", "RunningIndex",
    "RunningJob", "Usage", "UsageBook", "decide", "demand_of", "empty_copy", "fits_now", "never_fits", "node_of",
    "order", "pending_tier", "running_service", "tier_of",
]
