"""Where jobs.prep's rows come from and what shape they are in: loading (a
bundled scikit-learn dataset, a synthetic one, a CSV or Parquet file), the
content hash that keys the prep cache, column typing, the data-quality report
and the row/column cleaning done before the split.

Everything here works on whole tables and is decided before the train/test
split; nothing is *fitted* here (that is jobs.transforms, on the training rows
only).  pandas/numpy/sklearn are imported inside the functions so that
``jobs.prep.check_params`` stays cheap to import; :func:`read_csv_header` is
what it uses to look at a CSV without pandas.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any

# dataset name -> (sklearn.datasets loader, task)
BUNDLED: dict[str, tuple[str, str]] = {
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "digits": ("load_digits", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}
SYNTHETIC: dict[str, str] = {
    "synthetic_classification": "classification",
    "synthetic_regression": "regression",
}
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
FILE_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES
BUNDLED_TARGET = "target"
# A numeric target with at most this many distinct whole values is taken as
# class labels when task is auto.
MAX_AUTO_CLASSES = 20
MAX_HEADER_BYTES = 1 << 20
DATETIME_PARTS = ("year", "month", "day", "dayofweek", "hour")
# ISO dates/datetimes: strings a CSV column must consist of to count as dates.
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")


def file_kind(path: str | Path) -> str | None:
    """'csv', 'parquet' or None, by suffix (case-insensitive)."""
    name = str(path).lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def read_csv_header(path: Path) -> list[str]:
    """Column names from the first line only: submit-time checks must not read
    (or import pandas for) a file that may be gigabytes."""
    with open(path, "rb") as f:  # bytes: a text-mode read would decode ahead of the first line
        line = f.readline(MAX_HEADER_BYTES).decode("utf-8-sig")
    row = next(csv.reader([line.rstrip("\r\n")]), [])
    return [name.strip() for name in row]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_id(params: dict[str, Any], path: Path | None) -> dict[str, str]:
    """What identifies the input data for the cache key: the file's bytes, the
    bundled dataset's name and the sklearn version that ships it, or nothing more
    than the params for synthetic data (they determine it with the seed)."""
    import sklearn

    if path is not None:
        return {"file_sha256": file_sha256(path)}
    dataset = params["dataset"]
    if dataset in BUNDLED:
        return {"bundled": dataset, "sklearn": sklearn.__version__}
    return {"synthetic": dataset}


def load(params: dict[str, Any], path: Path | None) -> tuple[Any, str, str | None, list[str] | None]:
    """(frame, target column, task or None if to be inferred, class names or None)."""
    if path is not None:
        return _load_file(path, params["target"]) + (params.get("task", "auto"), None)
    dataset = params["dataset"]
    if dataset in BUNDLED:
        return _load_bundled(dataset)
    return _load_synthetic(dataset, params)


def _load_bundled(dataset: str) -> tuple[Any, str, str, list[str] | None]:
    import numpy as np
    import pandas as pd
    import sklearn.datasets

    loader_name, task = BUNDLED[dataset]
    bunch = getattr(sklearn.datasets, loader_name)()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = getattr(bunch, "feature_names", None)
    if names is None or len(names) != X.shape[1]:
        names = [f"x{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=[str(n) for n in names])
    frame[BUNDLED_TARGET] = np.asarray(bunch.target)
    classes = None
    if task == "classification" and getattr(bunch, "target_names", None) is not None:
        classes = [str(c) for c in bunch.target_names]
    return frame, BUNDLED_TARGET, task, classes


def _load_synthetic(dataset: str, params: dict[str, Any]) -> tuple[Any, str, str, None]:
    import pandas as pd
    from sklearn.datasets import make_classification, make_regression

    task = SYNTHETIC[dataset]
    n_features = params["n_features"]
    if task == "classification":
        X, y = make_classification(
            n_samples=params["n_samples"], n_features=n_features, n_informative=params["n_informative"],
            n_redundant=0, n_classes=params["n_classes"], n_clusters_per_class=1, random_state=params["seed"],
        )
    else:
        X, y = make_regression(
            n_samples=params["n_samples"], n_features=n_features, n_informative=params["n_informative"],
            noise=params["noise"], random_state=params["seed"],
        )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(n_features)])
    frame[BUNDLED_TARGET] = y
    return frame, BUNDLED_TARGET, task, None


def _load_file(path: Path, target: str) -> tuple[Any, str]:
    import pandas as pd

    kind = file_kind(path)
    if kind == "csv":
        frame = pd.read_csv(path)
    elif kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError as exc:
            raise ValueError(f"path: reading Parquet file {path} needs pyarrow or fastparquet: {exc}") from exc
    else:
        raise ValueError(f"path: {path} is neither CSV nor Parquet (suffixes: {', '.join(FILE_SUFFIXES)})")
    frame.columns = [str(c) for c in frame.columns]
    if target not in frame.columns:
        raise ValueError(f"target: column {target!r} is not in {path}; available columns: "
                         f"{', '.join(frame.columns)}")
    return frame, target


def infer_task(y: Any) -> str:
    """classification for bool/text/categorical targets and for numeric ones with
    few distinct whole values (0/1, 1..5 ratings); regression otherwise."""
    import numpy as np
    import pandas as pd

    values = y.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    numbers = values.to_numpy(dtype=np.float64)
    if np.all(np.mod(numbers, 1) == 0) and np.unique(numbers).size <= MAX_AUTO_CLASSES:
        return "classification"
    return "regression"


def column_kinds(frame: Any, datetime_columns: list[str] | None) -> dict[str, list[str]]:
    """Split feature columns into numeric, categorical and datetime.  Datetime:
    datetime dtypes, columns named in ``datetime_columns``, and text columns
    whose every value is an ISO date (CSV has no date type)."""
    import pandas as pd

    kinds: dict[str, list[str]] = {"numeric": [], "categorical": [], "datetime": []}
    named = set(datetime_columns or ())
    for name in frame.columns:
        series = frame[name]
        if name in named or pd.api.types.is_datetime64_any_dtype(series):
            kinds["datetime"].append(name)
        elif pd.api.types.is_bool_dtype(series):
            kinds["categorical"].append(name)
        elif pd.api.types.is_numeric_dtype(series):
            kinds["numeric"].append(name)
        elif datetime_columns is None and _looks_like_dates(series):
            kinds["datetime"].append(name)
        else:
            kinds["categorical"].append(name)
    return kinds


def _looks_like_dates(series: Any) -> bool:
    values = series.dropna()
    if values.empty:
        return False
    return bool(values.astype(str).str.fullmatch(_ISO_DATE.pattern).all())


def quality_report(frame: Any, target: str, task: str) -> dict[str, Any]:
    """Facts about the table as loaded, before any cleaning."""
    rows, columns = frame.shape
    missing = frame.isna()
    report: dict[str, Any] = {
        "rows": int(rows),
        "columns": int(columns),
        "target": target,
        "task": task,
        "dtypes": {name: str(dtype) for name, dtype in frame.dtypes.items()},
        "missing_share": {name: _share(missing[name].sum(), rows) for name in frame.columns},
        "missing_share_overall": _share(missing.to_numpy().sum(), rows * columns),
        "duplicate_rows": int(frame.duplicated().sum()),
        "constant_columns": [name for name in frame.columns
                             if name != target and frame[name].nunique(dropna=False) <= 1],
    }
    if task == "classification":
        counts = frame[target].dropna().astype(str).value_counts()
        report["class_balance"] = {str(k): _share(v, counts.sum()) for k, v in counts.items()}
    return report


def _share(part: Any, whole: Any) -> float:
    return round(float(part) / float(whole), 6) if whole else 0.0


def clean(frame: Any, target: str, *, drop_duplicates: bool, max_missing: float,
          drop_constant: bool) -> tuple[Any, dict[str, Any]]:
    """Drop rows without a target, duplicate rows, and feature columns that are
    mostly missing or constant; returns the frame and what was dropped."""
    before = len(frame)
    frame = frame[frame[target].notna()]
    missing_target = before - len(frame)
    duplicates = 0
    if drop_duplicates:
        before = len(frame)
        frame = frame.drop_duplicates()
        duplicates = before - len(frame)
    dropped: dict[str, str] = {}
    for name in frame.columns:
        if name == target:
            continue
        share = float(frame[name].isna().mean()) if len(frame) else 0.0
        if share > max_missing:
            dropped[name] = f"missing share {share:.3f} > max_missing {max_missing}"
        elif drop_constant and frame[name].nunique(dropna=False) <= 1:
            dropped[name] = "constant"
    frame = frame.drop(columns=list(dropped)).reset_index(drop=True)
    if len(frame) == 0:
        raise ValueError("no rows left after dropping rows with a missing target"
                         + (" and duplicates" if drop_duplicates else ""))
    if len(frame.columns) == 1:
        raise ValueError(f"no feature columns left after cleaning (dropped: {', '.join(dropped) or 'none'}); "
                         "raise max_missing or set drop_constant: false")
    return frame, {
        "missing_target_rows_dropped": int(missing_target),
        "duplicate_rows_dropped": int(duplicates),
        "dropped_columns": dropped,
        "rows_after": int(len(frame)),
    }


def encode_target(y: Any, task: str, class_names: list[str] | None) -> tuple[Any, list[str] | None]:
    """Class labels as ints 0..k-1 (in sorted label order) with their names, or
    regression targets as floats."""
    import numpy as np
    import pandas as pd

    if task == "regression":
        try:
            return pd.to_numeric(y).to_numpy(dtype=np.float64), None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task: regression needs a numeric target column {y.name!r}: {exc}") from exc
    if pd.api.types.is_float_dtype(y) and np.all(np.mod(y.to_numpy(), 1) == 0):
        y = y.astype(np.int64)  # 0.0/1.0 (an int column that had gaps): label them 0/1
    codes, uniques = pd.factorize(y, sort=True)
    labels = [str(u) for u in uniques]
    if class_names is not None and len(class_names) == len(labels) and labels == [str(i) for i in range(len(labels))]:
        labels = class_names  # bundled datasets: 0..k-1 -> their target_names
    if len(labels) < 2:
        raise ValueError(f"target: classification needs at least 2 classes; column {y.name!r} has {len(labels)}")
    return codes.astype(np.int64), labels
