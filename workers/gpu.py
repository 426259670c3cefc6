"""GPU telemetry through NVML, and the watchdog of a job's GPU memory share.

Every real ``pynvml`` call lives in :class:`Nvml`; everything else here works on
what its methods return, so tests replay recorded readings through
:class:`RecordedNvml` on a machine without a GPU.  Where NVML is missing (no
driver, no GPU, ``pynvml`` not installed) :func:`open_nvml` returns None and
callers degrade to "no GPU telemetry" without errors.

Indices are NVML's (PCI bus order).  Ray's GPU ids are the indices it was given
(``CUDA_VISIBLE_DEVICES`` of the raylet, or 0..n-1); :meth:`Nvml.index_of` maps
an id to NVML's index, by UUID when Ray was given UUIDs.  With the default CUDA
device order (``FASTEST_FIRST``) CUDA's and NVML's numbering can differ on a
machine with mixed GPU models; set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` there.

NVML reports host process ids: inside a container with its own pid namespace a
job's pids do not match and its usage reads as zero (no telemetry, no watchdog).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from contract.attempt import gpu_share

# One sample a second: NVML's utilisation is itself an average over the last
# 1/6 s to 1 s (by model), so sampling faster adds nothing to the average; a
# sample is a few driver calls (~0.1-1 ms), well under 0.1% of a core.  Peaks
# shorter than a second can be missed, which is why the grace period below is
# several samples long.
GPU_SAMPLE_SECONDS = 1.0
# A job over its share for this long is ended: long enough to ride out a
# transient workspace (cuDNN autotuning, a checkpoint copy), short enough that a
# neighbour rarely hits its own OOM first.
GPU_GRACE_SECONDS = 10.0
# Over by more than this: a share of 10% plus the CUDA context, which
# torch.cuda.set_per_process_memory_fraction does not count (300-500 MiB).
GPU_MARGIN_FRACTION = 0.10
GPU_MARGIN_BYTES = 512 * 2**20
# After a job ends, how long its processes may take to leave the GPU's list.
GPU_RELEASE_SECONDS = 5.0

GPU_SHARE_EXCEEDED = "exceeded GPU memory share"


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment.  Any value NVML could not give is None."""

    index: int
    uuid: str
    model: str
    memory_total: int
    memory_used: int | None = None
    utilization: float | None = None  # percent of time a kernel ran, over NVML's last window
    temperature: float | None = None  # degrees C
    power_w: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Nvml:
    """The only code that calls pynvml.  Create it with :func:`open_nvml`."""

    def __init__(self, pynvml: Any) -> None:
        self._nv = pynvml
        self._handles: dict[int, Any] = {}

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nv.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def count(self) -> int:
        return int(self._nv.nvmlDeviceGetCount())

    def index_of(self, gpu_id: str) -> int | None:
        """NVML's index of a GPU as Ray names it (an index, or a UUID)."""
        gpu_id = str(gpu_id).strip()
        if gpu_id.isdigit():
            index = int(gpu_id)
            return index if index < self.count() else None
        for index in range(self.count()):
            if self._text(self._nv.nvmlDeviceGetUUID(self._handle(index))) == gpu_id:
                return index
        return None

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def _optional(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nv.NVMLError:  # not supported on this model, or by this driver
            return None

    def memory_total(self, index: int) -> int:
        return int(self._nv.nvmlDeviceGetMemoryInfo(self._handle(index)).total)

    def reading(self, index: int) -> GpuReading:
        nv, h = self._nv, self._handle(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        util = self._optional(nv.nvmlDeviceGetUtilizationRates, h)
        temp = self._optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        power = self._optional(nv.nvmlDeviceGetPowerUsage, h)  # milliwatts
        return GpuReading(index=index, uuid=self._text(nv.nvmlDeviceGetUUID(h)),
                          model=self._text(nv.nvmlDeviceGetName(h)), memory_total=int(mem.total),
                          memory_used=int(mem.used), utilization=None if util is None else float(util.gpu),
                          temperature=None if temp is None else float(temp),
                          power_w=None if power is None else power / 1000.0)

    def devices(self) -> list[GpuReading]:
        return [self.reading(i) for i in range(self.count())]

    def utilization(self, index: int) -> float | None:
        util = self._optional(self._nv.nvmlDeviceGetUtilizationRates, self._handle(index))
        return None if util is None else float(util.gpu)

    def process_memory(self, index: int) -> dict[int, int | None]:
        """pid -> GPU memory it uses on this GPU (None where NVML cannot tell,
        as under some virtualisation)."""
        nv, h = self._nv, self._handle(index)
        out: dict[int, int | None] = {}
        for fn in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            for proc in self._optional(fn, h) or []:
                used = getattr(proc, "usedGpuMemory", None)
                # NVML_VALUE_NOT_AVAILABLE is an all-ones unsigned value.
                out[int(proc.pid)] = None if used is None or used >= 2**63 else int(used)
        return out

    def close(self) -> None:
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError:
            pass


def open_nvml() -> Nvml | None:
    """NVML when this machine has it, else None (never raises)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no GPU telemetry here
        return None
    return Nvml(pynvml)


class RecordedNvml:
    """Replays recorded readings with :class:`Nvml`'s interface, for tests.

    ``frames`` is a list of ``{"devices": [GpuReading...], "processes": {index:
    {pid: bytes}}}``; the current frame is the first until :meth:`advance`
    moves on (the last one then stays)."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        if not frames:
            raise ValueError("RecordedNvml needs at least one frame")
        self.frames = frames
        self.position = 0
        self.closed = False

    @property
    def frame(self) -> dict[str, Any]:
        return self.frames[self.position]

    def advance(self) -> None:
        self.position = min(self.position + 1, len(self.frames) - 1)

    def count(self) -> int:
        return len(self.frame["devices"])

    def index_of(self, gpu_id: str) -> int | None:
        for dev in self.frame["devices"]:
            if str(gpu_id) in (str(dev.index), dev.uuid):
                return dev.index
        return None

    def reading(self, index: int) -> GpuReading:
        return self.frame["devices"][index]

    def devices(self) -> list[GpuReading]:
        return list(self.frame["devices"])

    def memory_total(self, index: int) -> int:
        return self.reading(index).memory_total

    def utilization(self, index: int) -> float | None:
        return self.reading(index).utilization

    def process_memory(self, index: int) -> dict[int, int | None]:
        return dict(self.frame.get("processes", {}).get(index, {}))

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------- node and cleanup

def node_telemetry(nvml: Any = None) -> list[dict[str, Any]] | None:
    """Every GPU of this node now: index, uuid, model, memory total/used,
    utilisation, temperature, power and the pids on it.  [] without NVML;
    None when a read failed midway (the caller keeps its last reading)."""
    own = nvml is None
    nvml = open_nvml() if own else nvml
    if nvml is None:
        return []
    try:
        out = []
        for reading in nvml.devices():
            item = reading.to_json()
            item["pids"] = sorted(nvml.process_memory(reading.index))
            out.append(item)
        return out
    except Exception:  # a GPU fell off the bus mid-read: no reading (None), which is not "no NVML" ([])
        return None
    finally:
        if own:
            nvml.close()


def pids_on_gpus(indices: Iterable[int] | None = None, nvml: Any = None) -> set[int]:
    """The pids NVML lists as using the GPUs ``indices`` (all GPUs when None);
    empty without NVML."""
    own = nvml is None
    nvml = open_nvml() if own else nvml
    if nvml is None:
        return set()
    try:
        wanted = range(nvml.count()) if indices is None else indices
        return {pid for i in wanted for pid in nvml.process_memory(int(i))}
    finally:
        if own:
            nvml.close()


def wait_gone(pids: Iterable[int], timeout: float, indices: Iterable[int] | None = None, nvml: Any = None,
              poll: float = 0.2) -> set[int]:
    """Wait until none of ``pids`` is on the GPUs any more (after a cancel, a
    timeout, a failure).  Returns those still there after ``timeout`` seconds:
    empty means the job left no GPU memory behind."""
    pids = set(pids)
    own = nvml is None
    nvml = open_nvml() if own else nvml
    if nvml is None or not pids:
        return set()
    indices = None if indices is None else list(indices)
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = pids & pids_on_gpus(indices, nvml)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(poll)
    finally:
        if own:
            nvml.close()


# ---------------------------------------------------------------- one job

def share_bytes(resources: dict[str, Any], memory_total: int | None) -> int | None:
    """The GPU memory a job may use on one card: its ``gpu_memory`` request, or
    its fraction of the card; None for whole GPUs or no GPU."""
    gpu_memory = resources.get("gpu_memory")
    if gpu_memory:
        return int(gpu_memory)
    share = gpu_share(resources, memory_total)
    if share is None or memory_total is None:
        return None
    return int(share * memory_total)


@dataclass
class GpuWatch:
    """Samples one job's GPU memory (the sum over its own processes on its GPUs)
    and the GPUs' utilisation; says when the job has been over its share, by
    more than the margin, for longer than the grace period.  Neighbours on the
    card are other processes and never count."""

    nvml: Any
    indices: list[int]
    share: int | None  # bytes per GPU; None: whole GPUs, nothing to enforce
    grace: float = field(default_factory=lambda: GPU_GRACE_SECONDS)
    margin_fraction: float = field(default_factory=lambda: GPU_MARGIN_FRACTION)
    margin_bytes: int = field(default_factory=lambda: GPU_MARGIN_BYTES)
    samples: int = 0
    peak_memory: int = 0
    _memory_sum: float = 0.0
    _util: list[float] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # the job's pids that NVML listed on its GPUs
    _over_since: float | None = None
    _unknown: bool = False

    @property
    def allowed(self) -> int | None:
        if self.share is None:
            return None
        return int(self.share * (1 + self.margin_fraction) + self.margin_bytes)

    def sample(self, pids: set[int], now: float) -> str | None:
        """Read NVML once; return the reason to end the job when it is due."""
        used_per_gpu = []
        for index in self.indices:
            procs = self.nvml.process_memory(index)
            mine = [procs[p] for p in pids if p in procs]
            self.seen.update(p for p in pids if p in procs)
            if any(m is None for m in mine):
                self._unknown = True
            used_per_gpu.append(sum(m for m in mine if m is not None))
            util = self.nvml.utilization(index)
            if util is not None:
                self._util.append(util)
        used = max(used_per_gpu, default=0)
        self.samples += 1
        self.peak_memory = max(self.peak_memory, used)
        self._memory_sum += used
        allowed = self.allowed
        if allowed is None or used <= allowed:
            self._over_since = None
            return None
        if self._over_since is None:
            self._over_since = now
        if now - self._over_since < self.grace:
            return None
        gpu = self.indices[used_per_gpu.index(used)]
        return (f"{GPU_SHARE_EXCEEDED}: the job used {used / 2**20:.0f} MiB on GPU {gpu}, more than its share of "
                f"{self.share / 2**20:.0f} MiB (+{self.margin_fraction:.0%} and {self.margin_bytes / 2**20:.0f} MiB "
                f"margin) for over {self.grace:g}s")

    def summary(self) -> dict[str, Any] | None:
        """What goes into the attempt's result as ``gpu_usage``."""
        if not self.samples:
            return None
        first = self.nvml.reading(self.indices[0]) if self.indices else None
        return {
            "gpus": list(self.indices),
            "model": first.model if first else None,
            "memory_total": first.memory_total if first else None,
            "share_bytes": self.share,
            "peak_memory": self.peak_memory,
            "avg_memory": int(self._memory_sum / self.samples),
            # The card's, not the job's alone: neighbours on a shared GPU count too.
            "utilization_avg": round(sum(self._util) / len(self._util), 1) if self._util else None,
            "utilization_peak": max(self._util) if self._util else None,
            "samples": self.samples,
            "memory_unknown": self._unknown,
        }


def watch_for(resources: dict[str, Any], gpu_ids: list[str], nvml: Any) -> GpuWatch | None:
    """A watch for a job on ``gpu_ids`` (as Ray named them), or None when there
    is nothing to watch (no GPU, no NVML, ids NVML does not know)."""
    if nvml is None or not gpu_ids:
        return None
    indices = [i for i in (nvml.index_of(g) for g in gpu_ids) if i is not None]
    if not indices:
        return None
    total = nvml.memory_total(indices[0])
    return GpuWatch(nvml=nvml, indices=indices, share=share_bytes(resources, total))


def share_environment(resources: dict[str, Any], memory_total: int | None = None) -> dict[str, str]:
    """Environment variables that tell a command its GPU share, in the forms the
    common frameworks read; {} for whole GPUs or none."""
    share = gpu_share(resources, memory_total)
    nbytes = share_bytes(resources, memory_total)
    env: dict[str, str] = {}
    if share is not None:
        env["LABQ_GPU_SHARE"] = f"{share:.4g}"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{share:.4g}"  # JAX preallocates this much, not 75%
    if nbytes is not None:
        env["LABQ_GPU_MEMORY_BYTES"] = str(nbytes)
    if env:
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # TensorFlow grabs the whole card otherwise
    return env
