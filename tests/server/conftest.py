"""One real `labq server` for the server tests: its own LABQ_HOME, a cluster
file (4 CPUs and 1 *logical* GPU for the local Ray, carol an admin), tokens
for alice, bob and carol, and a real scheduler that has run an experiment to
the end (each job reported a curve and saved a PNG) and holds one job pending
behind another for the GPU.  Session-scoped: the API and the browser tests
share it (the local Ray takes seconds to start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]

CURVE_JOB = '''
"""A job that learns a little: a loss curve, a log line per step, a picture."""
import time


def train(ctx):
    lr = float(ctx.params["lr"])
    loss = 1.0
    for step in range(6):
        loss *= 1.0 - lr
        ctx.report(step=step, loss=loss)
        print(f"step {step} loss {loss:.4f}", flush=True)
        time.sleep(0.05)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot(range(6), [(1.0 - lr) ** (s + 1) for s in range(6)])
    fig.savefig(ctx.artifact_path("curve.png"))
    plt.close(fig)
    return {"loss": loss, "accuracy": 1.0 - loss}


def hold(ctx):
    print("holding the GPU", flush=True)
    time.sleep(float(ctx.params.get("seconds", 600)))
    return {"held": 1.0}
'''

SWEEP_SPEC = """\
experiment: curves
metric: accuracy
stages:
  - name: train
    run: curvejob:train
    sweep:
      grid: {lr: [0.1, 0.2, 0.3, 0.5]}
    resources: {cpu: 0.5}
"""

HOLD_SPEC = """\
experiment: {name}
stages:
  - name: hold
    run: curvejob:hold
    params: {{seconds: 600}}
    resources: {{cpu: 0.25, gpu: 1}}
"""


@dataclass
class Served:
    url: str
    home: Path
    cluster: Path
    project: Path
    tokens: dict[str, str]
    experiment: str
    job_ids: list[int]
    hog_job_id: int
    pending_job_id: int
    shots: Path
    log: Path
    server_pid: int
    client_env: dict[str, str] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.tokens["alice"]

    @property
    def user(self) -> str:
        return "alice"

    def get(self, path: str, token: str | None = None) -> dict:
        request = urllib.request.Request(self.url + path)
        request.add_header("Authorization", f"Bearer {token or self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def head(self, *args: str) -> subprocess.CompletedProcess:
        """The same verb run on the head itself, on the server's LABQ_HOME."""
        return _head_labq(self.home, self.cluster, *args)

    def labq(self, *args: str, user: str = "alice", cwd: Path | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
        """The CLI as a laptop runs it: --server, this user's token, no LABQ_HOME of the server's."""
        env = {**self.client_env, "LABQ_TOKEN": self.tokens[user]}
        return subprocess.run([sys.executable, "-m", "scheduler.cli", "--server", self.url, *args],
                              capture_output=True, text=True, env=env, cwd=cwd or self.project, timeout=timeout)


def _head_env(home: Path) -> dict[str, str]:
    """The head's own environment: its LABQ_HOME, nothing of a client's
    (LABQ_SERVER, LABQ_TOKEN) or of another Ray (RAY_ADDRESS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABQ_", "RAY_"))}
    env["LABQ_HOME"] = str(home)
    return env


def _head_labq(home: Path, cluster: Path, *args: str) -> subprocess.CompletedProcess:
    """A verb run on the head itself, on the server's LABQ_HOME."""
    return subprocess.run([sys.executable, "-m", "scheduler.cli", "--cluster", str(cluster), *args],
                          capture_output=True, text=True, env=_head_env(home), cwd=REPO, timeout=120)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served")
    home, project, shots = root / "head-home", root / "laptop-project", root / "screenshots"
    project.mkdir()
    shots.mkdir()
    (project / "curvejob.py").write_text(textwrap.dedent(CURVE_JOB))
    (project / "sweep.yaml").write_text(SWEEP_SPEC)
    (project / "hold.yaml").write_text(HOLD_SPEC.format(name="hog"))
    (project / "wait.yaml").write_text(HOLD_SPEC.format(name="waiter"))
    cluster = root / "cluster.yaml"
    cluster.write_text("metadata:\n  labq:\n    admins: [carol]\n    local: {num_cpus: 4, num_gpus: 1}\n"
                       "    scheduler: {idle_timeout: 0}\n")
    tokens = {}
    for user in ("alice", "bob", "carol"):
        made = _head_labq(home, cluster, "token", "create", user)
        assert made.returncode == 0, made.stderr
        tokens[user] = made.stdout.strip()
    port = free_port()
    log = root / "server.log"
    env = _head_env(home)
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "--cluster", str(cluster), "server",
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("LABQ_", "RAY_"))}
    client_env["LABQ_HOME"] = str(root / "laptop-has-no-labq-home")  # must stay absent: nothing is local
    client_env["XDG_CONFIG_HOME"] = str(root / "laptop-config")
    client_env["PYTHONPATH"] = str(REPO)
    served = Served(url, home, cluster, project, tokens, "curves", [], 0, 0, shots, log, server.pid, client_env)
    try:
        wait_until(lambda: _healthy(url), 60, "the server to answer")
        sub = served.labq("submit", "sweep.yaml", "--json")
        assert sub.returncode == 0, sub.stdout + sub.stderr + log.read_text()
        served.job_ids = json.loads(sub.stdout)["job_ids"]
        wait_until(lambda: _all_ended(served, "curves"), 240, "the sweep to finish")
        hog = json.loads(served.labq("submit", "hold.yaml", "--json").stdout)["job_ids"][0]
        wait_until(lambda: served.get(f"/api/v1/status/{hog}")["job"]["state"] == "running", 120, "the hog to run")
        waiter = json.loads(served.labq("submit", "wait.yaml", "--json").stdout)["job_ids"][0]
        wait_until(lambda: served.get(f"/api/v1/status/{waiter}")["job"]["reason"], 60, "the waiter's reason")
        # The scheduler writes outlooks every loop.ESTIMATE_SECONDS: until a pass
        # after the waiter's submission, a read racing that pass sees none for it.
        wait_until(lambda: all("predicted_from" in j for j in served.get("/api/v1/queue")["jobs"]), 60,
                   "the scheduler's outlooks for the hog and the waiter")
        served.hog_job_id, served.pending_job_id = hog, waiter
        yield served
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        _head_labq(home, cluster, "scheduler", "stop", "--cancel-running")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _all_ended(served: Served, experiment: str) -> bool:
    jobs = served.get(f"/api/v1/status/{experiment}")["jobs"]
    from scheduler.states import JobState

    return bool(jobs) and all(JobState(j["state"]).is_terminal() for j in jobs)
