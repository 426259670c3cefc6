"""Tabular data preparation: load a bundled scikit-learn dataset, split it,
fit imputation + scaling on the training split only and save the result for a
downstream training stage.

    stages:
      - name: prep
        run: jobs.prep:tabular
        params: {dataset: iris, scale: standard}

Artifacts: ``data.npz`` (X_train, X_test, y_train, y_test, task, feature_names)
and ``preprocess.joblib`` (the fitted pipeline, so inference can apply exactly
the same transform).  sklearn/numpy are imported inside the functions so that
the scheduler can import this module cheaply to call :func:`check_params`.
"""

from __future__ import annotations

from typing import Any

from jobs.api import JobContext

# dataset name -> (sklearn.datasets loader, task)
_LOADERS: dict[str, tuple[str, str]] = {
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "digits": ("load_digits", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
IMPUTE_CHOICES: tuple[str, ...] = ("mean", "median", "most_frequent", "none")
SCALE_CHOICES: tuple[str, ...] = ("standard", "minmax", "robust", "none")

DEFAULT_TEST_SIZE = 0.25
DEFAULT_SEED = 0
DEFAULT_IMPUTE = "none"
DEFAULT_SCALE = "standard"


def _choice_problem(name: str, value: Any, choices: tuple[str, ...]) -> str | None:
    """One wording for every bad choice, naming param, value and the options, so
    a typo in a sweep is fixable from the message alone."""
    if value in choices:
        return None
    return f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}"


def check_params(params: dict[str, Any]) -> list[str]:
    """Problems with ``params`` that can be found without loading any data; the
    scheduler calls this at submit time so a bad sweep fails before it runs."""
    problems: list[str] = []
    if "dataset" not in params:
        problems.append(f"dataset: required; choose one of {', '.join(DATASETS)}")
    else:
        problem = _choice_problem("dataset", params["dataset"], DATASETS)
        if problem:
            problems.append(problem)
    for name, default, choices in (
        ("impute", DEFAULT_IMPUTE, IMPUTE_CHOICES),
        ("scale", DEFAULT_SCALE, SCALE_CHOICES),
    ):
        problem = _choice_problem(name, params.get(name, default), choices)
        if problem:
            problems.append(problem)
    test_size = params.get("test_size", DEFAULT_TEST_SIZE)
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        problems.append(f"test_size: expected a fraction strictly between 0 and 1, got {test_size!r}")
    seed = params.get("seed", DEFAULT_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"seed: expected an integer, got {seed!r}")
    return problems


def _pipeline(impute: str, scale: str) -> Any:
    """Imputer + scaler as one Pipeline so a single fitted object carries the
    whole transform; 'none' becomes a passthrough step to keep the step names
    ('impute', 'scale') stable for anyone inspecting the saved pipeline."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    imputer: Any = "passthrough" if impute == "none" else SimpleImputer(strategy=impute)
    scalers: dict[str, Any] = {
        "standard": StandardScaler(),
        "minmax": MinMaxScaler(),
        "robust": RobustScaler(),
        "none": "passthrough",
    }
    return Pipeline([("impute", imputer), ("scale", scalers[scale])])


def tabular(ctx: JobContext) -> dict[str, Any]:
    """Load, split, fit the preprocessing on the training rows only (fitting on
    all rows would leak test statistics into training), and save the arrays and
    the fitted pipeline as artifacts."""
    import joblib
    import numpy as np
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    params = ctx.params
    problems = check_params(params)
    if problems:
        raise ValueError("; ".join(problems))
    dataset: str = params["dataset"]
    test_size = float(params.get("test_size", DEFAULT_TEST_SIZE))
    seed = int(params.get("seed", DEFAULT_SEED))
    impute: str = params.get("impute", DEFAULT_IMPUTE)
    scale: str = params.get("scale", DEFAULT_SCALE)

    loader_name, task = _LOADERS[dataset]
    bunch = getattr(sklearn.datasets, loader_name)()
    X = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target)
    names = getattr(bunch, "feature_names", None)
    if names is None or len(names) != X.shape[1]:
        names = [f"x{i}" for i in range(X.shape[1])]
    feature_names = np.asarray(names, dtype=str)

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed,
        stratify=y if task == "classification" else None,
    )
    pipeline = _pipeline(impute, scale)
    X_train = pipeline.fit_transform(X_train)
    X_test = pipeline.transform(X_test)

    # Plain (non-object) arrays only, so consumers can load with allow_pickle=False.
    np.savez(
        ctx.artifact_path("data.npz"),
        X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test,
        task=np.array(task), feature_names=feature_names,
    )
    joblib.dump(pipeline, ctx.artifact_path("preprocess.joblib"))

    metrics: dict[str, Any] = {
        "rows": int(X.shape[0]),
        "features": int(X.shape[1]),
        "train_rows": int(X_train.shape[0]),
        "test_rows": int(X_test.shape[0]),
        "task": task,
    }
    if task == "classification":
        metrics["classes"] = int(np.unique(y).size)
    return metrics
