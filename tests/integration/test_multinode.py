"""labq on a real two-node Ray cluster built on this machine: a head started with
`ray start --head` and a second node joined with `ray start --address`, which
offers a custom resource.  The scheduler runs as its own process (a driver of
that cluster), as it would on a real head node.  Token auth is on, as by default
in Ray 2.60."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from helpers import free_port, kill_processes_naming, wait_until

pytestmark = pytest.mark.ray
HERE = Path(__file__).parent
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def cluster(tmp_path):
    port = free_port()
    # Short path: Ray's unix sockets live under it and have a length limit.
    temp = Path(tempfile.mkdtemp(prefix="lqr-", dir="/tmp"))
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--temp-dir={temp}", *common], env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"special": 1}',
                    *common], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield {"address": f"127.0.0.1:{port}", "env": env, "temp": temp}
    finally:
        kill_processes_naming(temp)
        shutil.rmtree(temp, ignore_errors=True)


def labq(cluster, home, *args, timeout=120, check=True):
    env = {**cluster["env"], "LABQ_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])
    if check and proc.returncode != 0:
        raise AssertionError(f"labq {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc




def test_jobs_spread_over_nodes_land_on_custom_resources_and_survive_node_loss(cluster, tmp_path):
    home = tmp_path / "home"
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(HERE / "testjobs.py", code)
    spec = code / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: multi
        stages:
          - name: spread
            run: testjobs:sleepy
            params: {seconds: 3}
            sweep: {grid: {i: [1, 2, 3, 4]}}
            resources: {cpu: 1}
          - name: special
            run: testjobs:sleepy
            params: {seconds: 0.1}
            resources: {cpu: 0.5, custom: {special: 1}}
    """))
    labq(cluster, home, "scheduler", "start", "--address", cluster["address"])
    try:
        # Given a 2-node cluster, when an experiment runs through labq
        out = json.loads(labq(cluster, home, "submit", str(spec), "--json", "--wait", timeout=180).stdout)
        assert set(out["states"].values()) == {"succeeded"}
        nodes = json.loads(labq(cluster, home, "nodes", "--json").stdout)["nodes"]
        assert len(nodes) == 2 and all(n["alive"] for n in nodes)
        special_node = next(n["node_id"] for n in nodes if "special" in n["total"])
        head_node = next(n["node_id"] for n in nodes if n["node_id"] != special_node)
        rows = json.loads(labq(cluster, home, "results", "multi", "--json").stdout)
        # Then the sweep used both nodes, and the custom-resource job ran where it is offered
        assert {r["node_id"] for r in rows if r["stage"] == "spread"} == {head_node, special_node}
        assert next(r for r in rows if r["stage"] == "special")["node_id"] == special_node
        # ...and run dirs of jobs that ran on the other node were collected to the head's LABQ_HOME
        for r in rows:
            assert (Path(r["run_dir"]) / "result.json").exists()

        # Given two long jobs, one on each node
        spec.write_text(textwrap.dedent("""
            experiment: loss
            stages:
              - name: long
                run: testjobs:sleepy
                params: {seconds: 8}
                sweep: {grid: {i: [1, 2]}}
                resources: {cpu: 2}
                retries: 0
        """))
        ids = json.loads(labq(cluster, home, "submit", str(spec), "--json").stdout)["job_ids"]
        wait_until(lambda: all(j["state"] == "running" for j in json.loads(labq(cluster, home, "queue", "--json").stdout)
                               if j["id"] in ids) and len(json.loads(labq(cluster, home, "queue", "--json").stdout)) == 2,
                   60, "both long jobs running")
        time.sleep(2)
        # When the second node's raylet is killed mid-job
        raylet = next(p for p in psutil.process_iter(["cmdline"])
                      if any(a == f"--node_id={special_node}" for a in (p.info["cmdline"] or []))
                      and "raylet" in (p.info["cmdline"] or [""])[0])
        killed_at = time.time()
        raylet.kill()
        # Then the job on it is recorded lost with the node named, and finishes on the head after a
        # requeue not charged to its retries (it has none)
        try:
            wait_until(lambda: all(json.loads(labq(cluster, home, "status", str(i), "--json").stdout)["state"]
                                   == "succeeded" for i in ids), 180, "both long jobs to succeed")
        except AssertionError:
            for i in ids:
                print(labq(cluster, home, "status", str(i), "--json", check=False).stdout)
            print((home / "scheduler.log").read_text()[-8000:] if (home / "scheduler.log").exists() else "no log")
            raise
        timeline = []
        moved = None
        for job_id in ids:
            status = json.loads(labq(cluster, home, "status", str(job_id), "--json").stdout)
            attempts = status["attempts_detail"]
            if len(attempts) == 2:
                moved = (status, attempts)
            timeline += [(e["ts"] - killed_at, job_id, e["message"]) for e in status["events"]]
        print("\nnode-loss timeline (seconds after the raylet was killed):")
        for t, job_id, message in sorted(timeline):
            print(f"  {t:+7.2f}s job {job_id}: {message}")
        # Exactly one lost attempt: the retry is not placed on the dead node again
        assert moved is not None, "no job was retried exactly once after its node died"
        status, (lost, retried) = moved
        assert lost["state"] == "lost" and special_node[:8] in lost["error"]
        assert retried["state"] == "succeeded" and retried["node_id"] == head_node
        # And `labq nodes` shows the node dead once Ray has said so (Ray's health checks take
        # ~15 s, about as long as the retry took: the scheduler's view follows within a refresh)
        def special_alive() -> bool:
            nodes = json.loads(labq(cluster, home, "nodes", "--json").stdout)["nodes"]
            return next(n for n in nodes if n["node_id"] == special_node)["alive"]

        wait_until(lambda: special_alive() is False, 30, "the killed node shown dead by `labq nodes`")

        # When the node rejoins, its capacity is back: a job that needs it runs there
        subprocess.run([RAY, "start", f"--address={cluster['address']}", "--num-cpus=2", '--resources={"special": 1}',
                        "--disable-usage-stats"], env=cluster["env"], check=True, capture_output=True, timeout=120)
        spec.write_text(textwrap.dedent("""
            experiment: rejoin
            stages:
              - {name: s, run: "testjobs:sleepy", params: {seconds: 0.1}, resources: {cpu: 0.5, custom: {special: 1}}}
        """))
        out = json.loads(labq(cluster, home, "submit", str(spec), "--json", "--wait", timeout=120).stdout)
        assert set(out["states"].values()) == {"succeeded"}
        nodes = json.loads(labq(cluster, home, "nodes", "--json").stdout)["nodes"]
        rejoined = next(n for n in nodes if n["alive"] and "special" in n["total"])
        assert rejoined["node_id"] != special_node
        row = json.loads(labq(cluster, home, "results", "rejoin", "--json").stdout)[0]
        assert row["node_id"] == rejoined["node_id"]
    finally:
        labq(cluster, home, "scheduler", "stop", check=False)


