"""GPU telemetry and the GPU memory watchdog, through workers.gpu's seam over
NVML: recorded readings replayed by RecordedNvml on this machine without a GPU,
and the real "no NVML here" path."""

from __future__ import annotations

import sys
import types

import pytest

from workers import gpu
from workers.gpu import GpuReading, GpuWatch, Nvml, RecordedNvml

GiB = 2**30
MiB = 2**20


def card(index: int = 0, total: int = 16 * GiB, used: int = 0, util: float | None = 50.0) -> GpuReading:
    return GpuReading(index=index, uuid=f"GPU-{index:04d}", model="Test GPU", memory_total=total, memory_used=used,
                      utilization=util, temperature=60.0, power_w=120.0)


def frames(*per_frame: dict[int, int], util: list[float] | None = None) -> list[dict]:
    """One card; each frame maps pid -> bytes on it."""
    return [{"devices": [card(util=(util[i] if util else 50.0))], "processes": {0: procs}}
            for i, procs in enumerate(per_frame)]


# ------------------------------------------------------------------ no NVML on this machine

def test_without_nvml_everything_degrades_to_no_telemetry():
    # Given this machine, where pynvml is installed but nvmlInit fails (no driver)
    assert gpu.open_nvml() is None
    # Then node telemetry is empty, no pids are on GPUs, nothing is waited for, nothing is watched
    assert gpu.node_telemetry() == []
    assert gpu.pids_on_gpus([0]) == set()
    assert gpu.wait_gone({1, 2}, timeout=5) == set()
    assert gpu.watch_for({"gpu": 0.25}, ["0"], gpu.open_nvml()) is None


def test_without_pynvml_installed_open_nvml_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert gpu.open_nvml() is None


# ------------------------------------------------------------------ the real Nvml class over a stand-in pynvml

def fake_pynvml(procs: list) -> types.ModuleType:
    class NVMLError(Exception):
        pass

    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: None
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetUUID = lambda h: b"GPU-abcd"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * GiB, used=10 * GiB)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=37, memory=10)

    def unsupported(*args):
        raise NVMLError("Not Supported")

    nv.nvmlDeviceGetTemperature = unsupported
    nv.nvmlDeviceGetPowerUsage = lambda h: 250_000  # milliwatts
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: procs
    nv.nvmlDeviceGetGraphicsRunningProcesses = unsupported
    return nv


def test_nvml_wraps_pynvml_readings_and_tolerates_unsupported_queries(monkeypatch):
    procs = [types.SimpleNamespace(pid=10, usedGpuMemory=2 * GiB),
             types.SimpleNamespace(pid=11, usedGpuMemory=2**64 - 1)]  # NVML_VALUE_NOT_AVAILABLE
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(procs))
    nvml = gpu.open_nvml()
    assert isinstance(nvml, Nvml)
    (reading,) = nvml.devices()
    assert reading == GpuReading(index=0, uuid="GPU-abcd", model="NVIDIA H100", memory_total=80 * GiB,
                                 memory_used=10 * GiB, utilization=37.0, temperature=None, power_w=250.0)
    assert nvml.process_memory(0) == {10: 2 * GiB, 11: None}
    assert nvml.index_of("0") == 0 and nvml.index_of("GPU-abcd") == 0 and nvml.index_of("3") is None
    assert gpu.node_telemetry()[0]["pids"] == [10, 11]
    assert gpu.pids_on_gpus() == {10, 11}


# ------------------------------------------------------------------ telemetry

def test_node_telemetry_lists_every_gpu_with_its_readings():
    nvml = RecordedNvml([{"devices": [card(0, used=3 * GiB), card(1, total=24 * GiB)],
                          "processes": {0: {42: 3 * GiB}}}])
    out = gpu.node_telemetry(nvml)
    assert [(d["index"], d["model"], d["memory_total"], d["pids"]) for d in out] == [
        (0, "Test GPU", 16 * GiB, [42]), (1, "Test GPU", 24 * GiB, [])]
    assert {"memory_used", "utilization", "temperature", "power_w", "uuid"} <= set(out[0])
    assert not nvml.closed  # a caller's NVML is the caller's to close


def test_job_summary_has_peak_and_average_of_its_own_processes_only():
    # Given a job (pids 1 and 2) sharing its card with a neighbour (pid 9)
    nvml = RecordedNvml(frames({1: 1 * GiB, 9: 8 * GiB}, {1: 2 * GiB, 2: 1 * GiB, 9: 8 * GiB}, {1: 3 * GiB, 9: 8 * GiB},
                               util=[20.0, 60.0, 100.0]))
    watch = gpu.watch_for({"gpu": 0.5}, ["0"], nvml)
    for t in range(3):
        assert watch.sample({1, 2}, now=float(t)) is None
        nvml.advance()
    # Then peak and average count its processes only, the card's utilisation is averaged
    s = watch.summary()
    assert s["peak_memory"] == 3 * GiB and s["avg_memory"] == int(7 * GiB / 3)  # 1, 2+1, 3 GiB
    assert s["samples"] == 3 and s["utilization_avg"] == 60.0 and s["utilization_peak"] == 100.0
    assert s["memory_total"] == 16 * GiB and s["share_bytes"] == 8 * GiB and s["model"] == "Test GPU"


def test_summary_average_over_uneven_samples():
    nvml = RecordedNvml(frames({1: 1 * GiB}, {1: 2 * GiB}, {1: 6 * GiB}))
    watch = GpuWatch(nvml=nvml, indices=[0], share=None)
    for t in range(3):
        watch.sample({1}, float(t))
        nvml.advance()
    assert watch.summary()["avg_memory"] == 3 * GiB and watch.summary()["peak_memory"] == 6 * GiB


