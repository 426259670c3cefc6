"""What workers.attempt measures and enforces around one attempt, without Ray:
peak RSS (cheaply, with no thread when nothing is enforced), memory requests,
GPU shares (through a recorded NVML), the share's environment variables for
commands, CUDA OOM recognition, and the torch memory cap."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from jobs.api import JobContext
from workers import attempt, gpu
from workers.gpu import GpuReading, RecordedNvml
from workers.paths import RunPaths

GiB = 2**30
MiB = 2**20

JOBS = '''
import threading
import time


def alloc(ctx):
    block = bytearray(ctx.params["mib"] * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return {"threads": sorted(t.name for t in threading.enumerate())}


def hog_then_wait(ctx):
    block = bytearray(300 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    for _ in range(200):  # Python, so the watchdog's interrupt lands
        time.sleep(0.05)
    return {}


def linger(ctx):
    for _ in range(200):
        time.sleep(0.05)
    return {}


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the worker recognises by name."""


def cuda_oom(ctx):
    raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def old_cuda_oom(ctx):
    raise RuntimeError("CUDA error: out of memory")


def plain_failure(ctx):
    raise ValueError("bad input")


def torch_cap(ctx):
    return {"cap": ctx.cap_torch_gpu_memory()}


def leave_a_child(ctx):
    import subprocess
    import sys
    code = "import time; b = bytearray(120 * 2**20); b[::4096] = bytes(len(b[::4096])); print(1, flush=True); time.sleep(3)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    child.stdout.readline()  # its memory is touched
    ctx.params["child"] = child  # still running when the job returns
    return {}
