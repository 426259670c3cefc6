"""jobs.prep and jobs.train against real scikit-learn, with hand-built contexts
(no scheduler, no Ray) so a failure points at the job code itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

from jobs import prep, train
from jobs.api import JobContext, Upstream


def _ctx(run_dir: Path, stage: str, params: dict[str, Any],
         inputs: dict[str, Upstream] | None = None) -> JobContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=1 if stage == "prep" else 2, attempt=1, experiment="t", stage=stage,
                      params=params, run_dir=run_dir, inputs=inputs or {})


def _prep(tmp_path: Path, **params: Any) -> Upstream:
    """Run prep and hand back what a train job would see of it."""
    run_dir = tmp_path / "prep"
    metrics = prep.tabular(_ctx(run_dir, "prep", params))
    return Upstream(job_id=1, stage="prep", params=params, run_dir=run_dir, metrics=metrics)


def _train(tmp_path: Path, upstream: Upstream, name: str = "train", **params: Any) -> dict[str, Any]:
    return train.sklearn(_ctx(tmp_path / name, "train", params, {"prep": upstream}))


def test_iris_random_forest(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="iris")
    # Iris has one duplicate row, dropped by default (drop_duplicates: true); prep
    # also reports data-quality and cache metrics beyond these.
    expected = {"rows": 150, "duplicate_rows": 1, "features": 4, "train_rows": 111, "test_rows": 38,
                "task": "classification", "classes": 3}
    assert {k: up.metrics[k] for k in expected} == expected
    with np.load(up.artifact("data.npz"), allow_pickle=False) as data:
        assert str(data["task"]) == "classification"
        assert data["feature_names"].shape == (4,)
    metrics = _train(tmp_path, up, estimator="sklearn.ensemble.RandomForestClassifier", n_estimators=30)
    assert metrics["accuracy"] > 0.85
    assert {"f1_macro", "train_seconds", "model_bytes"} <= set(metrics)
    assert "roc_auc" not in metrics  # three classes
    assert all(type(v) is float for v in metrics.values())
    model_path = tmp_path / "train" / "artifacts" / "model.joblib"
    assert metrics["model_bytes"] == model_path.stat().st_size


def test_binary_gets_roc_auc(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="breast_cancer", impute="median", scale="robust")
    metrics = _train(tmp_path, up, estimator="sklearn.linear_model.LogisticRegression")
    assert metrics["roc_auc"] > 0.9


def test_diabetes_ridge_regression(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="diabetes", scale="minmax")
    assert up.metrics["task"] == "regression" and "classes" not in up.metrics
    metrics = _train(tmp_path, up, estimator="sklearn.linear_model.Ridge", alpha=0.1)
    assert 0.2 < metrics["r2"] < 1
    assert metrics["rmse"] > metrics["mae"] > 0
    assert "accuracy" not in metrics


def test_scaler_fit_on_training_rows_only(tmp_path: Path) -> None:
    # drop_duplicates off so the split below (on all 150 rows) is the job's split.
    up = _prep(tmp_path, dataset="iris", scale="standard", seed=3, test_size=0.3, drop_duplicates=False)
    scaler = joblib.load(up.artifact("preprocess.joblib")).named_steps["scale"]
    X, y = load_iris(return_X_y=True)
    X_train, _, _, _ = train_test_split(X, y, test_size=0.3, random_state=3, stratify=y)
    np.testing.assert_allclose(scaler.mean_, X_train.mean(axis=0))
    assert not np.allclose(scaler.mean_, X.mean(axis=0))


@pytest.mark.parametrize("params, expected", [
    ({"dataset": "mnist"}, ["dataset", "'mnist'", "iris", "breast_cancer"]),
    ({"dataset": "iris", "impute": "zero"}, ["impute", "'zero'", "most_frequent"]),
    ({"dataset": "iris", "scale": "log"}, ["scale", "'log'", "robust"]),
])
def test_prep_rejects_bad_choices(tmp_path: Path, params: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        prep.tabular(_ctx(tmp_path / "prep", "prep", params))
    for text in expected:
        assert text in str(info.value)


def test_train_rejects_bad_estimator_and_kwargs(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="iris")
    for path in ("sklearn.ensemble.NoSuchForest", "sklearn.nosuchmodule.Thing", "numpy.pi", "Ridge"):
        with pytest.raises(ValueError, match="estimator"):
            _train(tmp_path, up, estimator=path)
    with pytest.raises(ValueError) as info:
        _train(tmp_path, up, estimator="sklearn.ensemble.RandomForestClassifier", n_trees=5)
    assert "n_trees" in str(info.value)
    assert "n_estimators" in str(info.value)  # the valid params are listed


def test_check_params() -> None:
    assert prep.check_params({"dataset": "iris", "test_size": 0.2, "scale": "none", "impute": "mean"}) == []
    assert any("dataset" in p and "wine" in p for p in prep.check_params({"dataset": "cifar"}))
    assert any("test_size" in p for p in prep.check_params({"dataset": "iris", "test_size": 1.5}))
    assert train.check_params({"estimator": "sklearn.linear_model.Ridge", "alpha": 1.0, "seed": 1}) == []
    assert any("estimator" in p for p in train.check_params({"alpha": 1.0}))
    assert train.check_params({"estimator": "Ridge"})
    assert train.check_params({"estimator": "no_such_pkg_xyz.Model"})


def test_same_seed_same_result(tmp_path: Path) -> None:
    up = _prep(tmp_path, dataset="wine")
    params = {"estimator": "sklearn.ensemble.RandomForestClassifier", "n_estimators": 10, "max_depth": 2, "seed": 7}
    first = _train(tmp_path, up, "a", **params)
    second = _train(tmp_path, up, "b", **params)
    assert first["accuracy"] == second["accuracy"]
    assert joblib.load(tmp_path / "a" / "artifacts" / "model.joblib").random_state == 7


def test_check_params_catches_an_unknown_estimator_without_importing_sklearn():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from jobs.train import check_params\n"
        "bad = check_params({'estimator': 'sklearn.ensemble.RandomForestClassifer'})\n"
        "missing = check_params({'estimator': 'sklearn.nosuch.Thing'})\n"
        "good = check_params({'estimator': 'sklearn.ensemble.RandomForestClassifier'})\n"
        "print(repr((bad, missing, good, 'sklearn' in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    bad, missing, good, imported = eval(out)
    assert len(bad) == 1 and "has no 'RandomForestClassifer'" in bad[0] and "RandomForestClassifier" in bad[0]
    assert len(missing) == 1 and "no module 'sklearn.nosuch'" in missing[0]
    assert good == [] and imported is False
