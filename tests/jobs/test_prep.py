"""jobs.prep:tabular against real scikit-learn and pandas on small tables, with
hand-built contexts (no scheduler, no Ray): sources, the quality report,
cleaning, every transform option, no leakage from test rows, splits, folds,
caching and the submit-time check_params."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from jobs import prep, train
from jobs.api import JobContext, Upstream

CHURN_CSV = Path(__file__).resolve().parents[2] / "examples" / "data" / "customers.csv"


def _ctx(tmp_path: Path, params: dict[str, Any], name: str = "prep",
         cache: Path | None | str = "default") -> JobContext:
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return JobContext(job_id=1, attempt=1, experiment="t", stage="prep", params=params, run_dir=run_dir,
                      cache_dir=tmp_path / "cache" if cache == "default" else cache)


def _run(tmp_path: Path, name: str = "prep", **params: Any) -> tuple[dict[str, Any], Path]:
    metrics = prep.tabular(_ctx(tmp_path, params, name))
    return metrics, tmp_path / name / "artifacts"


def _arrays(artifacts: Path, name: str = "data.npz") -> dict[str, np.ndarray]:
    with np.load(artifacts / name, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _frame(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """Numeric columns with gaps, a categorical, an ISO date and a binary target
    that depends on them; no duplicate rows."""
    rng = np.random.default_rng(seed)
    a = rng.normal(10, 2, rows)
    b = rng.uniform(0, 100, rows)
    plan = rng.choice(["basic", "pro", "enterprise"], rows)
    frame = pd.DataFrame({
        "a": a, "b": b, "plan": plan,
        "signup": (pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 900, rows), unit="D"))
        .strftime("%Y-%m-%d"),
        "label": np.where(b + rng.normal(0, 15, rows) > 50, "yes", "no"),
    })
    frame.loc[rng.random(rows) < 0.1, "a"] = np.nan
    return frame


def _csv(tmp_path: Path, frame: pd.DataFrame | None = None, name: str = "data.csv") -> Path:
    path = tmp_path / name
    (_frame() if frame is None else frame).to_csv(path, index=False)
    return path


def _file_params(path: Path, **params: Any) -> dict[str, Any]:
    return {"path": str(path), "target": "label", "cache": False, **params}


# ---- sources -----------------------------------------------------------------

@pytest.mark.parametrize("dataset, task, classes", [
    ("iris", "classification", ["setosa", "versicolor", "virginica"]),
    ("wine", "classification", ["class_0", "class_1", "class_2"]),
    ("digits", "classification", [str(i) for i in range(10)]),
    ("breast_cancer", "classification", ["malignant", "benign"]),
    ("diabetes", "regression", None),
])
def test_bundled_datasets(tmp_path: Path, dataset: str, task: str, classes: list[str] | None) -> None:
    metrics, artifacts = _run(tmp_path, dataset=dataset, cache=False)
    arrays = _arrays(artifacts)
    assert str(arrays["task"]) == task == metrics["task"]
    assert arrays["X_train"].dtype == np.float64 and arrays["X_test"].dtype == np.float64
    assert arrays["X_train"].shape[1] == arrays["feature_names"].size == metrics["features"]
    assert arrays["X_train"].shape[0] == metrics["train_rows"]
    if classes is None:
        assert "classes" not in arrays and arrays["y_train"].dtype == np.float64
    else:
        assert arrays["classes"].tolist() == classes and metrics["classes"] == len(classes)
        assert arrays["y_train"].dtype.kind == "i" and set(arrays["y_test"]) <= set(range(len(classes)))
    assert json.loads((artifacts / "quality.json").read_text())["rows"] == metrics["rows"]


def test_synthetic_sources(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, "c", dataset="synthetic_classification", n_samples=200, n_features=6,
                              n_informative=3, n_classes=3, seed=1, cache=False)
    arrays = _arrays(artifacts)
    assert metrics["rows"] == 200 and metrics["features"] == 6 and metrics["classes"] == 3
    assert arrays["feature_names"].tolist() == [f"x{i}" for i in range(6)]
    metrics, artifacts = _run(tmp_path, "r", dataset="synthetic_regression", n_samples=100, n_features=4,
                              n_informative=2, noise=0.5, cache=False)
    assert metrics["task"] == "regression" and metrics["features"] == 4
    assert metrics["train_rows"] + metrics["test_rows"] == 100


def test_csv_source(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path)))
    arrays = _arrays(artifacts)
    assert metrics["task"] == "classification" and arrays["classes"].tolist() == ["no", "yes"]
    assert metrics["rows"] == 120 and metrics["train_rows"] == 90 and metrics["test_rows"] == 30
    # plan one-hot encoded; the date column is dropped unless datetime_parts is on
    assert arrays["feature_names"].tolist() == ["a", "b", "plan_basic", "plan_enterprise", "plan_pro"]
    quality = json.loads((artifacts / "quality.json").read_text())
    assert "signup" in quality["cleaning"]["dropped_columns"]
    assert not np.isnan(arrays["X_train"]).any()


def test_relative_path_resolves_against_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    _csv(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    metrics, _ = _run(tmp_path, path="data/data.csv", target="label")
    assert metrics["rows"] == 120
    with pytest.raises(ValueError, match="path: file not found"):
        _run(tmp_path, "missing", path="data/nope.csv", target="label")


def test_parquet_source(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = _frame()
    frame["signup"] = pd.to_datetime(frame["signup"])  # a real datetime dtype this time
    frame.to_parquet(tmp_path / "data.parquet")
    metrics, artifacts = _run(tmp_path, **_file_params(tmp_path / "data.parquet", datetime_parts=True))
    assert "signup_year" in _arrays(artifacts)["feature_names"].tolist()
    assert metrics["rows"] == 120
    with pytest.raises(ValueError, match="target: column 'churn' is not in"):
        _run(tmp_path, "bad", **_file_params(tmp_path / "data.parquet", target="churn"))


def test_regression_csv_and_task_override(tmp_path: Path) -> None:
    frame = _frame().assign(label=lambda f: f["b"] * 0.5 + 3.25)
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path, frame)))
    assert metrics["task"] == "regression" and "classes" not in _arrays(artifacts)
    frame = _frame().assign(label=lambda f: (f["b"] > 50).astype(int))
    metrics, _ = _run(tmp_path, "r", **_file_params(_csv(tmp_path, frame, "int.csv"), task="regression"))
    assert metrics["task"] == "regression"


# ---- quality report and cleaning ---------------------------------------------

def test_quality_report_and_cleaning(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "x": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 1.0, 10.0],
        "mostly_missing": [np.nan] * 8 + [1.0, 2.0],
        "const": [3] * 10,
        "label": ["a", "b", "a", "b", None, "b", "a", "b", "a", "a"],
    })
    frame.loc[7] = frame.loc[6]  # one exact duplicate row
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path, frame), test_size=0.3))
    quality = json.loads((artifacts / "quality.json").read_text())
    assert quality["rows"] == 10 and quality["columns"] == 4
    assert quality["missing_share"] == {"x": 0.1, "mostly_missing": 0.8, "const": 0.0, "label": 0.1}
    assert quality["missing_share_overall"] == pytest.approx(10 / 40)
    assert quality["duplicate_rows"] == 1 and quality["constant_columns"] == ["const"]
    assert quality["dtypes"]["x"] == "float64" and quality["dtypes"]["const"] == "int64"
    assert quality["class_balance"] == {"a": pytest.approx(6 / 9), "b": pytest.approx(3 / 9)}
    cleaning = quality["cleaning"]
    assert cleaning["missing_target_rows_dropped"] == 1 and cleaning["duplicate_rows_dropped"] == 1
    assert set(cleaning["dropped_columns"]) == {"mostly_missing", "const"} and cleaning["rows_after"] == 8
    assert metrics["rows"] == 10 and metrics["columns"] == 4 and metrics["duplicate_rows"] == 1
    assert metrics["constant_columns"] == 1 and metrics["missing_share"] == pytest.approx(0.25)
    assert metrics["train_rows"] + metrics["test_rows"] == 8
    assert all(isinstance(v, (int, float, str)) for v in metrics.values())
    # kept when asked
    metrics, artifacts = _run(tmp_path, "keep", **_file_params(tmp_path / "data.csv", drop_duplicates=False,
                                                               max_missing=1.0, drop_constant=False))
    assert metrics["train_rows"] + metrics["test_rows"] == 9
    assert set(_arrays(artifacts)["feature_names"]) == {"x", "mostly_missing", "const"}


# ---- no leakage --------------------------------------------------------------

def test_imputer_and_scaler_fitted_on_training_rows_only(tmp_path: Path) -> None:
    frame = _frame()
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path, frame), impute="mean", seed=5,
                                                       test_size=0.3))
    pipeline = joblib.load(artifacts / "preprocess.joblib")
    y = (frame["label"] == "yes").to_numpy()
    train_pos, test_pos = train_test_split(np.arange(len(frame)), test_size=0.3, random_state=5, stratify=y)
    train_rows, numeric = frame.iloc[train_pos], ["a", "b"]
    imputer = pipeline.named_steps["columns"].named_transformers_["num"].named_steps["impute"]
    np.testing.assert_allclose(imputer.statistics_, train_rows[numeric].mean())
    assert not np.allclose(imputer.statistics_, frame[numeric].mean())
    scaler = pipeline.named_steps["scale"]
    # mean imputation leaves each column's training mean unchanged
    np.testing.assert_allclose(scaler.mean_[:2], train_rows[numeric].mean())
    onehot = pd.get_dummies(train_rows["plan"]).mean().sort_index().to_numpy()
    np.testing.assert_allclose(scaler.mean_[2:], onehot)
    # the saved pipeline reproduces X_test from raw rows of the original columns
    np.testing.assert_allclose(pipeline.transform(frame.iloc[test_pos]), _arrays(artifacts)["X_test"])


@pytest.mark.parametrize("method", ["iqr_remove", "zscore_remove", "isolation_forest"])
def test_outlier_removal_drops_training_rows_only(tmp_path: Path, method: str) -> None:
    frame = _frame(200)
    frame.loc[[3, 50, 77, 120, 150, 190], "b"] = [5000.0, -4000.0, 9000.0, 7000.0, 6000.0, -8000.0]
    path = _csv(tmp_path, frame)
    base, _ = _run(tmp_path, "none", **_file_params(path))
    metrics, artifacts = _run(tmp_path, method, **_file_params(path, outliers=method))
    assert metrics["test_rows"] == base["test_rows"] == 50
    assert metrics["outlier_rows_removed"] > 0
    assert metrics["train_rows"] == base["train_rows"] - metrics["outlier_rows_removed"]
    assert _arrays(artifacts)["X_test"].shape[0] == 50
    quality = json.loads((artifacts / "quality.json").read_text())
    assert quality["outliers"]["train_rows_removed"] == metrics["outlier_rows_removed"]
    if method != "isolation_forest":  # every gross outlier that landed in training is caught
        y = (frame["label"] == "yes").to_numpy()
        train_pos, _ = train_test_split(np.arange(200), test_size=0.25, random_state=0, stratify=y)
        assert metrics["outlier_rows_removed"] >= len(set(train_pos) & {3, 50, 77, 120, 150, 190}) > 0


def test_clipping_uses_training_bounds(tmp_path: Path) -> None:
    frame = _frame(200)
    frame.loc[[3, 50, 77, 120, 150, 190], "b"] = 5000.0
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path, frame), outliers="iqr_clip", scale="none"))
    clipper = joblib.load(artifacts / "preprocess.joblib").named_steps["columns"] \
        .named_transformers_["num"].named_steps["outliers"]
    arrays = _arrays(artifacts)
    assert metrics["outlier_rows_removed"] == 0 and arrays["X_test"].shape[0] == 50
    b = list(arrays["feature_names"]).index("b")
    assert clipper.upper_[1] < 200
    assert arrays["X_train"][:, b].max() <= clipper.upper_[1] and arrays["X_test"][:, b].max() <= clipper.upper_[1]


# ---- every option runs -------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    *[("impute", v) for v in prep.IMPUTE_CHOICES if v != "none"],
    *[("outliers", v) for v in prep.OUTLIER_CHOICES],
    *[("scale", v) for v in prep.SCALE_CHOICES],
    *[("encode", v) for v in prep.ENCODE_CHOICES],
])
def test_each_option_runs(tmp_path: Path, name: str, value: str) -> None:
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path), **{name: value}))
    arrays = _arrays(artifacts)
    assert arrays["X_train"].shape == (metrics["train_rows"], metrics["features"])
    assert np.isfinite(arrays["X_train"]).all() and np.isfinite(arrays["X_test"]).all()


def test_impute_none_keeps_missing_values(tmp_path: Path) -> None:
    _, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path), impute="none"))
    arrays = _arrays(artifacts)
    assert np.isnan(np.concatenate([arrays["X_train"], arrays["X_test"]])).any()
    with pytest.raises(ValueError, match="impute"):
        _run(tmp_path, "pca", **_file_params(tmp_path / "data.csv", impute="none", pca=2))


@pytest.mark.parametrize("encode, unseen_value", [("onehot", 0.0), ("ordinal", -1.0)])
def test_unseen_category_does_not_crash(tmp_path: Path, encode: str, unseen_value: float) -> None:
    _, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path), encode=encode, scale="none"))
    pipeline = joblib.load(artifacts / "preprocess.joblib")
    row = pd.DataFrame({"a": [np.nan], "b": [50.0], "plan": ["platinum"], "signup": ["2021-01-01"]})
    out = pipeline.transform(row)
    names = list(pipeline.get_feature_names_out())
    plan_columns = [i for i, n in enumerate(names) if n.startswith("plan")]
    assert out.shape == (1, len(names)) and np.all(out[0, plan_columns] == unseen_value)
    with pytest.raises(ValueError, match="lack column"):
        pipeline.transform(row.drop(columns=["plan"]))


def test_datetime_parts(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, **_file_params(_csv(tmp_path), datetime_parts=True, scale="none"))
    arrays = _arrays(artifacts)
    names = arrays["feature_names"].tolist()
    parts = ["signup_year", "signup_month", "signup_day", "signup_dayofweek", "signup_hour"]
    assert names[2:7] == parts
    assert set(arrays["X_train"][:, 2]) <= {2020.0, 2021.0, 2022.0}
    # datetime_columns names a non-ISO column explicitly (and implies datetime_parts)
    frame = _frame().assign(when=lambda f: pd.to_datetime(f["signup"]).dt.strftime("%m/%d/%Y %H:00"))
    path = _csv(tmp_path, frame.drop(columns=["signup"]), "us.csv")
    _, artifacts = _run(tmp_path, "us", **_file_params(path, datetime_columns=["when"], scale="none"))
    arrays = _arrays(artifacts)
    assert "when_month" in arrays["feature_names"].tolist()
    month = list(arrays["feature_names"]).index("when_month")
    assert set(arrays["X_train"][:, month]) <= set(map(float, range(1, 13)))


def test_pca_by_count_and_by_variance(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, "n", dataset="wine", pca=3, cache=False)
    assert metrics["features"] == 3 and _arrays(artifacts)["X_test"].shape[1] == 3
    metrics, artifacts = _run(tmp_path, "v", dataset="wine", pca=0.8, cache=False)
    pca = joblib.load(artifacts / "preprocess.joblib").named_steps["pca"]
    assert 1 < metrics["features"] < 13 and pca.explained_variance_ratio_.sum() >= 0.8


def test_select_and_poly(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, "k", dataset="breast_cancer", select={"k_best": 5}, cache=False)
    assert metrics["features"] == 5 and _arrays(artifacts)["X_train"].shape[1] == 5
    metrics, _ = _run(tmp_path, "r", dataset="diabetes", select={"k_best": 3}, cache=False)
    assert metrics["features"] == 3
    metrics, _ = _run(tmp_path, "var", dataset="digits", select={"variance": 1.0}, scale="none", cache=False)
    assert 0 < metrics["features"] < 64
    metrics, artifacts = _run(tmp_path, "p", dataset="iris", poly_degree=2, cache=False)
    assert metrics["features"] == 14  # 4 + 4 squares + 6 products
    assert "sepal length (cm)^2" in _arrays(artifacts)["feature_names"].tolist()


# ---- splits ------------------------------------------------------------------

def test_val_split_and_folds(tmp_path: Path) -> None:
    metrics, artifacts = _run(tmp_path, dataset="breast_cancer", test_size=0.2, val_size=0.2, folds=4,
                              drop_duplicates=False, cache=False)
    arrays = _arrays(artifacts)
    n_train, n_val, n_test = (arrays[k].shape[0] for k in ("X_train", "X_val", "X_test"))
    assert (n_train, n_val, n_test) == (metrics["train_rows"], metrics["val_rows"], metrics["test_rows"])
    assert n_train + n_val + n_test == 569 and n_test == 114 and abs(n_val - 114) <= 1
    assert arrays["y_val"].shape == (n_val,) and arrays["X_val"].shape[1] == arrays["X_train"].shape[1]
    folds = _arrays(artifacts, "folds.npz")
    assert metrics["folds"] == 4 and folds["fold"].shape == (n_train,) and set(folds["fold"]) == {0, 1, 2, 3}
    for i in range(4):
        train_i, val_i = folds[f"train_{i}"], folds[f"val_{i}"]
        assert np.array_equal(np.sort(np.concatenate([train_i, val_i])), np.arange(n_train))
        # stratified: each fold's class share is close to the training split's
        assert abs(arrays["y_train"][val_i].mean() - arrays["y_train"].mean()) < 0.05
    assert "X_val" not in _arrays(_run(tmp_path, "noval", dataset="iris", cache=False)[1])


# ---- caching -----------------------------------------------------------------

def test_cache_hit_miss_and_invalidation(tmp_path: Path) -> None:
    path = _csv(tmp_path)
    params = {"path": str(path), "target": "label", "impute": "median", "folds": 3}
    first, a1 = _run(tmp_path, "one", **params)
    second, a2 = _run(tmp_path, "two", **params)
    assert first["cache_hit"] == 0 and second["cache_hit"] == 1
    assert first["cache_key"] == second["cache_key"] and len(first["cache_key"]) == 12
    assert {k: v for k, v in first.items() if k != "cache_hit"} == {k: v for k, v in second.items() if k != "cache_hit"}
    for name in ("data.npz", "folds.npz"):
        one, two = _arrays(a1, name), _arrays(a2, name)
        assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    assert (a2 / "preprocess.joblib").is_file() and (a2 / "quality.json").is_file()
    assert not list((tmp_path / "cache" / "prep").glob(".tmp-*"))  # no leftover temp dirs
    # defaults spelled out are the same key
    assert _run(tmp_path, "three", **params, scale="standard")[0]["cache_hit"] == 1
    # different params: miss
    other, _ = _run(tmp_path, "four", **{**params, "impute": "mean"})
    assert other["cache_hit"] == 0 and other["cache_key"] != first["cache_key"]
    # same params, changed file content: miss
    frame = _frame()
    frame.loc[0, "b"] = 99.5
    _csv(tmp_path, frame)
    changed, _ = _run(tmp_path, "five", **params)
    assert changed["cache_hit"] == 0 and changed["cache_key"] != first["cache_key"]
    # cache off, or no cache_dir: computed, key still reported
    assert _run(tmp_path, "six", **params, cache=False)[0]["cache_hit"] == 0
    metrics = prep.tabular(_ctx(tmp_path, params, "seven", cache=None))
    assert metrics["cache_hit"] == 0 and metrics["cache_key"] == changed["cache_key"]


# ---- check_params ------------------------------------------------------------

def test_check_params_good(tmp_path: Path) -> None:
    _csv(tmp_path)
    assert prep.check_params({"dataset": "iris"}) == []
    assert prep.check_params({
        "dataset": "synthetic_classification", "n_samples": 100, "n_features": 5, "n_informative": 3,
        "n_classes": 3, "seed": 2, "pca": 0.9, "select": {"k_best": 2}, "val_size": 0.1, "folds": 5,
    }) == []
    assert prep.check_params({
        "path": "data.csv", "target": "label", "impute": "knn", "outliers": "isolation_forest", "scale": "robust",
        "encode": "ordinal", "datetime_parts": True, "datetime_columns": ["signup"], "poly_degree": 2,
        "select": {"variance": 0.1}, "drop_duplicates": False, "max_missing": 0.3, "task": "auto", "cache": False,
    }, base_dir=tmp_path) == []


@pytest.mark.parametrize("params, expected", [
    ({"dataset": "iris", "scaler": "minmax"}, ["unknown param", "scaler", "valid params", "scale", "outliers"]),
    ({"dataset": "iris", "outliers": "clip"}, ["outliers", "'clip'", "iqr_clip", "isolation_forest"]),
    ({"dataset": "iris", "impute": "zero"}, ["impute", "'zero'", "knn"]),
    ({"dataset": "iris", "encode": "hash"}, ["encode", "onehot, ordinal"]),
    ({"dataset": "mnist"}, ["dataset", "'mnist'", "synthetic_regression"]),
    ({}, ["dataset or path"]),
    ({"dataset": "iris", "path": "x.csv", "target": "y"}, ["exactly one"]),
    ({"path": "x.csv"}, ["target: required"]),
    ({"path": "x.xlsx", "target": "y"}, ["path", ".parquet"]),
    ({"dataset": "iris", "target": "y"}, ["target: only used with path"]),
    ({"dataset": "iris", "n_classes": 3}, ["n_classes: only used with dataset"]),
    ({"dataset": "synthetic_classification", "n_features": 3, "n_informative": 5}, ["n_informative"]),
    ({"dataset": "synthetic_classification", "n_informative": 1, "n_classes": 4}, ["n_classes"]),
    ({"dataset": "iris", "test_size": 0.6, "val_size": 0.5}, ["test_size + val_size"]),
    ({"dataset": "iris", "max_missing": 2}, ["max_missing"]),
    ({"dataset": "iris", "pca": 1.5}, ["pca"]),
    ({"dataset": "iris", "pca": 0}, ["pca"]),
    ({"dataset": "iris", "select": {"k_best": 0}}, ["k_best"]),
    ({"dataset": "iris", "select": {"chi2": 3}}, ["select", "k_best"]),
    ({"dataset": "iris", "folds": 1}, ["folds"]),
    ({"dataset": "iris", "poly_degree": 9}, ["poly_degree"]),
    ({"dataset": "iris", "drop_duplicates": "yes"}, ["drop_duplicates", "true or false"]),
    ({"dataset": "iris", "seed": 1.5}, ["seed"]),
])
def test_check_params_problems(params: dict[str, Any], expected: list[str]) -> None:
    text = " | ".join(prep.check_params(params))
    for fragment in expected:
        assert fragment in text, (fragment, text)


def test_check_params_file_checks(tmp_path: Path) -> None:
    problems = prep.check_params({"path": "missing.csv", "target": "label"}, base_dir=tmp_path)
    assert len(problems) == 1 and "path: file not found" in problems[0] and "missing.csv" in problems[0]
    # Only the header is read: the body below it is not even valid text.
    (tmp_path / "big.csv").write_bytes(b"a,b,label\n" + b"\xff\xfe\x00junk" * 1000)
    problems = prep.check_params({"path": "big.csv", "target": "churn", "datetime_columns": ["when"]},
                                 base_dir=tmp_path)
    assert any("target: column 'churn'" in p and "a, b, label" in p for p in problems)
    assert any("datetime_columns: when" in p for p in problems)
    assert prep.check_params({"path": "big.csv", "target": "label"}, base_dir=tmp_path) == []
    assert prep.check_params({"path": "missing.csv", "target": "label"}) == []  # no base_dir: not checked
    with pytest.raises(ValueError, match="unknown param"):
        _run(tmp_path, dataset="iris", scaler="none")


def test_check_params_is_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, jobs.prep; jobs.prep.check_params({'dataset': 'iris'}); "
            "print(sorted(m for m in ('pandas', 'sklearn', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- downstream --------------------------------------------------------------

def test_train_job_on_churn_csv(tmp_path: Path) -> None:
    params = {"path": str(CHURN_CSV), "target": "churned", "impute": "median", "outliers": "iqr_clip",
              "scale": "standard", "encode": "onehot", "datetime_parts": True}
    metrics, artifacts = _run(tmp_path, **params)
    assert metrics["duplicate_rows"] > 0 and metrics["missing_share"] > 0 and metrics["constant_columns"] == 1
    up = Upstream(job_id=1, stage="prep", params=params, run_dir=tmp_path / "prep", metrics=metrics)
    ctx = JobContext(job_id=2, attempt=1, experiment="t", stage="train", run_dir=tmp_path / "train",
                     params={"estimator": "sklearn.linear_model.LogisticRegression", "C": 0.1},
                     inputs={"prep": up})
    (tmp_path / "train").mkdir()
    result = train.sklearn(ctx)
    assert result["accuracy"] > 0.6 and result["roc_auc"] > 0.7
