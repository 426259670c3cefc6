"""Tabular data preparation: load a dataset (bundled, synthetic, or a CSV /
Parquet file), report on its quality, clean it, split it, fit the
preprocessing on the training split only and save the result for a downstream
training stage.

    stages:
      - name: prep
        run: jobs.prep:tabular
        params: {path: data/customers.csv, target: churned, impute: median, encode: onehot}

Artifacts: ``data.npz`` (X_train, X_test, y_train, y_test, [X_val, y_val],
task, feature_names, [classes]), ``preprocess.joblib`` (the fitted pipeline:
it transforms raw DataFrame rows of the original columns), ``quality.json``
and, with ``folds``, ``folds.npz``.  Outputs are cached under
``ctx.cache_dir/prep/<key>`` so another experiment with the same params and
data reuses them.  Loading and cleaning live in jobs.data, the fitted
transforms in jobs.transforms; pandas/sklearn are imported inside functions so
the scheduler can import this module cheaply to call :func:`check_params`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from jobs import data
from jobs.api import JobContext

DATASETS: tuple[str, ...] = (*data.BUNDLED, *data.SYNTHETIC)
TASK_CHOICES: tuple[str, ...] = ("auto", "classification", "regression")
IMPUTE_CHOICES: tuple[str, ...] = ("mean", "median", "most_frequent", "constant", "knn", "none")
OUTLIER_CHOICES: tuple[str, ...] = ("none", "iqr_clip", "zscore_clip", "iqr_remove", "zscore_remove",
                                    "isolation_forest")
SCALE_CHOICES: tuple[str, ...] = ("standard", "minmax", "robust", "none")
ENCODE_CHOICES: tuple[str, ...] = ("onehot", "ordinal")
SELECT_KINDS: tuple[str, ...] = ("variance", "k_best")
MAX_POLY_DEGREE = 5

DEFAULTS: dict[str, Any] = {
    "dataset": None, "path": None, "target": None, "task": "auto",
    "n_samples": 1000, "n_features": 20, "n_informative": 5, "n_classes": 2, "noise": 1.0,
    "seed": 0, "drop_duplicates": True, "drop_constant": True, "max_missing": 0.5,
    "impute": "median", "outliers": "none", "scale": "standard", "encode": "onehot",
    "datetime_parts": False, "datetime_columns": None, "poly_degree": None, "pca": None, "select": None,
    "test_size": 0.25, "val_size": 0.0, "folds": None, "cache": True,
}
PARAMS: tuple[str, ...] = tuple(DEFAULTS)
# Params that only mean something for some sources.
_FILE_ONLY = ("target", "task")
_SYNTHETIC_ONLY = {"n_samples": None, "n_features": None, "n_informative": None,
                   "n_classes": "synthetic_classification", "noise": "synthetic_regression"}
# Bump when the artifacts' format changes in a way the code hash would not show.
CACHE_FORMAT = 1
_MANIFEST = "manifest.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(problems: list[str], name: str, value: Any, choices: tuple[str, ...]) -> None:
    """One wording for every bad choice, naming param, value and the options, so
    a typo in a sweep is fixable from the message alone."""
    if value not in choices:
        problems.append(f"{name}: unknown value {value!r}; choose one of {', '.join(choices)}")


def _int_at_least(problems: list[str], name: str, value: Any, low: int, high: int | None = None) -> bool:
    if _is_int(value) and value >= low and (high is None or value <= high):
        return True
    bound = f"between {low} and {high}" if high is not None else f">= {low}"
    problems.append(f"{name}: expected an integer {bound}, got {value!r}")
    return False


def _check_source(params: dict[str, Any], problems: list[str]) -> None:
    dataset, path = params.get("dataset"), params.get("path")
    if dataset is None and path is None:
        problems.append(f"dataset or path: one is required; dataset is one of {', '.join(DATASETS)}, "
                        "path a CSV or Parquet file (with target: its label column)")
    elif dataset is not None and path is not None:
        problems.append("dataset and path: give exactly one of them, not both")
    if dataset is not None:
        _choice(problems, "dataset", dataset, DATASETS)
    if path is not None:
        if not isinstance(path, str) or not path:
            problems.append(f"path: expected a file path, got {path!r}")
        elif data.file_kind(path) is None:
            problems.append(f"path: {path!r} must end in one of {', '.join(data.FILE_SUFFIXES)}")
        target = params.get("target")
        if not isinstance(target, str) or not target:
            problems.append(f"target: required with path: the name of the label column, got {target!r}")
        _choice(problems, "task", params.get("task", "auto"), TASK_CHOICES)
    for name in _FILE_ONLY:
        if name in params and path is None:
            problems.append(f"{name}: only used with path (a file source), not with dataset")
    synthetic = dataset in data.SYNTHETIC
    for name, only in _SYNTHETIC_ONLY.items():
        if name in params and (not synthetic or (only is not None and dataset != only)):
            problems.append(f"{name}: only used with dataset: {only or ' or '.join(data.SYNTHETIC)}")
    if synthetic:
        n_features = params.get("n_features", DEFAULTS["n_features"])
        n_informative = params.get("n_informative", DEFAULTS["n_informative"])
        _int_at_least(problems, "n_samples", params.get("n_samples", DEFAULTS["n_samples"]), 10)
        ok = _int_at_least(problems, "n_features", n_features, 1)
        if _int_at_least(problems, "n_informative", n_informative, 1) and ok and n_informative > n_features:
            problems.append(f"n_informative: {n_informative} is more than n_features ({n_features})")
        if dataset == "synthetic_classification":
            n_classes = params.get("n_classes", DEFAULTS["n_classes"])
            if (_int_at_least(problems, "n_classes", n_classes, 2) and _is_int(n_informative)
                    and n_informative >= 1 and n_classes > 2 ** n_informative):
                problems.append(f"n_classes: {n_classes} classes need n_informative >= "
                                f"{(n_classes - 1).bit_length()} (2**n_informative >= n_classes)")
        noise = params.get("noise", DEFAULTS["noise"])
        if not _is_number(noise) or noise < 0:
            problems.append(f"noise: expected a number >= 0, got {noise!r}")


def _check_transforms(params: dict[str, Any], problems: list[str]) -> None:
    for name, choices in (("impute", IMPUTE_CHOICES), ("outliers", OUTLIER_CHOICES),
                          ("scale", SCALE_CHOICES), ("encode", ENCODE_CHOICES)):
        _choice(problems, name, params.get(name, DEFAULTS[name]), choices)
    for name in ("drop_duplicates", "drop_constant", "datetime_parts", "cache"):
        if name in params and not isinstance(params[name], bool):
            problems.append(f"{name}: expected true or false, got {params[name]!r}")
    max_missing = params.get("max_missing", DEFAULTS["max_missing"])
    if not _is_number(max_missing) or not 0 <= max_missing <= 1:
        problems.append(f"max_missing: expected a share between 0 and 1, got {max_missing!r}")
    columns = params.get("datetime_columns")
    if columns is not None and (not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)):
        problems.append(f"datetime_columns: expected a list of column names, got {columns!r}")
    if params.get("poly_degree") is not None:
        _int_at_least(problems, "poly_degree", params["poly_degree"], 1, MAX_POLY_DEGREE)
    pca = params.get("pca")
    if pca is not None and not (_is_int(pca) and pca >= 1) and not (isinstance(pca, float) and 0 < pca < 1):
        problems.append(f"pca: expected a number of components (integer >= 1) or a share of variance "
                        f"strictly between 0 and 1, got {pca!r}")
    select = params.get("select")
    if select is not None:
        if not isinstance(select, dict) or len(select) != 1 or next(iter(select)) not in SELECT_KINDS:
            problems.append(f"select: expected {{variance: threshold}} or {{k_best: k}}, got {select!r}")
        elif "variance" in select and (not _is_number(select["variance"]) or select["variance"] < 0):
            problems.append(f"select: variance threshold must be a number >= 0, got {select['variance']!r}")
        elif "k_best" in select:
            _int_at_least(problems, "select: k_best", select["k_best"], 1)


def _check_splits(params: dict[str, Any], problems: list[str]) -> None:
    test_size = params.get("test_size", DEFAULTS["test_size"])
    val_size = params.get("val_size", DEFAULTS["val_size"])
    test_ok = _is_number(test_size) and 0 < test_size < 1
    if not test_ok:
        problems.append(f"test_size: expected a fraction strictly between 0 and 1, got {test_size!r}")
    val_ok = _is_number(val_size) and 0 <= val_size < 1
    if not val_ok:
        problems.append(f"val_size: expected a fraction from 0 (no validation split) up to 1, got {val_size!r}")
    if test_ok and val_ok and test_size + val_size >= 1:
        problems.append(f"test_size + val_size: {test_size} + {val_size} leaves no training rows; keep it below 1")
    if params.get("folds") is not None:
        _int_at_least(problems, "folds", params["folds"], 2)
    if not _is_int(params.get("seed", DEFAULTS["seed"])):
        problems.append(f"seed: expected an integer, got {params.get('seed')!r}")


def _check_file(params: dict[str, Any], base_dir: Path, problems: list[str]) -> None:
    """The file exists; for CSV, the header (first line only) has the columns."""
    raw = Path(params["path"])
    path = raw if raw.is_absolute() else Path(base_dir) / raw
    if not path.is_file():
        problems.append(f"path: file not found: {raw} (looked for {path})")
        return
    if data.file_kind(path) != "csv":
        return  # Parquet's schema needs pyarrow: checked when the job runs
    try:
        header = data.read_csv_header(path)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"path: cannot read the header of {raw}: {exc}")
        return
    target = params.get("target")
    if isinstance(target, str) and target and target not in header:
        problems.append(f"target: column {target!r} is not in {raw}; available columns: {', '.join(header)}")
    missing = [c for c in params.get("datetime_columns") or () if isinstance(c, str) and c not in header]
    if missing:
        problems.append(f"datetime_columns: {', '.join(missing)} not in {raw}; available columns: "
                        f"{', '.join(header)}")


def check_params(params: dict[str, Any], base_dir: str | Path | None = None) -> list[str]:
    """Problems with ``params`` found without loading any data (a CSV's header
    line at most); the scheduler calls this at submit time so a bad sweep fails
    before it runs.  ``base_dir``: where relative paths resolve (the spec's
    directory, which becomes the workers' working directory)."""
    problems: list[str] = []
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        problems.append(f"unknown param(s) {', '.join(unknown)}; valid params: {', '.join(PARAMS)}")
    _check_source(params, problems)
    _check_transforms(params, problems)
    _check_splits(params, problems)
    path = params.get("path")
    if base_dir is not None and isinstance(path, str) and data.file_kind(path) and params.get("dataset") is None:
        _check_file(params, Path(base_dir), problems)
    return problems


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    """Params with defaults filled in (only those the source uses), so that
    ``{dataset: iris}`` and ``{dataset: iris, scale: standard}`` are one cache key."""
    resolved = {**DEFAULTS, **params}
    dataset = resolved["dataset"]
    if resolved["path"] is None:
        for name in _FILE_ONLY + ("path",):
            resolved.pop(name)
    else:
        resolved.pop("dataset")
    for name, only in _SYNTHETIC_ONLY.items():
        if dataset not in data.SYNTHETIC or (only is not None and dataset != only):
            resolved.pop(name)
    if "datetime_parts" not in params and resolved["datetime_columns"]:
        resolved["datetime_parts"] = True  # naming datetime columns asks for their parts
    for name in ("test_size", "val_size", "max_missing"):
        resolved[name] = float(resolved[name])
    return resolved


def _resolve_path(path: str) -> Path:
    """Relative paths resolve against the working directory: the spec's
    directory, shipped to the worker."""
    raw = Path(path)
    resolved = raw if raw.is_absolute() else Path(os.getcwd()) / raw
    if not resolved.is_file():
        raise ValueError(f"path: file not found: {path} (looked in {resolved.parent})")
    return resolved


def cache_key(resolved: dict[str, Any], content: dict[str, str]) -> str:
    """sha256 over the params that shape the output, the data's identity, the
    prep code itself and the library versions that produced the pickles."""
    import numpy
    import pandas
    import sklearn

    here = Path(__file__).parent
    code = hashlib.sha256()
    for module in ("prep.py", "data.py", "transforms.py"):
        code.update((here / module).read_bytes())
    payload = {
        "params": {k: v for k, v in resolved.items() if k not in ("cache", "path")},
        "data": content,
        "code": code.hexdigest(),
        "format": CACHE_FORMAT,
        "versions": {"sklearn": sklearn.__version__, "numpy": numpy.__version__, "pandas": pandas.__version__},
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _cache_load(entry: Path, artifacts_dir: Path) -> dict[str, Any] | None:
    """Copy a complete cached output into this run's artifacts; None on a miss."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text(encoding="utf-8"))
        names = manifest["artifacts"]
        if not all((entry / name).is_file() for name in names):
            return None
        for name in names:
            shutil.copy2(entry / name, artifacts_dir / name)
        return dict(manifest["metrics"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_store(entry: Path, artifacts_dir: Path, names: list[str], metrics: dict[str, Any]) -> None:
    """Write into a temp dir beside the entry, then rename: readers see a
    complete entry or none.  A concurrent writer that won the race is kept."""
    tmp = entry.parent / f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        for name in names:
            shutil.copy2(artifacts_dir / name, tmp / name)
        (tmp / _MANIFEST).write_text(json.dumps({"artifacts": names, "metrics": metrics}), encoding="utf-8")
        os.rename(tmp, entry)
    except OSError:
        pass  # someone else stored it first, or the cache is not writable: the job's output stands
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _split(y: Any, task: str, size: float, seed: int, notes: dict[str, Any], name: str) -> tuple[Any, Any]:
    """Positions (rest, held out); stratified for classification unless a class
    is too rare to appear on both sides, which quality.json then records."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(y))
    if task == "classification":
        try:
            return tuple(train_test_split(positions, test_size=size, random_state=seed, stratify=y))
        except ValueError as exc:
            notes[f"{name}_split_not_stratified"] = str(exc)
    try:
        return tuple(train_test_split(positions, test_size=size, random_state=seed))
    except ValueError as exc:
        raise ValueError(f"{name}_size: cannot split {len(y)} rows: {exc}") from exc


def _folds(y: Any, task: str, k: int, seed: int) -> dict[str, Any]:
    """K-fold (stratified for classification) index arrays over the training split."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    splitter = (StratifiedKFold if task == "classification" else KFold)(n_splits=k, shuffle=True, random_state=seed)
    arrays: dict[str, Any] = {"fold": np.full(len(y), -1, dtype=np.int64)}
    try:
        for i, (train_idx, val_idx) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
            arrays[f"train_{i}"], arrays[f"val_{i}"] = train_idx.astype(np.int64), val_idx.astype(np.int64)
            arrays["fold"][val_idx] = i
    except ValueError as exc:
        raise ValueError(f"folds: cannot make {k} folds of {len(y)} training rows: {exc}") from exc
    return arrays


def _prepare(params: dict[str, Any], path: Path | None, out: Path) -> tuple[dict[str, Any], list[str]]:
    """Load, check, clean, split, fit the preprocessing on the training rows only
    (fitting on all rows would leak test statistics into training) and write the
    artifacts into ``out``; returns (metrics, artifact names)."""
    import joblib
    import numpy as np

    from jobs import transforms

    frame, target, task, class_names = data.load(params, path)
    if task in (None, "auto"):
        task = data.infer_task(frame[target])
    quality = data.quality_report(frame, target, task)
    frame, cleaning = data.clean(frame, target, drop_duplicates=params["drop_duplicates"],
                                 max_missing=params["max_missing"], drop_constant=params["drop_constant"])
    named = params["datetime_columns"]
    absent = [c for c in named or () if c not in frame.columns and c not in cleaning["dropped_columns"]]
    if absent:
        raise ValueError(f"datetime_columns: {', '.join(absent)} not in the data; available columns: "
                         f"{', '.join(c for c in frame.columns if c != target)}")
    features = frame.drop(columns=[target])
    kinds = data.column_kinds(features, [c for c in named if c in features.columns] if named else None)
    if kinds["datetime"] and not params["datetime_parts"]:
        for name in kinds["datetime"]:
            cleaning["dropped_columns"][name] = "datetime (datetime_parts: true expands it into features)"
        features = features.drop(columns=kinds["datetime"])
        kinds["datetime"] = []
    y, classes = data.encode_target(frame[target], task, class_names)

    notes: dict[str, Any] = {}
    train_idx, test_idx = _split(y, task, params["test_size"], params["seed"], notes, "test")
    val_idx = None
    if params["val_size"] > 0:
        share = params["val_size"] / (1 - params["test_size"])
        rest, val_pos = _split(y[train_idx], task, share, params["seed"], notes, "val")
        train_idx, val_idx = train_idx[rest], train_idx[val_pos]
    keep = transforms.keep_mask(features.iloc[train_idx], kinds["numeric"], params["outliers"], params["seed"])
    removed = int((~keep).sum())
    train_idx = train_idx[keep]
    if len(train_idx) == 0:
        raise ValueError(f"outliers: {params['outliers']} removed every training row")

    pipeline = transforms.build_pipeline(kinds, params, task, columns=list(features.columns))
    arrays: dict[str, Any] = {
        "X_train": transforms.fit_transform(pipeline, features.iloc[train_idx], y[train_idx]),
        "X_test": np.asarray(pipeline.transform(features.iloc[test_idx]), dtype=np.float64),
        "y_train": y[train_idx], "y_test": y[test_idx],
    }
    if val_idx is not None:
        arrays["X_val"] = np.asarray(pipeline.transform(features.iloc[val_idx]), dtype=np.float64)
        arrays["y_val"] = y[val_idx]
    feature_names = [str(n) for n in pipeline.get_feature_names_out()]
    arrays["task"] = np.array(task)
    arrays["feature_names"] = np.asarray(feature_names, dtype=str)
    if classes is not None:
        arrays["classes"] = np.asarray(classes, dtype=str)
    # Plain (non-object) arrays only, so consumers can load with allow_pickle=False.
    np.savez(out / "data.npz", **arrays)
    joblib.dump(pipeline, out / "preprocess.joblib")
    names = ["data.npz", "preprocess.joblib", "quality.json"]
    if params["folds"]:
        np.savez(out / "folds.npz", **_folds(arrays["y_train"], task, params["folds"], params["seed"]))
        names.append("folds.npz")

    splits = {"train": int(len(train_idx)), "test": int(len(test_idx))}
    if val_idx is not None:
        splits["val"] = int(len(val_idx))
    quality.update(cleaning=cleaning, column_kinds=kinds, outliers={
        "method": params["outliers"], "train_rows_removed": removed}, splits=splits,
        features=feature_names, **notes)
    (out / "quality.json").write_text(json.dumps(quality, indent=2), encoding="utf-8")

    metrics: dict[str, Any] = {
        "rows": quality["rows"],
        "columns": quality["columns"],
        "missing_share": quality["missing_share_overall"],
        "duplicate_rows": quality["duplicate_rows"],
        "constant_columns": len(quality["constant_columns"]),
        "dropped_columns": len(cleaning["dropped_columns"]),
        "dropped_rows": cleaning["missing_target_rows_dropped"] + cleaning["duplicate_rows_dropped"],
        "outlier_rows_removed": removed,
        "features": len(feature_names),
        "train_rows": splits["train"],
        "test_rows": splits["test"],
        "task": task,
    }
    if val_idx is not None:
        metrics["val_rows"] = splits["val"]
    if classes is not None:
        metrics["classes"] = len(classes)
    if params["folds"]:
        metrics["folds"] = int(params["folds"])
    return metrics, names


def tabular(ctx: JobContext) -> dict[str, Any]:
    """Prepare the data ``ctx.params`` describe, or copy it from the cache."""
    problems = check_params(ctx.params)
    if problems:
        raise ValueError("; ".join(problems))
    params = resolve(ctx.params)
    path = _resolve_path(params["path"]) if params.get("path") else None
    key = cache_key(params, data.content_id(params, path))
    entry = ctx.cache_dir / "prep" / key if ctx.cache_dir is not None and params["cache"] else None
    if entry is not None and entry.is_dir():
        cached = _cache_load(entry, ctx.artifacts_dir)
        if cached is not None:
            return {**cached, "cache_hit": 1, "cache_key": key[:12]}
    metrics, names = _prepare(params, path, ctx.artifacts_dir)
    if entry is not None:
        _cache_store(entry, ctx.artifacts_dir, names, metrics)
    return {**metrics, "cache_hit": 0, "cache_key": key[:12]}
