"""Who labq thinks you are, and whose queue it will run: the OS account of the
process (never $LOGNAME), one queue per account, a state directory opened up
to other accounts refused.  With a real second OS user where the machine
allows `useradd` (root here); skipped elsewhere."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from pathlib import Path

import pytest

from scheduler import api
from scheduler.config import Settings
from scheduler.errors import PermissionDenied, StoreError
from scheduler.identity import current_user
from scheduler.store import Store

REPO = Path(__file__).resolve().parents[2]
OTHER = "labqtest2"
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"


def labq(home: Path, *args: str, env: dict | None = None, user: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scheduler.cli", *args]
    if user:
        # The venv's python links into root's private home: the other account runs
        # the system's python of the same version on this checkout and the venv's packages.
        site = sysconfig.get_paths()["purelib"]
        command = ["runuser", "-u", user, "--", "env", f"LABQ_HOME={home}", f"PYTHONPATH={REPO}:{site}",
                   SYSTEM_PYTHON, "-m", "scheduler.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "LABQ_HOME": str(home), **(env or {})})


@pytest.fixture(scope="module")
def other_user():
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root and useradd/runuser to make a second OS user")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"needs {SYSTEM_PYTHON} for the second user (the venv's python may be private to root)")
    try:
        pwd.getpwnam(OTHER)
    except KeyError:
        if subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", OTHER],
                          capture_output=True).returncode != 0:
            pytest.skip("useradd refused")
    return OTHER


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "code" / "spec.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent("""
        experiment: mine
        stages:
          - {name: s, command: "echo {i}", sweep: {grid: {i: [1, 2]}}}
    """))
    return path


def test_the_user_is_the_os_account_not_logname(tmp_path, spec):
    # Given LOGNAME and USER that claim to be alice
    home = tmp_path / "home"
    proc = labq(home, "submit", str(spec), "--no-start", "--json", env={"LOGNAME": "alice", "USER": "alice"})
    assert proc.returncode == 0, proc.stderr
    # Then the jobs belong to the real account
    jobs = Store(home).jobs_of_experiment(1)
    assert {j.user for j in jobs} == {pwd.getpwuid(os.geteuid()).pw_name} == {current_user()}


def test_logname_does_not_let_anyone_cancel_alices_jobs(tmp_path, spec):
    # Given alice's jobs in the queue (as a server would record them)
    settings = Settings(home=str(tmp_path / "home"))
    sub = api.submit(spec, [], settings, user="alice")
    # When someone who is not alice says LOGNAME=alice
    proc = labq(settings.home_path, "cancel", "--experiment", "mine", env={"LOGNAME": "alice", "USER": "alice"})
    # Then nothing is cancelled
    assert proc.returncode == 2 and "belong to alice" in proc.stderr
    assert {j.state.value for j in Store(settings.home_path).jobs_of_experiment(sub.experiment_id)} == {"pending"}
    with pytest.raises(PermissionDenied):
        api.cancel(Store(settings.home_path), [], "mine", settings)


def test_a_state_directory_opened_to_other_accounts_is_refused(request, spec, other_user):
    # Given a home that its owner opened up so a second account could share the queue
    base = Path(tempfile.mkdtemp(prefix="lqid-", dir="/tmp"))  # pytest's tmp is closed to other accounts
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)
    home = base / "shared"
    assert labq(home, "submit", str(spec), "--no-start").returncode == 0
    before = (home / "labq.db").read_bytes()
    os.chmod(home, 0o777)
    os.chmod(home / "labq.db", 0o666)
    # When the second account uses it: refused, one line, exit 3, nothing written
    proc = labq(home, "queue", user=other_user)
    assert proc.returncode == 3, proc.stderr
    assert "one queue per OS account" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    # And the owner is refused too while it stays open (jobs would run as the owner)
    proc = labq(home, "submit", str(spec), "--no-start")
    assert proc.returncode == 3 and "writable by other accounts" in proc.stderr
    assert (home / "labq.db").read_bytes() == before


def test_a_state_directory_of_another_account_is_refused(tmp_path, spec, other_user):
    # Given a home that belongs to the second account
    home = tmp_path / "theirs"
    home.mkdir(mode=0o700)
    uid = pwd.getpwnam(other_user).pw_uid
    os.chown(home, uid, uid)
    # When root (the daemon's account) is pointed at it: refused, nothing created in it
    proc = labq(home, "submit", str(spec), "--no-start")
    assert proc.returncode == 3 and f"belongs to {other_user}" in proc.stderr
    assert os.listdir(home) == []
    with pytest.raises(StoreError, match="one queue per OS account"):
        Store(home)


def test_a_readable_state_directory_is_made_private(tmp_path, spec):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    assert labq(home, "submit", str(spec), "--no-start").returncode == 0
    assert oct(home.stat().st_mode & 0o777) == oct(0o700)
