"""Evaluate a trained model on the prepared data: metrics, a plot and the
predictions, as a stage of its own.

    stages:
      - name: evaluate
        run: jobs.evaluate:model
        after: [prep, train]      # both: the data and the model

A job only sees its direct upstream jobs, so the stage lists the prep stage as
well as the training stage.  The data input is the one whose artifacts hold
``data.npz``, the model input the one with ``model.joblib`` (jobs.train:sklearn)
or ``model.pt`` (jobs.train:torch_mlp / torch_cnn); ``data_stage`` and
``model_stage`` name them where that is ambiguous.

Artifacts: ``predictions.csv`` (row, y_true, y_pred and, for classifiers with
probabilities, one ``p_<class>`` column per class; for regression a
``residual`` column) and ``confusion_matrix.png`` (classification) or
``residuals.png`` (regression).  Metrics: those the trainers report
(accuracy, f1_macro, log_loss, roc_auc / r2, rmse, mae) on the chosen split.
numpy/sklearn/torch/matplotlib are imported inside the functions.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from jobs.api import ARTIFACTS_DIR, JobContext, Upstream

DATA_FILE = "data.npz"
MODEL_FILES = ("model.joblib", "model.pt")
SPLITS = ("test", "val", "train")
PARAMS = ("data_stage", "model_stage", "split")


def check_params(params: dict[str, Any]) -> list[str]:
    problems = []
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        problems.append(f"unknown param(s) {', '.join(unknown)}; valid params: {', '.join(PARAMS)}")
    split = params.get("split", "test")
    if split not in SPLITS:
        problems.append(f"split: unknown value {split!r}; choose one of {', '.join(SPLITS)}")
    for name in ("data_stage", "model_stage"):
        if name in params and not (isinstance(params[name], str) and params[name]):
            problems.append(f"{name}: expected a stage name, got {params[name]!r}")
    return problems


def _has(up: Upstream, name: str) -> bool:
    return (up.run_dir / ARTIFACTS_DIR / name).is_file()


def find_inputs(ctx: JobContext) -> tuple[Upstream, Upstream, str]:
    """(data upstream, model upstream, model file name)."""
    ups = list(ctx.inputs.values())
    if "data_stage" in ctx.params:
        data_ups = [ctx.input(ctx.params["data_stage"])]
    else:
        data_ups = [up for up in ups if _has(up, DATA_FILE)]
    if "model_stage" in ctx.params:
        model_ups = [ctx.input(ctx.params["model_stage"])]
    else:
        model_ups = [up for up in ups if any(_has(up, f) for f in MODEL_FILES)]
    stages = ", ".join(ctx.inputs) or "none"
    if not model_ups:
        raise ValueError(f"evaluate: no upstream stage has {' or '.join(MODEL_FILES)} (upstream stages: {stages}); "
                         "list the training stage in after:")
    if not data_ups:
        raise ValueError(f"evaluate: no upstream stage has {DATA_FILE} (upstream stages: {stages}); a job sees "
                         "only its direct upstream jobs, so list the prep stage too: after: [prep, train]")
    if len(model_ups) > 1 or len(data_ups) > 1:
        raise ValueError(f"evaluate: several upstream stages could be the "
                         f"{'model' if len(model_ups) > 1 else 'data'} (upstream stages: {stages}); "
                         "name them with params data_stage and model_stage")
    model_up = model_ups[0]
    model_file = next((f for f in MODEL_FILES if _has(model_up, f)), None)
    if model_file is None:
        raise ValueError(f"evaluate: stage {model_up.stage!r} has neither {' nor '.join(MODEL_FILES)}")
    return data_ups[0], model_up, model_file


def _predict_sklearn(path: Path, X: Any) -> tuple[Any, Any, list[Any] | None]:
    import joblib

    from jobs.train import sklearn_proba

    model = joblib.load(path)
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and n_in != X.shape[1]:
        raise ValueError(f"evaluate: the model expects {n_in} features but the data has {X.shape[1]}: "
                         "it was trained on other prep output")
    proba = sklearn_proba(model, X)
    labels = list(getattr(model, "classes_", [])) or None
    return model.predict(X), proba, labels


def _predict_torch(ctx: JobContext, path: Path, X: Any, data_job_id: int) -> tuple[Any, Any, list[Any] | None]:
    from jobs import torch_models as tm

    device, _ = tm.select_device(ctx)
    model, config = tm.load_model(path, device)
    trained_on = config.get("data_job_id")
    if trained_on is not None and trained_on != data_job_id:
        raise ValueError(f"evaluate: the model was trained on the output of job {trained_on}, not on job "
                         f"{data_job_id}'s; with a swept prep stage every prep job is paired with every "
                         "training job, and only matching pairs can be evaluated")
    if config["in_features"] != X.shape[1]:
        raise ValueError(f"evaluate: the model expects {config['in_features']} features but the data has "
                         f"{X.shape[1]}: it was trained on other prep output")
    pred, proba = tm.predict(model, config, X, device)
    labels = list(range(config["out_features"])) if config["task"] == "classification" else None
    return pred, proba, labels


def model(ctx: JobContext) -> dict[str, Any]:
    """Load the upstream model, predict the chosen split of the upstream data,
    write predictions and a plot, and return the metrics."""
    import numpy as np

    from jobs.train import classification_metrics, regression_metrics

    problems = check_params(ctx.params)
    if problems:
        raise ValueError("; ".join(problems))
    split = ctx.params.get("split", "test")
    data_up, model_up, model_file = find_inputs(ctx)
    with np.load(data_up.artifact(DATA_FILE), allow_pickle=False) as data:
        if f"X_{split}" not in data.files:
            raise ValueError(f"split: the prep output has no {split} split (it has: "
                             f"{', '.join(k[2:] for k in data.files if k.startswith('X_'))})")
        X, y = data[f"X_{split}"], data[f"y_{split}"]
        task = str(data["task"])
        class_names = [str(c) for c in data["classes"]] if "classes" in data.files else None

    path = model_up.artifact(model_file)
    if model_file == "model.pt":
        pred, proba, labels = _predict_torch(ctx, path, X, data_up.job_id)
    else:
        pred, proba, labels = _predict_sklearn(path, X)

    if task == "classification":
        metrics: dict[str, Any] = classification_metrics(y, pred, proba, labels)
        labels = labels if labels is not None else sorted(set(np.asarray(y).tolist()) | set(np.asarray(pred).tolist()))
        names = [_class_name(label, class_names) for label in labels]
        _write_predictions(ctx.artifact_path("predictions.csv"), y, pred, proba, names, class_names)
        _plot_confusion(ctx.artifact_path("confusion_matrix.png"), y, pred, labels, names,
                        f"{model_up.stage} (job {model_up.job_id}): accuracy {metrics['accuracy']:.3f}")
    elif task == "regression":
        metrics = regression_metrics(y, pred)
        _write_predictions(ctx.artifact_path("predictions.csv"), y, pred, None, None, None)
        _plot_residuals(ctx.artifact_path("residuals.png"), np.asarray(y, dtype=float), np.asarray(pred, dtype=float),
                        f"{model_up.stage} (job {model_up.job_id}): r2 {metrics['r2']:.3f}")
    else:
        raise ValueError(f"data.npz: unknown task {task!r}; expected classification or regression")
    metrics["rows"] = int(len(y))
    return metrics


def _class_name(label: Any, class_names: list[str] | None) -> str:
    """A class index as its name where prep recorded the names."""
    try:
        index = int(label)
    except (TypeError, ValueError):
        return str(label)
    if class_names is not None and 0 <= index < len(class_names) and index == label:
        return class_names[index]
    return str(label)


def _write_predictions(path: Path, y: Any, pred: Any, proba: Any, names: list[str] | None,
                       class_names: list[str] | None) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        header = ["row", "y_true", "y_pred"]
        if names is not None:  # classification
            header += ["true_label", "pred_label"]
            if proba is not None:
                header += [f"p_{name}" for name in names]
        else:
            header.append("residual")
        writer.writerow(header)
        for i, (t, p) in enumerate(zip(y.tolist(), pred.tolist())):
            row: list[Any] = [i, t, p]
            if names is not None:
                row += [_class_name(t, class_names), _class_name(p, class_names)]
                if proba is not None:
                    row += [f"{v:.6g}" for v in proba[i]]
            else:
                row.append(repr(float(t) - float(p)))
            writer.writerow(row)


def _figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas, without pyplot's global state (so
    a job never switches the backend of the process it runs in)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _plot_confusion(path: Path, y: Any, pred: Any, labels: list[Any], names: list[str], title: str) -> None:
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y, pred, labels=labels)
    size = max(4.0, 0.45 * len(labels) + 2.5)
    fig = _figure(size, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), names, rotation=45 if max(map(len, names), default=0) > 3 else 0)
    ax.set_yticks(range(len(labels)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_residuals(path: Path, y: Any, pred: Any, title: str) -> None:
    fig = _figure(9, 3.8)
    left, right = fig.subplots(1, 2)
    left.scatter(y, pred, s=10, alpha=0.6)
    if len(y):
        low, high = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
    left.set_xlabel("true")
    left.set_ylabel("predicted")
    left.grid(alpha=0.3)
    right.scatter(pred, y - pred, s=10, alpha=0.6)
    right.axhline(0, color="grey", linewidth=1)
    right.set_xlabel("predicted")
    right.set_ylabel("residual (true - predicted)")
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
