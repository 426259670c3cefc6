"""The loop's incremental view of the pending queue, and the submit nudge.

The loop no longer re-reads every pending job each pass; it follows the events
table.  These tests drive it against a real SQLite store written by a second
connection (as the CLI would) and check the view against a full re-read."""

from __future__ import annotations

import threading
import time

from scheduler import wakeup
from scheduler.config import Settings
from scheduler.loop import Scheduler
from scheduler.states import AttemptState
from scheduler.store import Store

from test_store import CHAIN, JOIN, NOW, _submit_yaml, end, run_dir_for


def _view(scheduler: Scheduler) -> list[int]:
    scheduler.pending.sync(scheduler.store)
    return sorted(scheduler.pending.demands)


def _truth(store: Store) -> list[int]:
    return sorted(j.id for j in store.pending_jobs())


def test_pending_view_follows_every_kind_of_change(tmp_path):
    home = tmp_path / "home"
    cli, loop_store = Store(home), Store(home)  # two connections, like the CLI and the daemon
    scheduler = Scheduler(loop_store, backend=None, settings=Settings(home=str(home)))
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN)
    _, chain_ids, _ = _submit_yaml(cli, spec)
    assert _view(scheduler) == _truth(loop_store) == [chain_ids[0]]

    # a new submission by another process
    join = tmp_path / "join.yaml"
    join.write_text(JOIN)
    _, join_ids, _ = _submit_yaml(cli, join, now=NOW + 1)
    assert _view(scheduler) == _truth(loop_store) == sorted([chain_ids[0], *join_ids[:2]])

    # started by the loop itself: no longer pending
    (prep,) = loop_store.start_attempts([(chain_ids[0], "n")], run_dir_for, NOW + 2)
    assert _view(scheduler) == _truth(loop_store) == sorted(join_ids[:2])

    # a failure with retries left requeues it; success of the retry unblocks dependents
    loop_store.finish_attempt(end(prep.id, AttemptState.FAILED, error="boom"), NOW + 3)
    assert _view(scheduler) == _truth(loop_store) == sorted([chain_ids[0], *join_ids[:2]])
    (prep2,) = loop_store.start_attempts([(chain_ids[0], "n")], run_dir_for, NOW + 4)
    loop_store.finish_attempt(end(prep2.id, AttemptState.SUCCEEDED, result={"metrics": {}}), NOW + 5)
    assert _view(scheduler) == _truth(loop_store) == sorted([*chain_ids[1:3], *join_ids[:2]])

    # a cancel from the CLI removes a pending job
    cli.cancel([join_ids[0]], NOW + 6)
    assert _view(scheduler) == _truth(loop_store) == sorted([*chain_ids[1:3], join_ids[1]])
    # nothing changed: nothing re-read, same view
    seen = scheduler.pending._events_seen
    assert _view(scheduler) == _truth(loop_store) and scheduler.pending._events_seen == seen
    cli.close()
    loop_store.close()


def test_a_restarted_loop_builds_its_view_from_the_store(tmp_path):
    home = tmp_path / "home"
    store = Store(home)
    spec = tmp_path / "join.yaml"
    spec.write_text(JOIN)
    _, ids, _ = _submit_yaml(store, spec)
    store.start_attempts([(ids[0], "n")], run_dir_for, NOW + 1)
    scheduler = Scheduler(store, backend=None, settings=Settings(home=str(home)))
    assert _view(scheduler) == [ids[1]]
    store.close()


def test_a_nudge_wakes_a_listener_of_the_same_home_only(tmp_path):
    home, other = tmp_path / "a", tmp_path / "b"
    assert wakeup.notify(home) is False  # nobody listens: harmless
    woken = threading.Event()
    listener = wakeup.Listener(home, woken)
    try:
        assert wakeup.notify(other) is False and not woken.wait(0.1)
        started = time.monotonic()
        assert wakeup.notify(home) is True
        assert woken.wait(5.0) and time.monotonic() - started < 5.0
    finally:
        listener.close()