def test_a_job_on_the_second_node_outlives_a_killed_scheduler_and_a_second_scheduler_is_refused(cluster, tmp_path):
    home = tmp_path / "home"
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(HERE / "testjobs.py", code)
    spec = code / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: outlive
        stages:
          - name: far
            run: testjobs:sleepy
            params: {seconds: 8}
            resources: {cpu: 0.5, custom: {special: 1}}
            retries: 0
    """))
    labq(cluster, home, "scheduler", "start", "--address", cluster["address"])
    try:
        (job_id,) = json.loads(labq(cluster, home, "submit", str(spec), "--json").stdout)["job_ids"]
        wait_until(lambda: json.loads(labq(cluster, home, "status", str(job_id), "--json").stdout)["state"]
                   == "running", 60, "the job running on the second node")
        time.sleep(1)
        # When the whole scheduler is killed with -9 while the job runs on the other node
        supervisor = psutil.Process(int((home / "scheduler.pid").read_text()))
        procs = [supervisor, *supervisor.children()]
        for proc in procs:
            proc.kill()
        psutil.wait_procs(procs, timeout=10)
        # Then a new scheduler adopts it, and it ends there with its one attempt
        labq(cluster, home, "scheduler", "start", "--address", cluster["address"])
        assert "adopted 1 attempts" in (home / "scheduler.log").read_text()
        wait_until(lambda: json.loads(labq(cluster, home, "status", str(job_id), "--json").stdout)["state"]
                   == "succeeded", 60, "the adopted job to succeed")
        status = json.loads(labq(cluster, home, "status", str(job_id), "--json").stdout)
        (attempt,) = status["attempts_detail"]
        nodes = json.loads(labq(cluster, home, "nodes", "--json").stdout)["nodes"]
        special_node = next(n["node_id"] for n in nodes if "special" in n["total"])
        assert attempt["state"] == "succeeded" and attempt["node_id"] == special_node
        # And a second labq (another home) cannot drive the same cluster beside it
        other = labq(cluster, tmp_path / "other", "scheduler", "start", "--address", cluster["address"],
                     check=False)
        assert other.returncode != 0
        assert "another labq scheduler drives this Ray cluster" in other.stderr, other.stderr
        assert f"pid {supervisor.pid}" not in other.stderr  # it names the live one, not the killed one
    finally:
        labq(cluster, home, "scheduler", "stop", check=False)
        labq(cluster, tmp_path / "other", "scheduler", "stop", check=False)
