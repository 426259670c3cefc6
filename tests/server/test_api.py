"""`labq --server URL` against a real `labq server`, a real scheduler and a
real local Ray (tests/server/conftest.py): the laptop has no LABQ_HOME and its
project in another directory; every verb prints what the same verb prints on
the head; bad input gets the same one line and exit 2, and writes nothing;
tokens, ownership and admins hold over HTTP."""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import psutil
import pytest

from tests.integration.helpers import wait_until
from tests.server.conftest import Served

pytestmark = pytest.mark.ray


def call(served: Served, method: str, path: str, token: str | None = "alice", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(served.url + path, data=body, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {served.tokens.get(token, token)}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def job_count(served: Served) -> int:
    db = sqlite3.connect(served.home / "labq.db")
    try:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    finally:
        db.close()


def stripped(text: str, *keys: str) -> object:
    """JSON with the fields that change from one call to the next taken out."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in keys}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(text))


# ---------------------------------------------------------------- same output as on the head

def test_results_and_status_print_what_the_head_prints(served: Served):
    for args in (["results", "curves"], ["results", "curves", "--json"], ["results", "curves", "--csv"],
                 ["results", "curves", "--sort", "lr", "--asc", "--limit", "2"],
                 ["status", str(served.job_ids[0])], ["status", str(served.job_ids[0]), "--json"],
                 ["artifacts", str(served.job_ids[0])]):
        remote, local = served.labq(*args), served.head(*args)
        assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
        assert remote.stdout == local.stdout, args
    table = served.labq("results", "curves").stdout
    assert "accuracy" in table and "0.5" in table  # the best lr leads
    assert not Path(served.client_env["LABQ_HOME"]).exists(), "the laptop needs no LABQ_HOME"


def test_queue_nodes_usage_and_experiment_status_match_the_head(served: Served):
    # What the scheduler rewrites every pass (a node's last readings) or the clock moves.
    moving = ("heartbeat_age", "now", "updated_at", "estimated_start", "allocated", "gpus", "expected_left")
    for args in (["queue", "--json"], ["nodes", "--json"], ["status", "curves", "--json"]):
        remote, local = served.labq(*args), served.head(*args)
        assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
        assert stripped(remote.stdout, *moving) == stripped(local.stdout, *moving), args
    # Usage grows while the hog runs: the same groups, the same columns.
    remote, local = (json.loads(p.stdout)["rows"] for p in (served.labq("usage", "--json"), served.head("usage", "--json")))
    assert [(r["queue"], r["user"], sorted(r)) for r in remote] == [(r["queue"], r["user"], sorted(r)) for r in local]
    assert {r["user"] for r in remote} >= {"alice"}
    queue = served.labq("queue")
    assert queue.returncode == 0
    assert str(served.pending_job_id) in queue.stdout and "needs 1 gpu" in queue.stdout, queue.stdout  # why it waits
    assert served.labq("nodes").returncode == 0 and served.labq("usage").returncode == 0


def test_logs_of_a_finished_job_and_a_file_download(served: Served, tmp_path):
    job = served.job_ids[0]
    out = served.labq("logs", str(job))
    assert out.returncode == 0 and "step 5 loss" in out.stdout
    assert out.stdout == served.head("logs", str(job)).stdout
    followed = served.labq("logs", "-f", str(job), timeout=60)
    assert followed.returncode == 0 and followed.stdout == out.stdout
    target = tmp_path / "curve.png"
    got = served.labq("artifacts", str(job), "--get", "curve.png", "-o", str(target))
    assert got.returncode == 0, got.stderr
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_submit_watch_follow_and_cancel_from_a_laptop(served: Served, tmp_path):
    laptop = tmp_path / "elsewhere"
    laptop.mkdir()
    (laptop / "talk.py").write_text(
        "import time\n\n\ndef talk(ctx):\n    for i in range(8):\n        print(f'line {i}', flush=True)\n"
        "        time.sleep(0.25)\n    return {'said': 8.0}\n\n\ndef sleep(ctx):\n    time.sleep(600)\n")
    (laptop / "talk.yaml").write_text("experiment: talk\nstages:\n  - name: talk\n    run: talk:talk\n"
                                      "    resources: {cpu: 0.25}\n")
    (laptop / "sleep.yaml").write_text("experiment: sleepy\nstages:\n  - name: s\n    run: talk:sleep\n"
                                       "    resources: {cpu: 0.25}\n")
    sub = served.labq("submit", "talk.yaml", "--json", cwd=laptop)
    assert sub.returncode == 0, sub.stderr
    job = json.loads(sub.stdout)["job_ids"][0]
    followed = served.labq("logs", "-f", str(job), cwd=laptop, timeout=120)  # waits for it to start, streams, ends
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [f"line {i}" for i in range(8)]
    wait_until(lambda: served.get(f"/api/v1/status/{job}")["job"]["state"] == "succeeded", 60, "talk to succeed")

    sleepy = json.loads(served.labq("submit", "sleep.yaml", "--json", cwd=laptop).stdout)["job_ids"][0]
    refused = served.labq("cancel", str(sleepy), user="bob")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: 1 of these jobs belong to alice") and "you (bob)" in refused.stderr
    assert served.get(f"/api/v1/status/{sleepy}")["job"]["cancel_requested"] is False
    done = served.labq("cancel", str(sleepy), "--json", user="carol")  # an admin may
    assert done.returncode == 0, done.stderr
    wait_until(lambda: served.get(f"/api/v1/status/{sleepy}")["job"]["state"] == "cancelled", 60, "the cancel")
    status = served.get(f"/api/v1/status/{sleepy}")
    assert status["job"]["user"] == "alice"  # the token's user submitted it, not the server's account


def test_run_waits_and_prints_the_results_table(served: Served, tmp_path):
    laptop = tmp_path / "run"
    laptop.mkdir()
    (laptop / "quick.py").write_text("def fit(ctx):\n    return {'score': float(ctx.params['k'])}\n")
    (laptop / "quick.yaml").write_text("experiment: quick\nmetric: score\nstages:\n  - name: fit\n    run: quick:fit\n"
                                       "    sweep: {grid: {k: [1, 2, 3]}}\n    resources: {cpu: 0.25}\n")
    ran = served.labq("run", "quick.yaml", cwd=laptop)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "succeeded: 3" in ran.stdout and "score" in ran.stdout


# ---------------------------------------------------------------- bad input: same line, exit 2, nothing written

BAD_SPECS = {
    "yaml.yaml": "experiment: x\nstages: [\n",
    "key.yaml": "experiment: x\nstages:\n  - name: a\n    run: talk:talk\n    resourcez: {cpu: 1}\n",
    "sweep.yaml": "experiment: x\nstages:\n  - name: a\n    run: talk:talk\n    sweep: {grid: {lr: 3}}\n",
    "queue.yaml": "experiment: x\nqueue: nowhere\nstages:\n  - name: a\n    run: talk:talk\n",
    "name.yaml": "experiment: 'bad name!'\nstages:\n  - name: a\n    run: talk:talk\n",
}


def _hostile_specs() -> dict[str, str | bytes]:
    """The CLI's own bad-input corpus (tests/faults) and two hostile specs."""
    from tests.faults.test_fuzz_cli import BUG_SPECS, SPECS

    corpus = {f"fuzz_{k}": v for k, v in {**SPECS, **BUG_SPECS}.items() if k not in ("ok.yaml", "jobs.yaml")}
    anchors = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    corpus["alias_bomb.yaml"] = ("experiment: bomb\nanchors:\n" + "\n".join("  " + a for a in anchors)
                                 + "\nstages:\n  - {name: s, command: 'echo {p}', params: {p: *a8}}\n")
    corpus["many_keys.yaml"] = ("experiment: big\nstages:\n  - {name: s, command: 'true'}\n"
                                + "".join(f"unknown_key_{i}: {i}\n" for i in range(50_000)))
    return corpus


def test_bad_input_gets_the_same_lines_as_locally_and_writes_nothing(served: Served, tmp_path):
    project = tmp_path / "bad"
    project.mkdir()
    (project / "talk.py").write_text("def talk(ctx):\n    return {}\n")
    hostile = _hostile_specs()
    for name, text in {**BAD_SPECS, **hostile}.items():
        (project / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    (project / "a_directory").mkdir()
    local_env = {**served.client_env, "LABQ_HOME": str(tmp_path / "local-home")}
    before = job_count(served)
    cases = [["submit", name] for name in [*BAD_SPECS, *hostile, "a_directory"]] + [
        ["submit", "missing.yaml"], ["submit", "key.yaml", "--set", "stages.a.resources.cpu=-1"],
        ["submit", "key.yaml", "--set", "nonsense"], ["status", "123456"], ["results", "no-such-experiment"],
        ["logs", "999999"], ["cancel", "abc"], ["usage", "--since", "soon"], ["usage", "--by", "planet"]]
    for args in cases:
        remote = served.labq(*args, cwd=project)
        local = subprocess.run([sys.executable, "-m", "scheduler.cli", *args, *(["--no-start"] if args[0] == "submit"
                                                                               else [])],
                               capture_output=True, text=True, env=local_env, cwd=project, timeout=60)
        assert remote.returncode == 2, (args, remote.stdout, remote.stderr)
        assert local.returncode == 2, (args, local.stderr)
        assert "Traceback" not in remote.stderr
        if args[0] == "results":  # the hint lists the recent experiments, which differ between the two homes
            assert remote.stderr.split(";")[0].strip() == local.stderr.split(";")[0].strip()
        else:
            assert remote.stderr == local.stderr, args
    # Mistakes about what the queue holds: the same line as on the head itself.
    job = str(served.job_ids[0])
    for args in (["logs", job, "--attempt", "9"], ["artifacts", job, "--get", "nope.txt"],
                 ["artifacts", job, "--attempt", "9"], ["status", "no-such-experiment"],
                 ["cancel", "--experiment", "no-such-experiment"], ["results", "curves", "--limit", "0"],
                 ["sweep", "extend", "curves", "--samples", "3"], ["sweep", "extend", "no-such-experiment",
                                                                  "--samples", "3"]):
        remote, local = served.labq(*args, cwd=project), served.head(*args)
        assert remote.returncode == local.returncode == 2, (args, remote.stderr, local.stderr)
        assert remote.stderr == local.stderr, args
    assert job_count(served) == before
    assert not list((served.home / "server" / "uploads").iterdir()), "an upload left behind"


# ---------------------------------------------------------------- tokens

def test_every_route_but_health_needs_a_token(served: Served):
    assert call(served, "GET", "/api/health", token=None)[0] == 200
    routes = ["/api/v1/whoami", "/api/v1/queue", "/api/v1/experiments", "/api/v1/status/curves",
              "/api/v1/results/curves", f"/api/v1/jobs/{served.job_ids[0]}/logs",
              f"/api/v1/jobs/{served.job_ids[0]}/files", f"/api/v1/jobs/{served.job_ids[0]}/files/curve.png",
              "/api/v1/nodes", "/api/v1/usage", "/api/v1/openapi.json", "/docs", "/openapi.json"]
    wrong = "labq_" + "x" * 43
    for route in routes:
        assert call(served, "GET", route, token=None)[0] in (401, 404), route
        assert call(served, "GET", route, token=wrong)[0] in (401, 404), route
    assert call(served, "GET", "/api/v1/queue", token=None)[0] == 401
    assert call(served, "POST", "/api/v1/cancel", token=wrong, body=b'{"ids": ["1"]}',
                headers={"Content-Type": "application/json"})[0] == 401
    assert call(served, "POST", "/api/v1/submit?spec=a&shown_as=a", token=None, body=b"x")[0] == 401
    log = served.log.read_text()
    assert "401 GET /api/v1/queue" in log and "wrong token" in log and "no token" in log
    assert wrong not in log and all(t not in log for t in served.tokens.values())
    status, body = call(served, "GET", "/api/v1/whoami", token="carol")
    assert status == 200 and json.loads(body) == {"user": "carol", "admin": True}
    schema = json.loads(call(served, "GET", "/api/v1/openapi.json")[1])
    assert "/api/v1/submit" in schema["paths"] and "/api/v1/results/{experiment}" in schema["paths"]


def test_a_cookie_reads_but_does_not_change(served: Served):
    cookie = {"Cookie": f"labq_token={served.token}"}
    assert call(served, "GET", "/api/v1/whoami", token=None, headers=cookie)[0] == 200
    status, _ = call(served, "POST", "/api/v1/cancel", token=None, body=b'{"ids": ["1"]}',
                     headers={**cookie, "Content-Type": "application/json"})
    assert status == 401  # a cross-site form could send the cookie, never the header


def test_a_revoked_token_stops_working_at_once(served: Served):
    made = served.head("token", "create", "dave")
    dave = made.stdout.strip()
    assert call(served, "GET", "/api/v1/whoami", token=dave)[0] == 200
    assert served.head("token", "revoke", "dave").returncode == 0
    assert call(served, "GET", "/api/v1/whoami", token=dave)[0] == 401
    stored = (served.home / "server" / "tokens.json")
    assert oct(stored.stat().st_mode & 0o777) == "0o600" and dave not in stored.read_text()
    assert oct(stored.parent.stat().st_mode & 0o777) == "0o700"


# ---------------------------------------------------------------- uploads and downloads that try to escape

def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buffer.getvalue()


def _submit_raw(served: Served, archive: bytes, spec: str = "s.yaml") -> tuple[int, dict]:
    status, body = call(served, "POST", f"/api/v1/submit?spec={spec}&shown_as={spec}", body=archive,
                        headers={"Content-Type": "application/zip"})
    return status, json.loads(body or b"{}")


def test_malicious_uploads_are_refused_and_leave_nothing(served: Served):
    spec = b"experiment: evil\nstages:\n  - name: a\n    run: m:f\n"
    link = zipfile.ZipInfo("s.yaml")
    link.external_attr = (0o120777) << 16  # a symbolic link
    bomb = zipfile.ZipInfo("big.bin")
    bomb.compress_type = zipfile.ZIP_DEFLATED  # 150 MiB of zeros in a few hundred KiB
    before = job_count(served)
    outside = served.home.parent / "escaped.txt"
    cases = {
        "traversal": _zip([("s.yaml", spec), ("../escaped.txt", b"x")]),
        "absolute": _zip([("s.yaml", spec), ("/tmp/escaped.txt", b"x")]),
        "link": _zip([(link, b"/etc/passwd")]),
        "not a zip": b"this is not a zip",
        "bomb": _zip([("s.yaml", spec), (bomb, b"\0" * (150 * 2**20))]),
    }
    for name, archive in cases.items():
        status, body = _submit_raw(served, archive)
        assert status == 400, (name, status, body)
        assert body["error"] and "\n" not in body["error"], name
    status, body = _submit_raw(served, _zip([("m.py", b"def f(ctx):\n    return {}\n")]), spec="../s.yaml")
    assert status == 400
    assert not outside.exists()
    assert job_count(served) == before
    assert not list((served.home / "server" / "uploads").iterdir())


def _post_upload(served: Served, declared: int | None, sent: int) -> tuple[int | None, bytes]:
    """POST ``sent`` bytes to submit, saying ``declared`` in Content-Length (None:
    chunked, no length); (status, body), or (None, b"") when the server closed
    the connection before the client had sent it all."""
    host, port = served.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/api/v1/submit?spec=s.yaml&shown_as=s.yaml")
    conn.putheader("Authorization", f"Bearer {served.token}")
    conn.putheader("Content-Type", "application/zip")
    conn.putheader(*("Content-Length", str(declared)) if declared is not None else ("Transfer-Encoding", "chunked"))
    conn.endheaders()
    chunk = b"\0" * 2**20
    try:
        for _ in range(sent // len(chunk)):
            conn.send(chunk if declared is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if declared is None:
            conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # refused mid-way: the server stopped reading
    try:
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None, b""
    finally:
        conn.close()


def test_an_oversized_upload_is_refused_and_leaves_nothing(served: Served):
    before = job_count(served)
    status, body = _post_upload(served, declared=101 * 2**20, sent=2**20)  # says it is too big: refused at once
    assert status == 413 and "at most" in json.loads(body)["error"]
    status, body = _post_upload(served, declared=None, sent=101 * 2**20)  # no length: counted as it comes
    assert status in (413, None), status
    if status == 413:
        assert "at most" in json.loads(body)["error"] or "over" in json.loads(body)["error"]
    assert job_count(served) == before
    assert not list((served.home / "server" / "uploads").iterdir())


def test_downloads_reach_only_the_attempts_kept_files(served: Served):
    job = served.job_ids[0]
    status, body = call(served, "GET", f"/api/v1/jobs/{job}/files/curve.png")
    assert status == 200 and body[:4] == b"\x89PNG"
    for path in ("../../../../labq.db", "..%2F..%2F..%2Flabq.db", "%2Fetc%2Fpasswd", "result.json",
                 "../stdout", "..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "curve.png%00.txt"):
        status, body = call(served, "GET", f"/api/v1/jobs/{job}/files/{path}")
        assert status in (400, 404), (path, status)
        assert b"SQLite format" not in body and b"root:" not in body


def test_the_server_process_runs_no_job(served: Served):
    """Jobs run in Ray's workers under the scheduler; the server never loads Ray."""
    maps = [m.path for m in psutil.Process(served.server_pid).memory_maps()]
    assert not any("_raylet" in path for path in maps), "the server process loaded Ray"
    hog = served.get(f"/api/v1/status/{served.hog_job_id}")
    assert hog["job"]["state"] == "running"
    assert time.time() - hog["job"]["started_at"] > 0


# ---------------------------------------------------------------- the server's own robustness

def test_a_submit_runs_the_users_code_in_a_child_process_not_in_the_server(served: Served, tmp_path):
    """Checking a spec imports its module when it has check_params: that is
    the user's code, so it runs in a short-lived child; a second upload of a
    module of the same name is checked afresh (nothing cached in the server)."""
    for round_ in (1, 2):
        laptop = tmp_path / f"round{round_}"
        (laptop / "pkg").mkdir(parents=True)
        (laptop / "pkg" / "__init__.py").write_text("")
        (laptop / "pkg" / "train.py").write_text(
            "import os, pathlib\n"
            f"pathlib.Path({str(tmp_path)!r}, 'imported-{round_}').write_text(str(os.getpid()))\n"
            f"def check_params(params):\n    return []\n\n\ndef main(ctx):\n    return {{'round': {round_}.0}}\n")
        (laptop / "s.yaml").write_text("experiment: pkgjob\nstages:\n  - {name: a, run: 'pkg.train:main', "
                                       "resources: {cpu: 0.25}}\n")
        out = served.labq("submit", "s.yaml", "--json", cwd=laptop)
        assert out.returncode == 0, out.stderr
        importer = int((tmp_path / f"imported-{round_}").read_text())
        assert importer != served.server_pid
        job = json.loads(out.stdout)["job_ids"][0]
        wait_until(lambda: served.get(f"/api/v1/status/{job}")["job"]["state"] == "succeeded", 60, "the job")
    (tmp_path / "dies").mkdir()
    (tmp_path / "dies" / "boom.py").write_text("import os\nos._exit(7)\n\n\ndef check_params(params):\n"
                                               "    return []\n\n\ndef main(ctx):\n    return {}\n")
    (tmp_path / "dies" / "s.yaml").write_text("experiment: boom\nstages:\n  - {name: a, run: 'boom:main'}\n")
    died = served.labq("submit", "s.yaml", cwd=tmp_path / "dies")
    assert died.returncode == 2 and "exit code 7" in died.stderr and "nothing was submitted" in died.stderr
    assert served.get("/api/v1/whoami")["user"] == "alice"  # the server lives on


def test_followers_hold_no_thread_and_each_user_has_a_cap(served: Served):
    """48 `logs -f` on a quiet job, more than the server's 40 worker threads:
    other requests still answer at once (a follower waits on the event loop,
    not in a thread), and past the cap a user gets 429."""
    host, port = served.url.removeprefix("http://").split(":")
    followers = []
    try:
        for user in ("alice", "bob", "carol"):
            for _ in range(16):
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request("GET", f"/api/v1/jobs/{served.pending_job_id}/logs/stream",
                             headers={"Authorization": f"Bearer {served.tokens[user]}"})
                response = conn.getresponse()
                assert response.status == 200
                followers.append((conn, response))
        time.sleep(1.0)  # every follower is in its wait
        t0 = time.monotonic()
        assert served.get("/api/v1/whoami")["user"] == "alice"
        assert served.get("/api/v1/queue?limit=5")["total"] >= 1
        assert time.monotonic() - t0 < 2.5  # a thread per follower took 3 s at 40 followers, 10 s at 100
        status, body = call(served, "GET", f"/api/v1/jobs/{served.pending_job_id}/logs/stream")
        assert status == 429 and "already follows 16 logs" in json.loads(body)["error"]
    finally:
        for conn, _ in followers:
            conn.close()


def test_following_a_job_cancelled_before_it_started_fails_as_on_the_head(served: Served, tmp_path):
    laptop = tmp_path / "never"
    laptop.mkdir()
    (laptop / "w.py").write_text("def main(ctx):\n    return {}\n")
    (laptop / "w.yaml").write_text("experiment: never\nstages:\n  - {name: a, run: 'w:main', "
                                   "resources: {cpu: 0.25, gpu: 1}}\n")  # waits behind the hog's GPU
    job = json.loads(served.labq("submit", "w.yaml", "--json", cwd=laptop).stdout)["job_ids"][0]
    assert served.labq("cancel", str(job)).returncode == 0
    remote, local = served.labq("logs", "-f", str(job), timeout=60), served.head("logs", "-f", str(job))
    assert remote.returncode == local.returncode == 2, (remote.stderr, local.stderr)
    assert remote.stderr == local.stderr and "has not started yet" in remote.stderr


def test_numbers_out_of_range_and_unknown_routes_are_4xx_json(served: Served):
    for route in ("/api/v1/queue?offset=99999999999999999999", f"/api/v1/jobs/{10**20}/files",
                  "/api/v1/results/curves?offset=-1", "/api/v1/jobs/1/logs?attempt=0", "/api/v1/nope"):
        status, body = call(served, "GET", route)
        assert 400 <= status < 500, (route, status)
        assert set(json.loads(body)) == {"error"}, route


def test_a_search_run_from_a_laptop_is_extended_over_http_by_its_owner_only(served: Served, tmp_path):
    laptop = tmp_path / "search"
    laptop.mkdir()
    (laptop / "quad.py").write_text("def fit(ctx):\n    x = float(ctx.params['x'])\n    return {'score': -(x - 0.3) ** 2}\n")
    (laptop / "quad.yaml").write_text(
        "experiment: quad\nmetric: score\nmode: max\nstages:\n  - name: fit\n    run: quad:fit\n"
        "    sweep:\n      search: {algo: tpe, samples: 2, parallel: 2, seed: 3}\n"
        "      space: {x: {uniform: [0, 1]}}\n    resources: {cpu: 0.25}\n")
    ran = served.labq("run", "quad.yaml", cwd=laptop)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "succeeded: 2" in ran.stdout
    refused = served.labq("sweep", "extend", "quad", "--samples", "3", user="bob")
    assert refused.returncode == 2 and "belongs to alice; you (bob) may extend only your own" in refused.stderr
    extended = served.labq("sweep", "extend", "quad", "--samples", "3", "--json")
    assert extended.returncode == 0, extended.stderr
    done = json.loads(extended.stdout)
    assert done["experiment"] == "quad" and done["more"] == 3 and done["scheduler_started"] is False

    def trials() -> list[dict]:
        return [j for j in json.loads(served.labq("status", "quad", "--json").stdout)["jobs"]]

    # The server's scheduler asks the search for 3 more trials, from the 2 it has, and runs them
    wait_until(lambda: len(trials()) == 5 and all(j["state"] == "succeeded" for j in trials()), 120,
               "the 3 more trials to run")
    xs = [j["params"]["x"] for j in trials()]
    assert len(set(xs)) == 5  # no suggestion repeated
    status = served.labq("status", "quad")
    assert status.returncode == 0 and "5 of 5 trials asked" in status.stdout, status.stdout