def test_no_samples_no_summary():
    assert GpuWatch(nvml=RecordedNvml(frames({})), indices=[0], share=None).summary() is None


# ------------------------------------------------------------------ the watchdog

def test_watchdog_ends_the_job_over_its_share_after_the_grace_and_leaves_its_neighbour():
    # Given two jobs with 0.25 of a 16 GiB card each (4 GiB; allowed 4.4 GiB + 512 MiB margin)
    over, within = 6 * GiB, 4 * GiB + 700 * MiB  # the neighbour is over its share but inside the margin
    nvml = RecordedNvml(frames({100: over, 200: within}))
    a = GpuWatch(nvml=nvml, indices=[0], share=4 * GiB, grace=10.0)
    b = GpuWatch(nvml=nvml, indices=[0], share=4 * GiB, grace=10.0)
    assert a.allowed == int(4 * GiB * 1.1) + 512 * MiB
    # When both are sampled once a second
    ended_a = ended_b = None
    for t in range(0, 15):
        ended_a = ended_a or (a.sample({100}, float(t)) and t)
        ended_b = ended_b or b.sample({200}, float(t))
    # Then the one over share+margin is ended once it has been over for the grace period, the other never
    assert ended_a == 10
    assert ended_b is None


def test_watchdog_message_names_the_cause_and_the_sizes():
    nvml = RecordedNvml(frames({1: 8 * GiB}))
    watch = GpuWatch(nvml=nvml, indices=[0], share=2 * GiB, grace=0.0)
    message = watch.sample({1}, 0.0)
    assert message.startswith(gpu.GPU_SHARE_EXCEEDED) and "8192 MiB on GPU 0" in message and "2048 MiB" in message


def test_watchdog_forgives_a_spike_shorter_than_the_grace():
    nvml = RecordedNvml(frames({1: 9 * GiB}, {1: 9 * GiB}, {1: 1 * GiB}, {1: 9 * GiB}, {1: 9 * GiB}))
    watch = GpuWatch(nvml=nvml, indices=[0], share=2 * GiB, grace=2.5)
    results = []
    for t in range(5):
        results.append(watch.sample({1}, float(t)))
        nvml.advance()
    assert results == [None] * 5  # over at 0-1 and 3-4, never 2.5 s in a row


def test_whole_gpus_are_measured_not_policed():
    nvml = RecordedNvml(frames({1: 15 * GiB}))
    watch = gpu.watch_for({"gpu": 1}, ["0"], nvml)
    assert watch.share is None
    assert all(watch.sample({1}, float(t)) is None for t in range(30))
    assert watch.summary()["peak_memory"] == 15 * GiB


def test_gpu_memory_request_is_the_share_in_bytes():
    watch = gpu.watch_for({"gpu": 0.375, "gpu_memory": 6 * GiB}, ["GPU-0000"], RecordedNvml(frames({})))
    assert watch.share == 6 * GiB and watch.indices == [0]


def test_unknown_gpu_ids_are_not_watched():
    assert gpu.watch_for({"gpu": 0.5}, ["7"], RecordedNvml(frames({}))) is None


# ------------------------------------------------------------------ shares for commands

@pytest.mark.parametrize("resources, total, expected", [
    ({"gpu": 0.25}, None, {"LABQ_GPU_SHARE": "0.25", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
                           "TF_FORCE_GPU_ALLOW_GROWTH": "true"}),
    ({"gpu": 0.25}, 16 * GiB, {"LABQ_GPU_SHARE": "0.25", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
                               "TF_FORCE_GPU_ALLOW_GROWTH": "true", "LABQ_GPU_MEMORY_BYTES": str(4 * GiB)}),
    ({"gpu_memory": 6 * GiB}, 24 * GiB, {"LABQ_GPU_SHARE": "0.25", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
                                         "TF_FORCE_GPU_ALLOW_GROWTH": "true", "LABQ_GPU_MEMORY_BYTES": str(6 * GiB)}),
    ({"gpu_memory": 6 * GiB}, None, {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "LABQ_GPU_MEMORY_BYTES": str(6 * GiB)}),
    ({"gpu": 1}, 16 * GiB, {}),
    ({"gpu": 2}, None, {}),
    ({"gpu": 0}, None, {}),
])
def test_share_environment(resources, total, expected):
    assert gpu.share_environment(resources, total) == expected


# ------------------------------------------------------------------ leak-free cleanup

class Draining(RecordedNvml):
    """Moves to the next frame on every read, like a process releasing its memory."""

    def process_memory(self, index):
        out = super().process_memory(index)
        self.advance()
        return out


def test_wait_gone_returns_once_the_jobs_pids_left_the_gpus():
    nvml = Draining(frames({5: GiB, 6: GiB, 9: GiB}, {6: GiB, 9: GiB}, {9: GiB}))
    assert gpu.pids_on_gpus([0], nvml) == {5, 6, 9}
    assert gpu.wait_gone({5, 6}, timeout=5, nvml=nvml, poll=0.01) == set()


def test_wait_gone_reports_what_is_still_there_after_the_timeout():
    nvml = RecordedNvml(frames({5: GiB, 9: GiB}))
    assert gpu.wait_gone({5, 7}, timeout=0.05, indices=[0], nvml=nvml, poll=0.01) == {5}
