"""The Alibaba "openb" traces of the FGD paper (Weng et al., "Beware of
Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient
Descent", USENIX ATC'23) as labq's simulator records.

The CSVs under bench/data/fgd/ are copied from hkust-adsl/kubernetes-scheduler-simulator
(data/csv/, see bench/data/fgd/README.md).  Units, as in that repo's data/README.md:

* nodes (``openb_node_list_gpu_node``): ``sn``, ``cpu_milli`` (1/1000 CPU),
  ``memory_mib``, ``gpu`` (count), ``model`` (GPU type);
* pods (``openb_pod_list_*``): ``name``, ``cpu_milli``, ``memory_mib``,
  ``num_gpu`` (0..8), ``gpu_milli`` (per GPU, 0..1000: below 1000 only when
  num_gpu == 1, i.e. a GPU-sharing pod), ``gpu_spec`` (allowed GPU types joined
  by ``|``, empty: any), ``qos``, ``pod_phase``, and ``creation_time``,
  ``deletion_time``, ``scheduled_time`` in seconds (the multigpu variants have
  none of the last five columns; ``scheduled_time`` is empty for pods that never
  ran).

A pod becomes a labq job as the artifact's pod_csv_to_yaml.py turns it into a
Kubernetes pod: num_gpu == 0 is CPU-only; num_gpu == 1 asks ``gpu_milli``/1000
of one GPU (a share when below 1); num_gpu > 1 asks that many whole GPUs
(gpu_milli is always 1000 there).  GPU type constraints (``gpu_spec``) have no
labq equivalent (a job cannot ask for "V100M16 or V100M32"), so
:func:`gpu_spec_jobs` counts them and the loaders ignore them.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scheduler import policy
from scheduler.simulator import TraceJob, node

DATA = Path(__file__).resolve().parent / "data" / "fgd"
MiB = 2**20
MILLI = 1000
NODE_LIST = "openb_node_list_gpu_node"  # the artifact's experiments use the GPU nodes only


@dataclass(frozen=True)
class Pod:
    """One row of an openb pod list, in the trace's own units."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU
    gpu_spec: str = ""
    pod_phase: str = ""
    creation_time: float | None = None
    deletion_time: float | None = None
    scheduled_time: float | None = None

    @property
    def gpu(self) -> float:
        """What labq's ``gpu`` field means for this pod: a share of one GPU (<= 1)
        or a whole number of GPUs."""
        if self.num_gpu <= 0 or self.gpu_milli <= 0:
            return 0.0  # pod_csv_to_yaml writes gpu-milli "0": the artifact's filters treat it as CPU-only
        if self.num_gpu == 1:
            return min(self.gpu_milli, MILLI) / MILLI
        return float(self.num_gpu)

    @property
    def total_gpu_milli(self) -> int:
        """GPU milli this pod asks for in all (the artifact's ``TotalMilliGpu``)."""
        return self.num_gpu * min(self.gpu_milli, MILLI) if self.gpu_milli > 0 else 0

    @property
    def ran_for(self) -> float | None:
        """Seconds from being scheduled to deletion; None if it never ran."""
        if self.scheduled_time is None or self.deletion_time is None:
            return None
        return max(0.0, self.deletion_time - self.scheduled_time)


# ---------------------------------------------------------------- files

def path_of(name: str) -> Path:
    """``DATA/name.csv.gz`` or ``DATA/name.csv``, whichever is there."""
    for candidate in (DATA / f"{name}.csv.gz", DATA / f"{name}.csv"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{DATA / name}.csv(.gz): not found; see bench/data/fgd/README.md")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


def _time(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def load_pods(variant: str = "default") -> list[Pod]:
    """The pods of ``openb_pod_list_<variant>`` in file order."""
    return [Pod(name=r["name"], cpu_milli=int(r["cpu_milli"]), memory_mib=int(r["memory_mib"]),
                num_gpu=int(r["num_gpu"]), gpu_milli=int(r["gpu_milli"]), gpu_spec=r.get("gpu_spec") or "",
                pod_phase=r.get("pod_phase") or "", creation_time=_time(r.get("creation_time")),
                deletion_time=_time(r.get("deletion_time")), scheduled_time=_time(r.get("scheduled_time")))
            for r in _rows(path_of(f"openb_pod_list_{variant}"))]


def load_nodes(name: str = NODE_LIST, with_memory: bool = True) -> list[policy.Node]:
    """The cluster: one empty labq node per row.  ``with_memory``: give nodes
    their memory, so labq checks it as the artifact's Kubernetes filter does."""
    return [node(r["sn"], int(r["cpu_milli"]) / MILLI, int(r["gpu"]),
                 int(r["memory_mib"]) * MiB if with_memory else 0)
            for r in _rows(path_of(name))]


def node_models(name: str = NODE_LIST) -> dict[str, str]:
    """Node id -> GPU model (for reports; labq does not use it)."""
    return {r["sn"]: r["model"] for r in _rows(path_of(name))}


def available_variants() -> list[str]:
    return sorted(p.name.split("openb_pod_list_")[1].split(".csv")[0] for p in DATA.glob("openb_pod_list_*.csv*"))


# ---------------------------------------------------------------- to labq records

def job_of(pod: Pod, job_id: str, submit_time: float, duration: float | None, priority: int = 0,
           time_limit: float | None = None) -> TraceJob:
    """A pod as a simulator trace row; ``duration`` None: it never ends."""
    return TraceJob(job_id=job_id, submit_time=submit_time, duration=duration, cpu=pod.cpu_milli / MILLI,
                    gpu=pod.gpu, memory=pod.memory_mib * MiB, priority=priority, time_limit=time_limit)


def demand_of(pod: Pod, job_id: int, t: float, with_memory: bool = True) -> policy.Demand:
    """A pod as the policy's pending demand (for driving a VirtualCluster directly)."""
    return policy.Demand(job_id=job_id, cpu=pod.cpu_milli / MILLI, gpu=pod.gpu,
                         memory=pod.memory_mib * MiB if with_memory else 0, seq=job_id, submitted_at=t)


def gpu_spec_jobs(pods: Iterable[Pod]) -> int:
    """How many pods name GPU types (ignored by these loaders)."""
    return sum(1 for p in pods if p.gpu_spec)


def timed_jobs(pods: Iterable[Pod], start: float, end: float) -> list[TraceJob]:
    """The pods created in [start, end) that ran, as jobs arriving at their
    creation time (seconds from ``start``) and running for their real run
    time (deletion - scheduled).  Pods that never ran (no scheduled_time: they
    were Pending when the trace was taken) have no run time and are left out."""
    jobs = []
    for pod in pods:
        if pod.creation_time is None or not start <= pod.creation_time < end or pod.ran_for is None:
            continue
        jobs.append(job_of(pod, pod.name, pod.creation_time - start, pod.ran_for))
    jobs.sort(key=lambda j: (j.submit_time, j.job_id))
    return jobs
