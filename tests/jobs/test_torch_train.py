"""jobs.train:torch_mlp / torch_cnn on real torch (CPU) and tiny real data, with
hand-built contexts (no scheduler, no Ray), plus the sklearn trainer's cv
option and jobs.train.check_params' dispatch."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from jobs import prep, train  # noqa: E402
from jobs import torch_models as tm  # noqa: E402
from jobs.api import JobContext, Upstream  # noqa: E402

# A one-core allocation, as the scheduler would give: jobs.train then uses one
# torch thread, which keeps these tests fast on small machines.
ONE_CPU = {"cpu": 1}


def _ctx(run_dir: Path, stage: str, params: dict[str, Any], inputs: dict[str, Upstream] | None = None,
         **extra: Any) -> JobContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=1 if stage == "prep" else 2, attempt=extra.pop("attempt", 1), experiment="t",
                      stage=stage, params=params, run_dir=run_dir, inputs=inputs or {},
                      resources=extra.pop("resources", dict(ONE_CPU)), **extra)


def _prep(root: Path, **params: Any) -> Upstream:
    run_dir = root / "prep"
    metrics = prep.tabular(_ctx(run_dir, "prep", params))
    return Upstream(job_id=1, stage="prep", params=params, run_dir=run_dir, metrics=metrics)


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    return _prep(tmp_path_factory.mktemp("iris"), dataset="iris")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Upstream:
    # Every pixel kept (digits has constant border pixels), so 64 = 8x8 features.
    return _prep(tmp_path_factory.mktemp("digits"), dataset="digits", scale="minmax", drop_constant=False)


def _steps(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if "step" in r]


def test_mlp_classification_learns(tmp_path: Path, iris: Upstream) -> None:
    run_dir = tmp_path / "train"
    metrics = train.torch_mlp(_ctx(run_dir, "train", {"hidden": [32], "lr": 0.01, "epochs": 30, "batch_size": 16},
                                   {"prep": iris}))
    assert metrics["accuracy"] > 0.8
    assert {"f1_macro", "log_loss", "best_epoch", "train_seconds", "model_bytes"} <= set(metrics)
    assert metrics["epochs_run"] == 30 and metrics["device"] == "cpu"
    assert "gpu_memory_fraction" not in metrics and "resumed_from_epoch" not in metrics
    steps = _steps(run_dir)
    assert [s["step"] for s in steps] == list(range(1, 31))
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(steps[0])
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    # model.pt rebuilds from its own config and predicts as the job did.
    model_path = run_dir / "artifacts" / "model.pt"
    assert metrics["model_bytes"] == model_path.stat().st_size
    model, config = tm.load_model(model_path)
    assert config["kind"] == "mlp" and config["hidden"] == [32] and config["classes"] == ["setosa", "versicolor",
                                                                                           "virginica"]
    import numpy as np

    with np.load(iris.artifact("data.npz")) as data:
        pred, proba = tm.predict(model, config, data["X_test"], torch.device("cpu"))
        assert float((pred == data["y_test"]).mean()) == metrics["accuracy"]
    assert proba.shape == (len(pred), 3)


def test_mlp_regression(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="diabetes")
    metrics = train.torch_mlp(_ctx(tmp_path / "train", "train", {"lr": 0.01, "epochs": 25, "optimizer": "adamw"},
                                   {"prep": up}))
    assert 0.2 < metrics["r2"] < 1
    assert metrics["rmse"] > metrics["mae"] > 0
    assert "accuracy" not in metrics
    steps = _steps(tmp_path / "train")
    assert len(steps) == 25 and "val_rmse" in steps[0] and "val_accuracy" not in steps[0]
    # val_rmse is in the target's units (diabetes: tens), val_loss the standardized MSE.
    assert steps[-1]["val_rmse"] > 10 > steps[-1]["val_loss"]


def test_cnn_on_digits(tmp_path: Path, digits: Upstream) -> None:
    metrics = train.torch_cnn(_ctx(tmp_path / "train", "train",
                                   {"channels": [8, 16], "epochs": 2, "lr": 0.05, "optimizer": "sgd"},
                                   {"prep": digits}))
    assert metrics["accuracy"] > 0.5
    assert metrics["epochs_run"] == 2
    _, config = tm.load_model(tmp_path / "train" / "artifacts" / "model.pt")
    assert config["kind"] == "cnn" and config["side"] == 8 and config["channels"] == [8, 16]


def test_cnn_needs_square_images(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="digits")  # drop_constant drops 3 constant pixels: 61 features
    with pytest.raises(ValueError, match=r"61 features.*not a perfect square.*drop_constant: false"):
        train.torch_cnn(_ctx(tmp_path / "train", "train", {"epochs": 1}, {"prep": up}))


def test_early_stopping(tmp_path: Path, iris: Upstream) -> None:
    metrics = train.torch_mlp(_ctx(tmp_path / "train", "train", {"lr": 1e-7, "epochs": 30, "patience": 1},
                                   {"prep": iris}))
    assert metrics["epochs_run"] < 30
    assert metrics["early_stopped"] == 1
    assert len(_steps(tmp_path / "train")) == metrics["epochs_run"]
    last = torch.load(tmp_path / "train" / "checkpoints" / "last.pt", weights_only=True)
    assert last["stopped"] and last["epoch"] == metrics["epochs_run"]


def test_same_seed_same_metrics(tmp_path: Path, iris: Upstream) -> None:
    params = {"hidden": [16, 8], "epochs": 5, "seed": 3, "dropout": 0.3, "batch_size": 8}
    first = train.torch_mlp(_ctx(tmp_path / "a", "train", params, {"prep": iris}))
    second = train.torch_mlp(_ctx(tmp_path / "b", "train", params, {"prep": iris}))
    other = train.torch_mlp(_ctx(tmp_path / "c", "train", {**params, "seed": 4}, {"prep": iris}))
    drop = ("train_seconds",)
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    assert [s["train_loss"] for s in _steps(tmp_path / "a")] == [s["train_loss"] for s in _steps(tmp_path / "b")]
    assert [s["train_loss"] for s in _steps(tmp_path / "a")] != [s["train_loss"] for s in _steps(tmp_path / "c")]
    assert first["train_seconds"] > 0 and other["epochs_run"] == 5


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:  # not there yet
        return 0


def test_resume_after_kill(tmp_path: Path, digits: Upstream) -> None:
    """Attempt 1 runs in its own process and is SIGKILLed mid-training; attempt 2
    resumes from its checkpoint and ends where an uninterrupted run ends."""
    # Small batches make each epoch long enough (a few tenths of a second) to
    # kill the process between two checkpoints.
    params = {"hidden": [64], "epochs": 6, "batch_size": 4, "seed": 1}
    first_dir = tmp_path / "attempt-1"
    ctx1 = _ctx(first_dir, "train", params, {"prep": digits})
    process = multiprocessing.get_context("spawn").Process(target=train.torch_mlp, args=(ctx1,))
    process.start()
    last = first_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    try:
        while _checkpoint_epoch(last) < 2:
            assert process.is_alive(), "attempt 1 ended before it could be killed"
            assert time.monotonic() < deadline, "attempt 1 wrote no checkpoint in 60 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.join(10)
    assert process.exitcode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(last)
    assert 2 <= killed_at < 6, "the kill came after the last epoch: nothing left to resume"
    assert not (first_dir / "artifacts" / "model.pt").exists()

    second_dir = tmp_path / "attempt-2"
    resumed = train.torch_mlp(_ctx(second_dir, "train", params, {"prep": digits}, attempt=2,
                                   previous_run_dir=first_dir))
    assert resumed["resumed_from_epoch"] == killed_at >= 2
    assert resumed["epochs_run"] == 6
    steps = _steps(second_dir)
    assert [s["step"] for s in steps] == list(range(1, 7))  # the curve so far, replayed, then the rest
    reported = [json.loads(line) for line in (second_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("resumed_from_epoch") == killed_at for r in reported)
    assert _checkpoint_epoch(second_dir / "checkpoints" / "last.pt") == 6

    # The same run uninterrupted: same epochs, and (model, optimizer and RNG
    # state all restored) the same weights, so the same test metrics.
    straight = train.torch_mlp(_ctx(tmp_path / "straight", "train", params, {"prep": digits}))
    assert straight["epochs_run"] == 6
    for key in ("accuracy", "f1_macro", "log_loss", "best_epoch"):
        assert resumed[key] == straight[key], key


def test_resume_ignores_checkpoint_of_other_params(tmp_path: Path, iris: Upstream) -> None:
    train.torch_mlp(_ctx(tmp_path / "a", "train", {"epochs": 2}, {"prep": iris}))
    metrics = train.torch_mlp(_ctx(tmp_path / "b", "train", {"epochs": 3, "lr": 0.01}, {"prep": iris},
                                   attempt=2, previous_run_dir=tmp_path / "a"))
    assert "resumed_from_epoch" not in metrics and metrics["epochs_run"] == 3


def test_select_device_on_cpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for gpu_ids, resources in (([], {"cpu": 1}), (["0"], {"cpu": 1, "gpu": 0.25}), (["0"], {"gpu": 1})):
        ctx = _ctx(tmp_path, "train", {}, gpu_ids=gpu_ids, resources=resources)
        device, fraction = tm.select_device(ctx)
        assert device == torch.device("cpu") and fraction is None
        assert tm.device_name(device) == "cpu"


def test_select_device_cuda_branch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch's decisions, with CUDA faked (no GPU here): cuda:0, the cap
    set to a fractional share, lifted again for a whole GPU."""
    calls: list[tuple[float, Any]] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    device, fraction = tm.select_device(_ctx(tmp_path, "train", {}, gpu_ids=["3"], resources={"gpu": 0.25}))
    assert device == torch.device("cuda:0") and fraction == 0.25 and calls == [(0.25, device)]
    assert tm.device_name(device) == "cuda:0"
    device, fraction = tm.select_device(_ctx(tmp_path, "train", {}, gpu_ids=["3"], resources={"gpu": 1}))
    assert fraction is None and calls[-1] == (1.0, device)
    device, fraction = tm.select_device(_ctx(tmp_path, "train", {}, gpu_ids=[], resources={"gpu": 0.5}))
    assert device == torch.device("cpu") and fraction is None and len(calls) == 2