'''


@pytest.fixture
def code(tmp_path):
    path = tmp_path / "code"
    path.mkdir()
    name = f"attjobs_{abs(hash(str(tmp_path))) % 10**8}"
    (path / f"{name}.py").write_text(JOBS)
    yield path, name
    sys.modules.pop(name, None)


def make_task(tmp_path: Path, code_dir: Path, kind: str, target: str, resources: dict | None = None,
              params: dict | None = None, job_id: int = 1) -> dict:
    return {"job_id": job_id, "attempt": 1, "experiment": "e", "stage": "s", "params": params or {},
            "run_dir": str(tmp_path / "runs" / str(job_id)), "target_kind": kind, "target": target, "inputs": [],
            "resources": {"cpu": 1, **(resources or {})}, "code_dir": str(code_dir)}


@pytest.fixture
def on_gpu(monkeypatch):
    """The job was placed on GPU 0 (as Ray would say)."""
    monkeypatch.setattr(attempt, "_placement", lambda: (None, ["0"]))


@pytest.fixture
def no_suicide(monkeypatch):
    """A watchdog that cannot interrupt a job kills its worker; here that is pytest."""
    monkeypatch.setattr(attempt, "KILL_GRACE_SECONDS", 60.0)


# ------------------------------------------------------------------ peak RSS, cheaply

def test_python_job_peak_rss_without_any_thread(tmp_path, code):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", params={"mib": 120}))
    assert result["outcome"] == "succeeded"
    assert "labq-rss" not in result["metrics"]["threads"]  # no memory request, no GPU: nothing sampled
    assert result["peak_rss"] - result["rss_baseline"] >= 110 * MiB
    assert result["cpu_time"] > 0 and result["gpu_usage"] is None and result["oom_cause"] is None


def test_a_job_after_a_big_one_in_the_same_worker_has_its_own_peak(tmp_path, code):
    """The peak is reset per job (a reused Ray worker): the next job's is its own,
    not the high-water mark an earlier job left in the process."""
    path, mod = code
    big = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", params={"mib": 150}, job_id=1))
    small = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", params={"mib": 1}, job_id=2))
    assert big["peak_rss"] - big["rss_baseline"] >= 140 * MiB
    assert small["peak_rss"] - small["rss_baseline"] < 40 * MiB


def test_python_job_peak_rss_counts_a_child_still_running_at_its_end(tmp_path, code):
    path, mod = code
    params: dict = {"x": 1}  # the job hands its child back through its params
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:leave_a_child", params=params))
    params["child"].kill()
    params["child"].wait()
    assert result["outcome"] == "succeeded"
    assert result["peak_rss"] - result["rss_baseline"] >= 110 * MiB  # read from the live child at the end


def test_has_children_sees_a_live_child_and_nothing_once_it_is_reaped():
    # In a fresh process: this one may have Ray's processes as children.
    code = ("import subprocess; from workers.attempt import _has_children as has; before = has(); "
            "child = subprocess.Popen(['sleep', '30']); during = has(); child.kill(); child.wait(); "
            "print(before, during, has())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["False", "True", "False"]


def test_python_job_with_a_memory_request_is_sampled(tmp_path, code):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"memory": GiB},
                                           params={"mib": 50}))
    assert result["outcome"] == "succeeded" and "labq-rss" in result["metrics"]["threads"]


def test_command_peak_rss_counts_its_whole_tree(tmp_path, code):
    path, _ = code
    child = "python3 -c 'import time; b = bytearray(100 * 2**20); b[::4096] = bytes(len(b[::4096])); time.sleep(0.8)'"
    result = attempt.run_attempt(make_task(tmp_path, path, "command", f"{child} & {child}; wait"))
    assert result["outcome"] == "succeeded"
    assert result["peak_rss"] >= 190 * MiB  # two children at once
    assert result["rss_baseline"] == 0


def test_a_command_too_short_to_sample_still_has_a_peak(tmp_path, code):
    path, _ = code
    result = attempt.run_attempt(make_task(tmp_path, path, "command", "true"))
    assert result["outcome"] == "succeeded" and result["peak_rss"] > 0 and result["cpu_time"] is not None


def test_python_job_over_its_memory_request_ends_out_of_memory(tmp_path, code, no_suicide):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:hog_then_wait", {"memory": 100 * MiB}))
    assert result["outcome"] == "out_of_memory" and result["oom_cause"] == "memory"
    assert "more than its memory request of 100 MiB" in result["error"]


def test_a_watchdog_firing_after_the_job_returned_interrupts_nothing(tmp_path, no_suicide):
    """Over the limit just as the job returns: the interrupt must not land in
    labq's own code after it (Ray would report the attempt cancelled)."""
    sampler = attempt._RssSampler(limit=1, paths=RunPaths(tmp_path))
    sampler.interruptible(threading.get_ident())
    sampler.interruptible(None)  # the job returned
    late = threading.Thread(target=sampler._exceed, args=("out of memory: late", "memory"))
    try:
        late.start()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # Python running here: a KeyboardInterrupt sent to this thread lands
            time.sleep(0.01)
        sampler.stop()
        late.join(timeout=5)
        time.sleep(0.05)
    except KeyboardInterrupt:
        sampler.stop()
        pytest.fail("the watchdog interrupted the thread after its job had returned")
    assert sampler.exceeded == "out of memory: late" and not late.is_alive()


def test_command_over_its_memory_request_ends_out_of_memory(tmp_path, code):
    path, _ = code
    hog = "python3 -c 'import time; b = bytearray(300 * 2**20); b[::4096] = bytes(len(b[::4096])); time.sleep(20)'"
    t0 = time.monotonic()
    result = attempt.run_attempt(make_task(tmp_path, path, "command", hog, {"memory": 100 * MiB}))
    assert result["outcome"] == "out_of_memory" and result["oom_cause"] == "memory"
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------ GPU shares for commands

ENV_DUMP = "env | grep -E '^(LABQ_GPU|XLA_|TF_FORCE)' || true"


def printed_env(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "runs" / "1" / "stdout.log").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_command_gets_its_gpu_share_in_the_environment(tmp_path, code, on_gpu):
    path, _ = code
    result = attempt.run_attempt(make_task(tmp_path, path, "command", ENV_DUMP, {"gpu": 0.25}))
    assert result["outcome"] == "succeeded"
    env = printed_env(tmp_path)
    # No NVML here: the share is known, its size in bytes is not
    assert env == {"LABQ_GPU_SHARE": "0.25", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.25",
                   "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def test_command_gets_share_bytes_from_nvml(tmp_path, code, on_gpu, monkeypatch):
    path, _ = code
    monkeypatch.setattr(gpu, "open_nvml", lambda: RecordedNvml([{"devices": [card()], "processes": {}}]))
    result = attempt.run_attempt(make_task(tmp_path, path, "command", ENV_DUMP, {"gpu_memory": 4 * GiB}))
    env = printed_env(tmp_path)
    assert env["LABQ_GPU_SHARE"] == "0.25" and env["LABQ_GPU_MEMORY_BYTES"] == str(4 * GiB)
    assert result["gpu_usage"]["memory_total"] == 16 * GiB and result["gpu_usage"]["share_bytes"] == 4 * GiB


def test_command_without_gpu_gets_no_share_variables(tmp_path, code, monkeypatch):
    path, _ = code
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    attempt.run_attempt(make_task(tmp_path, path, "command", ENV_DUMP, {"gpu": 0}))
    assert printed_env(tmp_path) == {}


# ------------------------------------------------------------------ the GPU memory watchdog in the worker

def card(total: int = 16 * GiB) -> GpuReading:
    return GpuReading(index=0, uuid="GPU-0", model="Test GPU", memory_total=total, memory_used=0, utilization=40.0)


class JobsOnCard(RecordedNvml):
    """One 16 GiB card; each job's processes use what ``usage`` says, found by
    the pid in its run dir (a command's group) or this process (a Python job)."""

    def __init__(self, usage: dict[Path, int]) -> None:
        super().__init__([{"devices": [card()], "processes": {}}])
        self.usage = usage

    def process_memory(self, index):
        out = {}
        for run_dir, used in self.usage.items():
            pgid = run_dir / "pgid"
            if run_dir.name == "self":
                import os

                out[os.getpid()] = used
            elif pgid.exists():
                text = pgid.read_text().split()  # another job's thread may be writing it right now
                if text and text[0].isdigit():
                    out[int(text[0])] = used
        return out


@pytest.fixture
def quick_watchdog(monkeypatch):
    monkeypatch.setattr(gpu, "GPU_SAMPLE_SECONDS", 0.05)
    monkeypatch.setattr(gpu, "GPU_GRACE_SECONDS", 0.3)


def test_command_over_its_gpu_share_is_ended_and_its_neighbour_keeps_running(tmp_path, code, on_gpu,
                                                                             quick_watchdog, monkeypatch):
    # Given two commands sharing a 16 GiB card at 0.25 each, one using 6 GiB, the other 3 GiB
    path, _ = code
    runs = tmp_path / "runs"
    nvml = JobsOnCard({runs / "1": 6 * GiB, runs / "2": 3 * GiB})
    monkeypatch.setattr(gpu, "open_nvml", lambda: nvml)
    monkeypatch.setattr(nvml, "close", lambda: None)
    results = {}

    def run(job_id: int, seconds: float) -> None:
        results[job_id] = attempt.run_attempt(make_task(tmp_path, path, "command", f"sleep {seconds}", {"gpu": 0.25},
                                                        job_id=job_id))

    neighbour = threading.Thread(target=run, args=(2, 2.0))
    neighbour.start()
    # When the over-share one runs past the grace period
    t0 = time.monotonic()
    run(1, 30)
    neighbour.join()
    # Then it alone ends out_of_memory, with the cause, soon; the neighbour finishes
    over, fine = results[1], results[2]
    assert over["outcome"] == "out_of_memory" and over["oom_cause"] == "gpu_share"
    assert over["error"].startswith("exceeded GPU memory share") and time.monotonic() - t0 < 10
    assert over["gpu_usage"]["peak_memory"] == 6 * GiB
    assert fine["outcome"] == "succeeded" and fine["gpu_usage"]["peak_memory"] == 3 * GiB
    assert fine["gpu_usage"]["samples"] >= 2


def test_python_job_over_its_gpu_share_is_interrupted(tmp_path, code, on_gpu, quick_watchdog, no_suicide,
                                                     monkeypatch):
    path, mod = code
    monkeypatch.setattr(gpu, "open_nvml", lambda: JobsOnCard({tmp_path / "self": 12 * GiB}))
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:linger", {"gpu": 0.5}))
    assert result["outcome"] == "out_of_memory" and "exceeded GPU memory share" in result["error"]
    assert result["oom_cause"] == "gpu_share"


def test_python_job_within_its_share_gets_telemetry(tmp_path, code, on_gpu, quick_watchdog, monkeypatch):
    path, mod = code
    monkeypatch.setattr(gpu, "open_nvml", lambda: JobsOnCard({tmp_path / "self": 2 * GiB}))
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"gpu": 0.5},
                                           params={"mib": 1}))
    usage = result["gpu_usage"]
    assert result["outcome"] == "succeeded"
    assert usage["peak_memory"] == 2 * GiB and usage["avg_memory"] == 2 * GiB and usage["utilization_avg"] == 40.0
    assert usage["model"] == "Test GPU" and usage["share_bytes"] == 8 * GiB


def test_gpu_job_without_nvml_runs_without_telemetry(tmp_path, code, on_gpu):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"gpu": 0.5},
                                           params={"mib": 1}))
    assert result["outcome"] == "succeeded" and result["gpu_usage"] is None and result["gpu_ids"] == ["0"]


# ------------------------------------------------------------------ CUDA out of memory

@pytest.mark.parametrize("target", ["cuda_oom", "old_cuda_oom"])
def test_python_job_raising_cuda_oom_ends_out_of_memory(tmp_path, code, target):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:{target}"))
    assert result["outcome"] == "out_of_memory" and result["oom_cause"] == "cuda"
    assert result["error"].startswith("out of GPU memory (CUDA out of memory)")


def test_other_failures_stay_failures(tmp_path, code):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:plain_failure"))
    assert result["outcome"] == "failed" and result["oom_cause"] is None


def test_command_printing_cuda_oom_ends_out_of_memory(tmp_path, code):
    path, _ = code
    cmd = "echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB' >&2; exit 1"
    result = attempt.run_attempt(make_task(tmp_path, path, "command", cmd))
    assert result["outcome"] == "out_of_memory" and result["oom_cause"] == "cuda"
    assert "CUDA out of memory" in result["error"] and "exited with code 1" in result["error"]


def test_is_cuda_oom_by_class_name_or_text():
    class OutOfMemoryError(Exception):
        pass

    class Sub(OutOfMemoryError):
        pass

    assert attempt.is_cuda_oom(OutOfMemoryError()) and attempt.is_cuda_oom(Sub())
    assert attempt.is_cuda_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not attempt.is_cuda_oom(MemoryError()) and not attempt.is_cuda_oom(ValueError("x"))


# ------------------------------------------------------------------ the torch memory cap

class FakeCuda:
    def __init__(self, available: bool = True, initialized: bool = True, total: int = 16 * GiB, count: int = 1):
        self.available, self.initialized, self.total, self.count = available, initialized, total, count
        self.fractions: list[tuple[float, int]] = []
        self.emptied = 0

    def is_available(self):
        return self.available

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return self.count

    def get_device_properties(self, index):
        return types.SimpleNamespace(total_memory=self.total)

    def set_per_process_memory_fraction(self, fraction, device):
        self.fractions.append((fraction, device))

    def empty_cache(self):
        self.emptied += 1


@pytest.fixture
def fake_torch(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, device=lambda kind, i: i))
    return cuda


def ctx(tmp_path, resources, gpu_ids=("0",)):
    return JobContext(job_id=1, attempt=1, experiment="e", stage="s", params={}, run_dir=tmp_path,
                      gpu_ids=list(gpu_ids), resources=resources)


@pytest.mark.parametrize("resources, fraction", [({"gpu": 0.25}, 0.25), ({"gpu_memory": 4 * GiB}, 0.25),
                                                  ({"gpu": 0.5, "gpu_memory": 2 * GiB}, 0.125)])
def test_torch_cap_is_the_share_of_the_card(tmp_path, fake_torch, resources, fraction):
    assert ctx(tmp_path, resources).cap_torch_gpu_memory() == fraction
    assert fake_torch.fractions == [(fraction, 0)]


def test_whole_gpus_lift_an_earlier_cap_on_every_device(tmp_path, fake_torch):
    assert ctx(tmp_path, {"gpu": 2}, ("0", "1")).cap_torch_gpu_memory() is None
    assert fake_torch.fractions == [(1.0, 0), (1.0, 1)]


@pytest.mark.parametrize("available, gpu_ids", [(False, ("0",)), (True, ())])
def test_no_cap_without_cuda_or_without_a_gpu(tmp_path, fake_torch, available, gpu_ids):
    fake_torch.available = available
    assert ctx(tmp_path, {"gpu": 0.5}, gpu_ids).cap_torch_gpu_memory() is None and fake_torch.fractions == []


def test_cap_never_imports_torch(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert ctx(tmp_path, {"gpu": 0.5}).cap_torch_gpu_memory() is None
    assert "torch" not in sys.modules


def test_cap_with_real_torch_on_this_cpu_machine_does_nothing(tmp_path):
    pytest.importorskip("torch")
    assert ctx(tmp_path, {"gpu": 0.5}).cap_torch_gpu_memory() is None


def test_worker_caps_a_job_when_cuda_already_runs_in_it_and_frees_the_cache_after(tmp_path, code, on_gpu,
                                                                                    fake_torch):
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"gpu": 0.25},
                                           params={"mib": 1}))
    assert result["outcome"] == "succeeded"
    assert fake_torch.fractions == [(0.25, 0)] and fake_torch.emptied == 1


def test_worker_does_not_start_cuda_for_a_job(tmp_path, code, on_gpu, fake_torch):
    fake_torch.initialized = False
    path, mod = code
    attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"gpu": 0.25}, params={"mib": 1}))
    assert fake_torch.fractions == [] and fake_torch.emptied == 0


def test_job_caps_through_its_context(tmp_path, code, on_gpu, fake_torch):
    fake_torch.initialized = False  # the job starts CUDA itself
    path, mod = code
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:torch_cap", {"gpu": 0.5}))
    assert result["metrics"]["cap"] == 0.5 and fake_torch.fractions == [(0.5, 0)]


def test_tree_reads_only_processes_newer_than_the_job(tmp_path):
    import subprocess

    since = attempt._last_pid()
    assert since is not None
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 2 & sleep 2; wait"], start_new_session=True)
    try:
        time.sleep(0.3)
        tree = attempt._tree(proc.pid, since, proc.pid)
        assert len(tree) == 2 and all(p > proc.pid for p in tree)
        assert attempt._tree(proc.pid, attempt._last_pid()) == set()  # nothing newer: /proc is not even listed
    finally:
        proc.kill()
        proc.wait()



def test_gpu_usage_lists_job_processes_left_on_the_gpu(tmp_path, code, on_gpu, quick_watchdog, monkeypatch):
    # Given NVML that keeps listing the command's pid after it ended (a leak)
    path, _ = code
    monkeypatch.setattr(gpu, "GPU_RELEASE_SECONDS", 0.2)
    nvml = JobsOnCard({tmp_path / "runs" / "1": GiB})
    monkeypatch.setattr(gpu, "open_nvml", lambda: nvml)
    result = attempt.run_attempt(make_task(tmp_path, path, "command", "sleep 0.3", {"gpu": 0.5}))
    pgid = int((tmp_path / "runs" / "1" / "pgid").read_text().split()[0])  # "<pgid> <leader start>"
    assert result["gpu_usage"]["pids_left"] == [pgid]


def test_gpu_usage_pids_left_is_empty_when_the_job_released_the_gpu(tmp_path, code, on_gpu, quick_watchdog,
                                                                    monkeypatch):
    path, mod = code
    monkeypatch.setattr(gpu, "open_nvml", lambda: JobsOnCard({tmp_path / "self": GiB}))  # the worker's own context
    result = attempt.run_attempt(make_task(tmp_path, path, "callable", f"{mod}:alloc", {"gpu": 0.5},
                                           params={"mib": 1}))
    assert result["gpu_usage"]["pids_left"] == []
