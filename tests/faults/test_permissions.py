"""Security basics: private state, own-jobs-only cancel, quoted commands, no listener."""

from __future__ import annotations

import os
import stat
import textwrap

import pytest

from scheduler import api
from scheduler.config import Settings
from scheduler.errors import PermissionDenied
from scheduler.store import Store
from workers.attempt import command_line


@pytest.fixture
def queued(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""
        experiment: mine
        stages:
          - {name: s, command: "echo {i}", sweep: {grid: {i: [1, 2]}}}
    """))
    settings = Settings(home=str(tmp_path / "home"), admins=["root-admin"])
    sub = api.submit(spec, [], settings, user="alice")
    return settings, sub


def test_state_directory_and_database_are_private(queued):
    settings, _ = queued
    assert stat.S_IMODE(os.stat(settings.home_path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.home_path / "labq.db").st_mode) == 0o600


def test_a_user_cannot_cancel_another_users_jobs(queued):
    settings, sub = queued
    store = Store(settings.home_path)
    with pytest.raises(PermissionDenied, match="belong to alice"):
        api.cancel(store, [str(sub.job_ids[0])], None, settings, user="mallory")
    with pytest.raises(PermissionDenied):
        api.cancel(store, [], "mine", settings, user="mallory")
    # Nothing was cancelled by the refused requests
    assert {j.state.value for j in store.jobs_of_experiment(sub.experiment_id)} == {"pending"}


def test_owner_and_admin_can_cancel(queued):
    settings, sub = queued
    store = Store(settings.home_path)
    assert api.cancel(store, [str(sub.job_ids[0])], None, settings, user="alice")["cancelled"] == [sub.job_ids[0]]
    assert api.cancel(store, [str(sub.job_ids[1])], None, settings, user="root-admin")["cancelled"] == [sub.job_ids[1]]


@pytest.mark.parametrize("value", ["x; rm -rf /", "$(touch /tmp/pwned)", "a' b", "`id`", "a\nb"])
def test_params_are_quoted_into_commands(value, tmp_path):
    import subprocess

    line = command_line("printf '%s' {v}", {"v": value})
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, cwd=tmp_path).stdout
    assert out == value
    assert not os.path.exists("/tmp/pwned")
