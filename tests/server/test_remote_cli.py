"""`labq --server` before any server answers: what runs only on the head, no
token, a bad URL, a server that is not there; and where `labq login` keeps a
token.  (The verbs against a real server: test_api.py.)"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from scheduler import remote
from tests.integration.helpers import free_port
from tests.server.conftest import REPO


def labq(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=60)


@pytest.mark.parametrize("verb", [["scheduler", "status"], ["scheduler", "start"], ["server"],
                                  ["token", "create", "x"]])
def test_what_runs_on_the_head_is_refused_over_server(verb):
    out = labq("--server", "http://head:8470", *verb)
    assert out.returncode == 2 and out.stderr.startswith("error: labq ") and "not over --server" in out.stderr


def test_no_token_a_bad_url_and_no_server_are_one_line_each():
    port = free_port()  # nothing listens there
    none = labq("--server", f"http://127.0.0.1:{port}", "queue")
    assert none.returncode == 2 and "no token for" in none.stderr and "labq login" in none.stderr
    bad = labq("--server", "ftp://head", "queue", LABQ_TOKEN="labq_x")
    assert bad.returncode == 2 and "expected http://HOST:PORT" in bad.stderr
    gone = labq("--server", f"http://127.0.0.1:{port}", "queue", LABQ_TOKEN="labq_x")
    assert gone.returncode == 3 and gone.stderr.startswith("error: cannot reach the labq server")
    assert all(len(p.stderr.splitlines()) == 1 for p in (none, bad, gone))


def test_a_saved_token_is_private_and_keyed_by_the_normal_url(tmp_path):
    path = remote.save_token("http://head:8470/", "labq_one")
    remote.save_token("https://other:1", "labq_two")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert remote.saved_token("http://head:8470") == "labq_one"
    assert json.loads(path.read_text())["servers"] == {"http://head:8470": "labq_one", "https://other:1": "labq_two"}
    assert remote.forget_token("http://head:8470") and remote.saved_token("http://head:8470") is None
    assert remote.saved_token("https://other:1") == "labq_two"
