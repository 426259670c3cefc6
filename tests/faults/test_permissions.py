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


HOSTILE = ["x; rm -rf /", "$(touch {marker})", "a' b", "`touch {marker}`", "a\nb", 'a" b', "\\$(touch {marker})",
           "'$(touch {marker})'", '"; touch {marker}; "', "$HOME", "\\", "-n", "", "\\'; touch {marker}; #",
           "a b; touch {marker}", "; touch {marker} #"]


@pytest.mark.parametrize("template, expect", [
    ("printf '%s' {v}", "{}"),  # bare
    ("printf '%s' \"{v}\"", "{}"),  # the common --name "{v}" form
    ("printf '%s' '{v}'", "{}"),  # in single quotes
    ("printf '%s' {v!r}", "{!r}"),  # repr, bare
    ("printf '%s' \"{v!r}\"", "{!r}"),  # repr in double quotes
    ("printf '%s' '{v!r}'", "{!r}"),  # repr in single quotes
    ("printf '%s' \"x={v:>3}\"", "x={:>3}"),  # a format spec
    ("printf '%s' 'it'\\''s {v}'", "it's {}"),  # after an escaped quote, still in single quotes
    ("printf '%s' \"a\\\"{v}\"", 'a"{}'),  # after an escaped quote, still in double quotes
])
@pytest.mark.parametrize("raw", HOSTILE)
def test_params_are_quoted_for_where_they_sit_in_the_command(template, expect, raw, tmp_path):
    import subprocess

    marker = tmp_path / "pwned"
    value = raw.replace("{marker}", str(marker))
    line, args = command_line(template, {"v": value})
    out = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, **args}).stdout
    assert out == expect.format(value)
    assert not marker.exists()


# Templates where the shell parses the spot a value lands in again, or where a
# quote-tracking guess goes wrong: a value must still never run (its spelling may suffer).
@pytest.mark.parametrize("template", [
    'echo "$(basename {v})"',  # command substitution inside double quotes
    "# don't edit\necho {v}",  # an apostrophe in a comment
    "cat <<EOF\n{v}\nEOF",  # an unquoted heredoc expands $(...)
    "echo \\{v}",  # after a backslash
    'echo "\\{v}"',
    "echo $'{v}'",  # ANSI-C quotes (bash)
])
@pytest.mark.parametrize("raw", HOSTILE)
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_no_value_runs_in_any_shell_context(template, raw, shell, tmp_path):
    import subprocess

    marker = tmp_path / "pwned"
    value = raw.replace("{marker}", str(marker))
    line, args = command_line(template, {"v": value})
    assert value not in line or value in template  # the value is not spliced into the line at all
    subprocess.run([shell, "-c", line], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **args},
                   timeout=10)
    assert not marker.exists()