def test_logical_gpu_trains_on_cpu(tmp_path: Path, iris: Upstream) -> None:
    """`labq run --gpus 1` on a machine without GPUs: Ray hands out GPU ids, the
    job still runs (on the CPU) and reports no memory cap."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    metrics = train.torch_mlp(_ctx(tmp_path / "train", "train", {"epochs": 1}, {"prep": iris}, gpu_ids=["0"],
                                   resources={"cpu": 0.5, "gpu": 0.25}))
    assert metrics["device"] == "cpu" and "gpu_memory_fraction" not in metrics
    assert metrics["torch_threads"] == 1


@pytest.mark.parametrize("params, expected", [
    ({"optimizer": "rmsprop"}, ["optimizer", "'rmsprop'", "adam", "adamw", "sgd"]),
    ({"epochs": -1}, ["epochs", "-1", "positive integer"]),
    ({"epochs": 2.5}, ["epochs", "2.5"]),
    ({"batch_size": 0}, ["batch_size", "positive integer"]),
    ({"lr": 0}, ["lr", "> 0"]),
    ({"hidden": [64, -1]}, ["hidden", "positive integers"]),
    ({"hidden": 64}, ["hidden", "list"]),
    ({"channels": []}, ["channels", "non-empty"]),
    ({"dropout": 1.0}, ["dropout"]),
    ({"patience": 0}, ["patience"]),
    ({"lr": 0.01, "n_layers": 3}, ["unknown param(s) n_layers", "hidden", "batch_size", "estimator"]),
])
def test_check_params_torch(params: dict[str, Any], expected: list[str]) -> None:
    problems = train.check_params(params)
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0]


def test_check_params_dispatch() -> None:
    good = {"hidden": [64, 32], "dropout": 0.2, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 1e-4,
            "batch_size": 64, "epochs": 30, "seed": 1, "patience": 5, "checkpoint_every": 2}
    assert train.check_params(good) == []
    # Empty params are ambiguous without the function (the scheduler does not pass
    # it): reported as sklearn's missing estimator, with the torch hint.
    assert any("estimator: required" in p and "epochs" in p for p in train.check_params({}))
    assert train.check_params({}, function="torch_mlp") == []
    assert train.check_params({}, function="torch_cnn") == []
    assert any("estimator" in p for p in train.check_params({}, function="sklearn"))
    assert any("hidden: only used by" in p for p in train.check_params({"hidden": [8]}, function="torch_cnn"))
    assert train.check_params({"estimator": "sklearn.linear_model.Ridge", "cv": 5}) == []
    assert any("cv" in p for p in train.check_params({"estimator": "sklearn.linear_model.Ridge", "cv": 1}))
    # sklearn params are not torch params and the other way round
    assert any("estimator" in p for p in train.check_params({"alpha": 1.0}))
    assert train.check_torch_params({"channels": [8]}, "mlp") == [
        "channels: only used by jobs.train:torch_cnn, not jobs.train:torch_mlp"]


def test_run_time_params_are_checked(tmp_path: Path, iris: Upstream) -> None:
    with pytest.raises(ValueError, match="optimizer"):
        train.torch_mlp(_ctx(tmp_path / "a", "train", {"optimizer": "lbfgs"}, {"prep": iris}))
    with pytest.raises(ValueError, match="hidden: only used by jobs.train:torch_mlp"):
        train.torch_cnn(_ctx(tmp_path / "b", "train", {"hidden": [8]}, {"prep": iris}))
    with pytest.raises(ValueError, match=r"unknown param\(s\) n_layers; valid params for jobs.train:torch_mlp: "
                                         r"hidden, dropout"):
        train.torch_mlp(_ctx(tmp_path / "c", "train", {"n_layers": 3}, {"prep": iris}))


def test_import_stays_cheap() -> None:
    import subprocess
    import sys

    code = "import sys, jobs.train, jobs.evaluate; print(sorted(m for m in ('torch', 'sklearn', 'numpy', " \
           "'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sklearn_cv_and_log_loss(tmp_path: Path, iris: Upstream) -> None:
    ctx = _ctx(tmp_path / "train", "train", {"estimator": "sklearn.linear_model.LogisticRegression", "cv": 3},
               {"prep": iris})
    metrics = train.sklearn(ctx)
    assert 0.8 < metrics["cv_mean"] <= 1 and 0 <= metrics["cv_std"] < 0.2 and metrics["cv_folds"] == 3
    assert metrics["log_loss"] > 0 and metrics["accuracy"] > 0.8
    regression = _prep(tmp_path / "diabetes", dataset="diabetes")
    metrics = train.sklearn(_ctx(tmp_path / "ridge", "train", {"estimator": "sklearn.linear_model.Ridge", "cv": 4},
                                 {"prep": regression}))
    assert 0 < metrics["cv_mean"] < 1 and "log_loss" not in metrics  # cv scored by r2
    with pytest.raises(ValueError, match="cv"):
        train.sklearn(_ctx(tmp_path / "bad", "train", {"estimator": "sklearn.linear_model.Ridge", "cv": 1},
                           {"prep": regression}))
