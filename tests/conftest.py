"""Shared fixtures.  Real Ray is started once per session (ray.init costs seconds)
with 4 CPUs and 2 *logical* GPUs, so fractional-GPU scheduling is testable on a
machine without GPUs."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """No test may touch the user's ~/.labq."""
    monkeypatch.setenv("LABQ_HOME", str(tmp_path / "labq-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # where `labq login` keeps tokens
    for name in ("LABQ_CLUSTER", "LABQ_SERVER", "LABQ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="session")
def ray_backend():
    from scheduler.ray_backend import RayBackend

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    backend = RayBackend(num_cpus=4, num_gpus=2)
    backend.connect()
    yield backend
    backend.shutdown()
