"""Train any scikit-learn-style estimator on the arrays a prep stage saved.

    stages:
      - name: train
        run: jobs.train:sklearn
        after: [prep]
        params: {estimator: sklearn.ensemble.RandomForestClassifier, n_estimators: 100}

Every param except ``estimator`` and ``seed`` goes to the estimator's
constructor.  ``seed`` becomes ``random_state`` where the estimator has one (0
when no seed is given) so reruns reproduce.  sklearn/numpy/joblib are imported
inside the functions: the CLI imports this module just to call
:func:`check_params`, and that must stay cheap.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import time
from typing import Any

from jobs.api import JobContext

RESERVED = ("estimator", "seed")
DEFAULT_SEED = 0
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def check_params(params: dict[str, Any]) -> list[str]:
    """Problems visible without importing the estimator's package (importing
    sklearn costs about a second, too much for a submit-time check): the path is
    present, looks like ``module.Class`` and its top-level package is installed."""
    estimator = params.get("estimator")
    if estimator is None:
        return ["estimator: required, an import path such as sklearn.ensemble.RandomForestClassifier"]
    if not isinstance(estimator, str) or not _DOTTED.match(estimator):
        return [f"estimator: expected an import path module.Class "
                f"(e.g. sklearn.linear_model.Ridge), got {estimator!r}"]
    top = estimator.split(".", 1)[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return [f"estimator: package {top!r} of {estimator!r} is not installed"]
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        return [f"seed: expected an integer, got {seed!r}"]
    return []


def _import_estimator(path: str) -> type:
    """Resolve ``module.Class``; every failure becomes one ValueError naming the
    param so the job's error says what to fix rather than showing a traceback."""
    problems = check_params({"estimator": path})
    if problems:
        raise ValueError(problems[0])
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"estimator: cannot import module {module_name!r} of {path!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"estimator: module {module_name!r} has no attribute {class_name!r}")
    if not inspect.isclass(cls) or not callable(getattr(cls, "fit", None)):
        raise ValueError(f"estimator: {path!r} is not an estimator class with a fit() method")
    return cls


def _valid_params(cls: type) -> set[str]:
    """Constructor params, from ``get_params()`` on a default instance; falls back
    to the signature for estimators that need arguments to be built."""
    try:
        return set(cls().get_params(deep=False))
    except Exception:
        signature = inspect.signature(cls.__init__)
        return {
            name for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }


def build_estimator(params: dict[str, Any]) -> Any:
    """The unfitted estimator ``params`` describe (separate from fitting so it can
    be checked and reused)."""
    cls = _import_estimator(params.get("estimator"))  # type: ignore[arg-type]
    kwargs = {k: v for k, v in params.items() if k not in RESERVED}
    valid = _valid_params(cls)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"estimator {params['estimator']}: unknown params {', '.join(unknown)}; "
            f"valid params: {', '.join(sorted(valid)) or 'none'}"
        )
    if "random_state" in valid and "random_state" not in kwargs:
        seed = params.get("seed")
        kwargs["random_state"] = DEFAULT_SEED if seed is None else int(seed)
    return cls(**kwargs)


def _classification_metrics(model: Any, X_test: Any, y_test: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    pred = model.predict(X_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, pred)),
        "f1_macro": float(f1_score(y_test, pred, average="macro")),
    }
    # hasattr is False for e.g. SVC(probability=False): sklearn hides it then.
    if len(getattr(model, "classes_", ())) == 2 and hasattr(model, "predict_proba"):
        metrics["roc_auc"] = float(roc_auc_score(y_test, model.predict_proba(X_test)[:, 1]))
    return metrics


def _regression_metrics(model: Any, X_test: Any, y_test: Any) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = model.predict(X_test)
    return {
        "r2": float(r2_score(y_test, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_test, pred))),
        "mae": float(mean_absolute_error(y_test, pred)),
    }


def sklearn(ctx: JobContext) -> dict[str, Any]:
    """Fit the estimator on the upstream training split, score it on the test
    split and save it as ``model.joblib``."""
    import joblib
    import numpy as np

    model = build_estimator(ctx.params)
    with np.load(ctx.input().artifact("data.npz"), allow_pickle=False) as data:
        X_train, X_test = data["X_train"], data["X_test"]
        y_train, y_test = data["y_train"], data["y_test"]
        task = str(data["task"])

    started = time.perf_counter()
    model.fit(X_train, y_train)
    train_seconds = time.perf_counter() - started

    if task == "classification":
        metrics = _classification_metrics(model, X_test, y_test)
    elif task == "regression":
        metrics = _regression_metrics(model, X_test, y_test)
    else:
        raise ValueError(f"data.npz: unknown task {task!r}; expected classification or regression")

    model_path = ctx.artifact_path("model.joblib")
    joblib.dump(model, model_path)
    metrics["train_seconds"] = float(train_seconds)
    metrics["model_bytes"] = float(model_path.stat().st_size)
    return metrics
