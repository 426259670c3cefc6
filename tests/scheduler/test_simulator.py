"""`labq simulate`: traces in, the real policy in virtual time, numbers out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import simulator, traces
from scheduler.policy import QueueConfig
from scheduler.simulator import TraceError, TraceJob, load_nodes, load_trace, node, simulate

REPO = Path(__file__).resolve().parents[2]
HEADER = "job_id,submit_time,duration,cpu,gpu"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def job(job_id, submit, duration, gpu=1.0, cpu=1.0, **extra) -> TraceJob:
    return TraceJob(job_id=str(job_id), submit_time=submit, duration=duration, cpu=cpu, gpu=gpu, **extra)


# ---------------------------------------------------------------- reading traces and nodes

def test_trace_with_optional_columns(tmp_path):
    trace = load_trace(write(tmp_path / "t.csv", HEADER + ",memory,user,queue,priority,time_limit,extra\n"
                             "a,0,60,1,0.5,512,ana,gpu,2,2h,x\n"
                             "b,1.5,,2,2,16GiB,,,,,\n"))
    assert trace[0] == TraceJob("a", 0.0, 60.0, 1.0, 0.5, 512 * 2**20, "ana", "gpu", 2, 7200.0)
    assert trace[1] == TraceJob("b", 1.5, None, 2.0, 2.0, 16 * 2**30, "", "default", 0, None)


@pytest.mark.parametrize("row, message", [
    ("b,1,x,1,1", "line 3: column 'duration': expected seconds >= 0, or empty for a job that never ends, got 'x'"),
    ("b,-1,5,1,1", "line 3: column 'submit_time': expected a number of seconds >= 0, got '-1'"),
    ("b,1,5,1,1.5", "line 3: column 'gpu': expected a share of one GPU (0..1) or a whole number of GPUs, got '1.5'"),
    ("b,1,5,,1", "line 3: column 'cpu': expected a number of cpus >= 0, got nothing"),
    ("a,1,5,1,1", "line 3: column 'job_id': expected a unique id, got 'a'"),
])
def test_bad_trace_row_names_file_line_and_column(tmp_path, row, message):
    path = write(tmp_path / "t.csv", f"{HEADER}\na,0,5,1,1\n{row}\n")
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert str(err.value) == f"{path}: {message}"


def test_trace_missing_a_column(tmp_path):
    path = write(tmp_path / "t.csv", "job_id,submit_time,duration,cpu\n1,0,1,1\n")
    with pytest.raises(TraceError, match=r"line 1: missing column 'gpu'"):
        load_trace(path)


def test_nodes_file(tmp_path):
    nodes = load_nodes(write(tmp_path / "n.csv", "node_id,cpu,gpu,memory,gpu_model,gpu_memory\n"
                             "a,32,4,256GiB,A100,80GiB\nb,8,0,,,\n"))
    assert [(n.node_id, n.cpu_total, n.gpu_total, n.memory_total) for n in nodes] == [
        ("a", 32.0, 4, 256 * 2**30), ("b", 8.0, 0, 0)]
    assert nodes[0].gpu_memory == [80 * 2**30] * 4
    with pytest.raises(TraceError, match=r"line 2: column 'gpu': expected a whole number of GPUs, got '0.5'"):
        load_nodes(write(tmp_path / "bad.csv", "node_id,cpu,gpu\na,4,0.5\n"))


def test_cluster_yaml_sizes_nodes_by_max_workers_and_reads_queues(tmp_path):
    path = write(tmp_path / "c.yaml", """
cluster_name: x
max_workers: 3
head_node_type: head
available_node_types:
  head: {resources: {CPU: 8, GPU: 0}, node_config: {}, max_workers: 0}
  gpu: {resources: {CPU: 32, GPU: 4}, node_config: {}, min_workers: 1, max_workers: 5}
metadata:
  labq:
    queues:
      - {name: research, weight: 2, guarantee: {gpu: 4}, preempt: true}
