"""`labq results` two ways: a page ranked through the store's rank index must be
exactly the first rows of the full read that decodes every job, whatever the
metrics (ties, missing, NaN, bools, retries that wipe a job's earlier result)."""

from __future__ import annotations

import math
import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import api
from scheduler.states import AttemptState
from scheduler.store import Store

from test_store import NOW, _submit_yaml, start

SPEC = """
experiment: ranked
stages:
  - name: prep
    command: "true"
    sweep: {grid: {scale: [1, 2]}}
  - name: train
    command: "true"
    after: [prep]
    params: {fixed: 1}
    sweep: {grid: {lr: [0.1, 0.2, 0.3], depth: [3], "η": [1, 2], 'say "hi"': [a]}}
    resources: {cpu: 2, memory: 4GiB}
"""

metric_value = st.one_of(st.none(), st.sampled_from([0.5, 0.7, 0.7, 1, True, math.nan, "text", 2**70]),
                         st.floats(0, 1, allow_nan=False))
outcome = st.tuples(st.sampled_from(["pending", "succeeded", "failed", "retried"]),
                    st.dictionaries(st.sampled_from(["accuracy", "loss", "rows", "lr", "duration"]), metric_value,
                                    max_size=3),
                    st.integers(100, 900))


def _rows(res):
    return [(r["job_id"], r["state"], r.get("best"), r["advice"], r["metrics"]) for r in res.rows]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(outcomes=st.lists(outcome, min_size=12, max_size=12),
       sort=st.sampled_from([None, "accuracy", "loss", "rows", "lr", "duration", "η"]),
       ascending=st.sampled_from([None, True, False]), limit=st.integers(1, 15))
def test_a_ranked_page_is_the_head_of_the_full_results(tmp_path_factory, outcomes, sort, ascending, limit):
    home = tmp_path_factory.mktemp("home")
    store = Store(home)
    spec = home / "spec.yaml"
    spec.write_text(textwrap.dedent(SPEC))
    _, ids, _ = _submit_yaml(store, spec)
    for job_id in ids[:2]:  # the prep jobs succeed, so the train jobs can start
        (att,) = start(store, job_id)
        store.finish_attempt(att.id, AttemptState.SUCCEEDED, NOW + 2, result={"metrics": {"rows": 100}})
    for n, (job_id, (what, metrics, rss_mib)) in enumerate(zip(ids[2:], outcomes)):
        if what == "pending":
            continue
        result = {"metrics": metrics, "peak_rss": rss_mib * 2**20, "started_at": NOW + 1, "ended_at": NOW + 30 + n}
        (att,) = start(store, job_id)
        if what == "retried":  # its first result is wiped by a second attempt still running
            store.finish_attempt(att.id, AttemptState.LOST, NOW + 3, result=result, free_retry=True)
            start(store, job_id, now=NOW + 4)
        else:
            store.finish_attempt(att.id, AttemptState.SUCCEEDED if what == "succeeded" else AttemptState.FAILED,
                                 NOW + 31, result=result)
    full = api.results(store, "ranked", sort=sort, ascending=ascending)
    page = api.results(store, "ranked", sort=sort, ascending=ascending, limit=limit)
    assert _rows(page) == _rows(full)[:limit]
    assert (page.metric, page.mode, page.total, page.advice) == (full.metric, full.mode, full.total, full.advice)
    assert page.varying_params == full.varying_params == ["scale", "lr", "η"]
    store.close()
