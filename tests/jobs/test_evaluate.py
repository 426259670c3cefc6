"""jobs.evaluate:model after real prep and train jobs (sklearn and torch, CPU),
with hand-built contexts: the evaluate stage lists both upstream stages."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from jobs import evaluate, prep, train
from jobs.api import JobContext, Upstream


def _ctx(run_dir: Path, stage: str, params: dict[str, Any], inputs: dict[str, Upstream] | None = None,
         job_id: int = 1) -> JobContext:
    run_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=job_id, attempt=1, experiment="t", stage=stage, params=params, run_dir=run_dir,
                      inputs=inputs or {}, resources={"cpu": 1})


def _run(root: Path, stage: str, fn: Any, params: dict[str, Any], inputs: dict[str, Upstream] | None = None,
         job_id: int = 1) -> Upstream:
    run_dir = root / stage
    metrics = fn(_ctx(run_dir, stage, params, inputs, job_id))
    return Upstream(job_id=job_id, stage=stage, params=params, run_dir=run_dir, metrics=metrics)


def _evaluate(root: Path, inputs: dict[str, Upstream], **params: Any) -> dict[str, Any]:
    return evaluate.model(_ctx(root / "evaluate", "evaluate", params, inputs, job_id=9))


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_sklearn_classifier(tmp_path: Path) -> None:
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "wine"})
    model = _run(tmp_path, "train", train.sklearn, {"estimator": "sklearn.linear_model.LogisticRegression"},
                 {"prep": data}, job_id=2)
    metrics = _evaluate(tmp_path, {"prep": data, "train": model})
    assert abs(metrics["accuracy"] - model.metrics["accuracy"]) < 1e-9
    assert abs(metrics["log_loss"] - model.metrics["log_loss"]) < 1e-9
    assert metrics["rows"] == data.metrics["test_rows"]
    out = tmp_path / "evaluate" / "artifacts"
    assert _is_png(out / "confusion_matrix.png") and not (out / "residuals.png").exists()
    rows = _csv(out / "predictions.csv")
    assert len(rows) == metrics["rows"]
    assert {"row", "y_true", "y_pred", "true_label", "pred_label", "p_class_0", "p_class_2"} <= set(rows[0])
    correct = sum(r["y_true"] == r["y_pred"] for r in rows)
    assert correct / len(rows) == metrics["accuracy"]


def test_sklearn_regressor(tmp_path: Path) -> None:
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "diabetes"})
    model = _run(tmp_path, "train", train.sklearn, {"estimator": "sklearn.linear_model.Ridge"}, {"prep": data},
                 job_id=2)
    metrics = _evaluate(tmp_path, {"prep": data, "train": model})
    for key in ("r2", "rmse", "mae"):
        assert abs(metrics[key] - model.metrics[key]) < 1e-9
    out = tmp_path / "evaluate" / "artifacts"
    assert _is_png(out / "residuals.png") and not (out / "confusion_matrix.png").exists()
    rows = _csv(out / "predictions.csv")
    assert set(rows[0]) == {"row", "y_true", "y_pred", "residual"}
    first = rows[0]
    assert float(first["residual"]) == pytest.approx(float(first["y_true"]) - float(first["y_pred"]))


def test_torch_mlp_and_cnn(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "digits", "scale": "minmax", "drop_constant": False})
    for fn, params in ((train.torch_mlp, {"hidden": [32], "epochs": 2}),
                       (train.torch_cnn, {"channels": [8], "epochs": 2})):
        root = tmp_path / fn.__name__
        model = _run(root, "train", fn, params, {"prep": data}, job_id=2)
        metrics = _evaluate(root, {"prep": data, "train": model})
        assert abs(metrics["accuracy"] - model.metrics["accuracy"]) < 1e-9
        assert abs(metrics["f1_macro"] - model.metrics["f1_macro"]) < 1e-9
        out = root / "evaluate" / "artifacts"
        assert _is_png(out / "confusion_matrix.png")
        rows = _csv(out / "predictions.csv")
        assert len(rows) == data.metrics["test_rows"] and "p_9" in rows[0]
        assert abs(sum(float(rows[0][f"p_{k}"]) for k in range(10)) - 1) < 1e-4


def test_torch_regression_and_split(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "diabetes", "val_size": 0.2})
    model = _run(tmp_path, "train", train.torch_mlp, {"epochs": 3, "lr": 0.01}, {"prep": data}, job_id=2)
    metrics = _evaluate(tmp_path, {"prep": data, "train": model})
    assert abs(metrics["r2"] - model.metrics["r2"]) < 1e-9
    assert _is_png(tmp_path / "evaluate" / "artifacts" / "residuals.png")
    val = evaluate.model(_ctx(tmp_path / "val", "evaluate", {"split": "val"}, {"prep": data, "train": model}))
    assert val["rows"] == data.metrics["val_rows"]


def test_needs_both_inputs(tmp_path: Path) -> None:
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "iris"})
    model = _run(tmp_path, "train", train.sklearn, {"estimator": "sklearn.tree.DecisionTreeClassifier"},
                 {"prep": data}, job_id=2)
    with pytest.raises(ValueError, match=r"after: \[prep, train\]"):
        _evaluate(tmp_path, {"train": model})
    with pytest.raises(ValueError, match="model.joblib or model.pt"):
        _evaluate(tmp_path, {"prep": data})
    other = _run(tmp_path / "b", "train", train.sklearn, {"estimator": "sklearn.tree.DecisionTreeClassifier"},
                 {"prep": data}, job_id=3)
    with pytest.raises(ValueError, match="model_stage"):
        _evaluate(tmp_path, {"prep": data, "train": model, "train2": other})
    metrics = _evaluate(tmp_path, {"prep": data, "train": model, "train2": other}, model_stage="train2")
    assert metrics["accuracy"] == other.metrics["accuracy"]


def test_torch_model_from_other_prep_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = _run(tmp_path, "prep", prep.tabular, {"dataset": "iris"})
    model = _run(tmp_path, "train", train.torch_mlp, {"epochs": 1}, {"prep": data}, job_id=2)
    other = _run(tmp_path / "b", "prep", prep.tabular, {"dataset": "iris", "scale": "minmax"}, job_id=5)
    with pytest.raises(ValueError, match="trained on the output of job 1, not on job 5"):
        _evaluate(tmp_path, {"prep": other, "train": model})


def test_check_params() -> None:
    assert evaluate.check_params({}) == []
    assert evaluate.check_params({"split": "val", "model_stage": "train"}) == []
    assert any("split" in p and "test" in p for p in evaluate.check_params({"split": "holdout"}))
    assert any("unknown" in p and "splits" in p for p in evaluate.check_params({"splits": "test"}))