""")
    nodes, queues = simulator.cluster_from_yaml(path)
    assert sorted((n.node_id, n.gpu_total) for n in nodes) == [("gpu-0", 4), ("gpu-1", 4), ("gpu-2", 4),
                                                               ("head-head", 0)]
    assert queues == [QueueConfig("research", weight=2.0, guarantee={"gpu": 4.0}, preempt=True)]


# ---------------------------------------------------------------- the replay

def test_one_gpu_three_jobs_in_a_row():
    result = simulate([job(i, 0.0, 10.0) for i in range(3)], [node("n", 4, 1)], policy="fifo")
    assert (result.finished, result.unplaced) == (3, 0)
    assert result.avg_wait == pytest.approx(10.0)
    assert result.avg_jct == pytest.approx(20.0)
    assert result.p95_wait == pytest.approx(20.0)
    assert result.makespan == pytest.approx(30.0)
    assert result.gpu_util == pytest.approx(1.0)
    assert result.gpu_alloc_final == pytest.approx(1.0)


def test_fifo_head_blocks_while_priority_lets_small_jobs_past():
    trace = [job("a", 0, 100, gpu=1), job("big", 1, 10, gpu=2), job("small", 2, 10, gpu=1)]
    nodes = [node("n", 8, 2)]
    fifo = simulate(trace, nodes, policy="fifo")
    greedy = simulate(trace, nodes, policy="priority")
    assert fifo.per_user[""]["avg_wait"] == pytest.approx((0 + 99 + 108) / 3)  # small waits behind big
    assert greedy.per_user[""]["avg_wait"] == pytest.approx((0 + 99 + 0) / 3)


def test_backfill_keeps_the_big_job_on_time_and_fills_the_gap():
    # A 3-GPU job holds the node until t=100; a 4-GPU job waits; then long and short 1-GPU jobs arrive.
    trace = [job("holder", 0, 100, gpu=3, time_limit=100), job("big", 1, 50, gpu=4, time_limit=100),
             job("long", 2, 1000, gpu=1, time_limit=1000), job("short", 3, 40, gpu=1, time_limit=60)]
    nodes = [node("n", 16, 4)]
    starts = {}
    for name in ("labq", "fair"):
        replay = simulator._Replay(trace, nodes, name, None, 3600.0)
        replay.run()
        starts[name] = {trace[i].job_id: t for i, t in replay.first_start.items()}
    assert starts["labq"]["big"] == 100.0  # exactly when the holder's limit ends
    assert starts["labq"]["short"] == 3.0  # backfilled: done before t=100
    assert starts["labq"]["long"] == 150.0  # after big, which it would have delayed
    assert starts["fair"]["long"] == 2.0 and starts["fair"]["big"] == 1002.0


def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint():
    queues = [QueueConfig("research", guarantee={"gpu": 1}, preempt=True), QueueConfig("batch")]
    trace = [job("b", 0, 100, gpu=1, queue="batch"), job("r", 10, 20, gpu=1, queue="research")]
    result = simulate(trace, [node("n", 4, 1)], policy="labq", queues=queues)
    assert result.preempted == 1
    assert result.finished == 2
    # r runs 10..30; b ran 0..10, resumes at 30 with 90 s left: ends at 120
    assert result.makespan == pytest.approx(120.0)
    assert result.avg_wait == pytest.approx(0.0)  # wait is until the first start


@pytest.mark.parametrize("restart_cost", [15.0, 0.0])
def test_a_preemption_costs_the_restart_the_simulator_is_told(restart_cost, tmp_path):
    """b ran 0..10, is preempted for r (10..30) and resumes with 90 s left plus
    the restart it pays; the CLI takes the same cost."""
    queues = [QueueConfig("research", guarantee={"gpu": 1}, preempt=True), QueueConfig("batch")]
    trace = [job("b", 0, 100, gpu=1, queue="batch"), job("r", 10, 20, gpu=1, queue="research")]
    result = simulate(trace, [node("n", 4, 1)], policy="labq", queues=queues, restart_cost=restart_cost)
    assert result.preempted == 1 and result.makespan == pytest.approx(120.0 + restart_cost)
    path = write(tmp_path / "t.csv", f"{HEADER},queue\nb,0,100,1,1,batch\nr,10,20,1,1,research\n")
    cluster = write(tmp_path / "c.yaml", "metadata:\n  labq:\n    queues:\n      - {name: research, guarantee: "
                                         "{gpu: 1}, preempt: true}\n      - {name: batch}\n")
    out = subprocess.run([sys.executable, "-m", "scheduler.cli", "--cluster", str(cluster), "simulate", str(path),
                          "--gpus", "1", "--cpus", "4", "--policy", "labq", "--json", "--restart-cost",
                          str(restart_cost)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["makespan"] == pytest.approx(120.0 + restart_cost)


@pytest.mark.parametrize("max_preemptions", [1, 0])
def test_least_attained_service_tiers_let_short_jobs_past_a_long_one(max_preemptions):
    """A 10,000 s job holds the only GPU; short jobs arrive at 4000 and 6000.  With
    tiers at 1 GPU-hour it is past the first: it yields to the first batch and
    resumes 30 s behind; bounded to one preemption, the second batch waits for it."""
    queues = [QueueConfig("default", tiers=(3600.0,), max_preemptions=max_preemptions)]
    trace = [job("long", 0, 10_000, gpu=1), *(job(f"s{k}", 4000, 100, gpu=1) for k in range(3)),
             *(job(f"t{k}", 6000, 100, gpu=1) for k in range(2))]
    tiered = simulate(trace, [node("n", 4, 1)], policy="labq", queues=queues, restart_cost=30.0, stretch=None)
    plain = simulate(trace, [node("n", 4, 1)], policy="labq", stretch=None)
    assert plain.preempted == 0 and plain.makespan == pytest.approx(10_500.0)
    if max_preemptions:
        # s0-s2 run 4000..4300; long resumes at 4300 with 6000 + 30 left, ends 10330; t0, t1 after it
        assert tiered.preempted == 1 and tiered.makespan == pytest.approx(10_530.0)
        assert tiered.avg_jct < plain.avg_jct / 1.5
    else:
        assert tiered.preempted == 0 and tiered.avg_jct == pytest.approx(plain.avg_jct)


def test_shortest_expected_first_preempts_a_job_that_outlived_its_kind():
    """Three 100 s jobs teach the book what this shape runs; a fourth runs
    10,000 s.  When short ones arrive at 4000 it has run 3,700 s, past every run
    known, so it is expected to run about that long again, over 8 x 100 s: it
    yields, and resumes 30 s behind once they are done."""
    queues = [QueueConfig("default", preempt_longer=8.0, max_preemptions=1)]
    trace = [*(job(f"w{k}", 0, 100, gpu=1) for k in range(3)), job("long", 1, 10_000, gpu=1),
             *(job(f"s{k}", 4000, 100, gpu=1) for k in range(3))]
    srpt = simulate(trace, [node("n", 4, 1)], policy="labq", queues=queues, restart_cost=30.0)
    plain = simulate(trace, [node("n", 4, 1)], policy="labq")
    assert plain.preempted == 0 and plain.makespan == pytest.approx(10_600.0)
    # s0-s2 run 4000..4300; long resumes at 4300 with 6,300 + 30 s left
    assert srpt.preempted == 1 and srpt.makespan == pytest.approx(10_630.0)
    assert srpt.avg_jct < plain.avg_jct / 1.5


@pytest.mark.e2e
def test_labq_simulate_tiers_and_reservations_from_the_command_line(tmp_path):
    """`labq simulate --tiers` gives every queue tiers; a trace row with checkpoints=0 is never preempted."""
    rows = ["long,0,10000,1,1,1", *(f"s{k},4000,100,1,1,1" for k in range(3))]
    write(tmp_path / "t.csv", HEADER + ",checkpoints\n" + "\n".join(rows) + "\n")
    write(tmp_path / "stuck.csv", HEADER + ",checkpoints\n" + "\n".join(
        [rows[0].removesuffix(",1") + ",0", *rows[1:]]) + "\n")

    def run(trace, *args):
        return subprocess.run([sys.executable, "-m", "scheduler.cli", "simulate", str(tmp_path / trace), "--gpus", "1",
                               "--policy", "labq", "--json", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=60)

    tiered = run("t.csv", "--tiers", "1h,3h", "--max-preemptions", "1", "--restart-cost", "30", "--stretch", "0",
                 "--reserve-after", "10m")
    assert tiered.returncode == 0, tiered.stderr
    (result,) = json.loads(tiered.stdout)
    assert result["preempted"] == 1 and result["makespan"] == pytest.approx(10_330.0)
    (kept,) = json.loads(run("stuck.csv", "--tiers", "1h").stdout)
    assert kept["preempted"] == 0 and kept["makespan"] == pytest.approx(10_300.0)
    # --preempt-longer: three 100 s runs first teach what the shape runs
    warm = [f"w{k},0,100,1,1,1" for k in range(3)]
    write(tmp_path / "srpt.csv", HEADER + ",checkpoints\n" + "\n".join(
        [*warm, "long,1,10000,1,1,1", *(f"s{k},4000,100,1,1,1" for k in range(3))]) + "\n")
    (shortest,) = json.loads(run("srpt.csv", "--preempt-longer", "8", "--max-preemptions", "1",
                                 "--restart-cost", "30").stdout)
    assert shortest["preempted"] == 1 and shortest["makespan"] == pytest.approx(10_630.0)
    (plain,) = json.loads(run("srpt.csv").stdout)
    assert plain["preempted"] == 0 and plain["makespan"] == pytest.approx(10_600.0)
    for args, message in ((["--tiers", "soon"], "--tiers: expected positive durations"),
                          (["--tiers", "1h,1h"], "--tiers: each threshold once"),
                          (["--max-preemptions", "1"], "--max-preemptions: only with --tiers or --preempt-longer"),
                          (["--preempt-longer", "0.5"], "--preempt-longer"),
                          (["--reserve-after", "1h,2h"], "--reserve-after: expected a duration such as 30m")):
        bad = run("t.csv", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_never_ending_unschedulable_and_timed_out_jobs():
    trace = [job("forever", 0, None, gpu=0.5), job("huge", 0, 10, gpu=8), job("late", 1, 50, gpu=0.5, time_limit=20)]
    result = simulate(trace, [node("n", 4, 1)], policy="labq")
    assert (result.finished, result.unplaced, result.timed_out) == (1, 1, 1)
    assert result.avg_jct == pytest.approx(20.0)


def test_synthetic_trace_is_seeded_and_policies_all_finish_it(tmp_path):
    jobs = traces.generate(400, seed=3, gpus=8, load=1.1)
    assert jobs == traces.generate(400, seed=3, gpus=8, load=1.1)
    traces.write_csv(jobs, tmp_path / "t.csv")
    assert load_trace(tmp_path / "t.csv")[:50] == [
        TraceJob(j.job_id, j.submit_time, j.duration, j.cpu, j.gpu, j.memory // 2**20 * 2**20, j.user, j.queue,
                 j.priority, j.time_limit, j.group) for j in jobs[:50]]
    assert {j.gpu for j in jobs} == {0.0, 0.25, 0.5, 1.0, 2.0}
    nodes = [node("a", 32, 4, 512 * 2**30), node("b", 32, 4, 512 * 2**30)]
    results = simulator.compare(jobs, nodes)
    bound = simulator.lower_bound(jobs, nodes)["makespan"]
    for r in results:
        assert r.finished == 400 and r.unplaced == 0
        assert r.makespan >= bound - 1e-6
    by = {r.policy: r for r in results}
    assert by["fair"].avg_wait < by["fifo"].avg_wait
    assert by["labq"].avg_wait < by["fifo"].avg_wait


# ---------------------------------------------------------------- the command

@pytest.mark.e2e
def test_labq_simulate_json(tmp_path):
    traces.write_csv(traces.generate(150, seed=1, gpus=4), tmp_path / "t.csv")
    write(tmp_path / "n.csv", "node_id,cpu,gpu\na,16,2\nb,16,2\n")
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "simulate", str(tmp_path / "t.csv"), "--nodes",
                           str(tmp_path / "n.csv"), "--policy", "fifo", "--policy", "labq", "--json",
                           "--plot", str(tmp_path / "u.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["policy"] for r in out] == ["fifo", "labq"]
    for key in ("policy", "jobs", "finished", "unplaced", "avg_jct", "avg_wait", "p95_wait", "makespan", "gpu_util",
                "cpu_util", "gpu_alloc_final", "per_user"):
        assert key in out[0]
    assert out[1]["jobs"] == 150 and out[1]["finished"] == 150
    assert (tmp_path / "u.png").stat().st_size > 1000


@pytest.mark.e2e
def test_labq_simulate_bad_input_is_one_line_and_exit_2(tmp_path):
    write(tmp_path / "t.csv", f"{HEADER}\n1,0,5,1,x\n")
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "simulate", str(tmp_path / "t.csv"), "--gpus", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "line 2: column 'gpu'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", "simulate", str(tmp_path / "t.csv"), "--gpus", "1",
                           "--policy", "lifo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown policy" in proc.stderr


# ---------------------------------------------------------------- the room kept between decisions

def _without_wall(results) -> list[dict]:
    return [{k: v for k, v in r.to_json().items() if k != "wall_s"} for r in results]


@pytest.mark.parametrize("load", [0.6, 1.4])
def test_the_room_kept_between_decisions_decides_as_one_built_for_each(monkeypatch, load):
    """The simulator keeps the policy's index of free capacity from decision to
    decision (placements booked by the decision, ends and preemptions given
    back): every result equals rebuilding it from the capacity book each time,
    on a loaded cluster of mixed nodes with fractional, whole and multi-GPU
    jobs, two queues, a guarantee and preemption."""
    from scheduler.virtual_cluster import VirtualCluster

    trace = traces.generate(600, seed=3, gpus=24, load=load, queues=["research", "batch"])
    nodes = [node(f"n{i}", cpus, gpus) for i, (cpus, gpus) in enumerate([(16, 8), (8, 4), (8, 2), (32, 0)] * 2)]
    queues = [QueueConfig("research", guarantee={"gpu": 8}, preempt=True), QueueConfig("batch")]
    kept = simulator.compare(trace, nodes, ["labq", "fair", "fifo"], queues, 3600.0)

    class RebuiltEachTime(VirtualCluster):
        def decide(self, t: float) -> None:
            self.room = None
            super().decide(t)

    monkeypatch.setattr(simulator, "VirtualCluster", RebuiltEachTime)
    rebuilt = simulator.compare(trace, nodes, ["labq", "fair", "fifo"], queues, 3600.0)
    assert _without_wall(kept) == _without_wall(rebuilt)
    assert kept[0].finished == len(trace) and (load < 1 or kept[0].avg_wait > 0)
    if load > 1:
        assert kept[0].preempted > 0  # the give-back of a preemption is exercised
