"""The fitted part of jobs.prep: one scikit-learn Pipeline, fitted on the
training rows only, that turns raw rows of the original columns into the
float feature matrix, plus outlier-row removal for the training split.

    prepare   FramePreparer: picks the feature columns, coerces their types,
              expands datetime columns into year/month/day/dayofweek/hour
    columns   ColumnTransformer
                num:  outliers (clip) -> impute -> poly
                date: impute
                cat:  impute (most_frequent) -> encode (onehot | ordinal)
    select    VarianceThreshold | SelectKBest | passthrough
    scale     StandardScaler | MinMaxScaler | RobustScaler | passthrough
    pca       PCA | passthrough

Every step name is always present ("passthrough" when unused) so code that
inspects a saved pipeline can rely on ``named_steps["scale"]`` and friends.
This module imports scikit-learn at import time (its classes subclass
sklearn's); jobs.prep imports it only inside the job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin

from jobs.data import DATETIME_PARTS

IQR_FACTOR = 1.5
# feature-name part -> pandas .dt attribute, where they differ
_DT_ATTRIBUTE = {"dayofweek": "day_of_week"}
ZSCORE_LIMIT = 3.0


def to_datetime(series: pd.Series) -> pd.Series:
    """A column as datetimes; unparsable values become NaT."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return series
    parsed = pd.to_datetime(series, errors="coerce", format="ISO8601", utc=True)
    if parsed.isna().all() and series.notna().any():
        parsed = pd.to_datetime(series, errors="coerce", format="mixed", utc=True)
    return parsed


class FramePreparer(TransformerMixin, BaseEstimator):
    """Raw DataFrame (the original columns; extra ones are ignored) -> a frame of
    float numeric columns, float datetime parts and str categorical columns, so
    the rest of the pipeline sees the same types at fit and at inference."""

    def __init__(self, numeric: list[str] | None = None, categorical: list[str] | None = None,
                 datetime: list[str] | None = None, datetime_parts: bool = False,
                 columns: list[str] | None = None) -> None:
        self.columns = columns
        self.numeric = numeric
        self.categorical = categorical
        self.datetime = datetime
        self.datetime_parts = datetime_parts

    @property
    def input_columns(self) -> list[str]:
        """The raw columns it needs, in the original table's order."""
        used = [*(self.numeric or ()), *(self.datetime or ()), *(self.categorical or ())]
        if self.columns is None:
            return used
        return [name for name in self.columns if name in set(used)]

    @property
    def date_part_columns(self) -> list[str]:
        if not self.datetime_parts:
            return []
        return [f"{name}_{part}" for name in self.datetime or () for part in DATETIME_PARTS]

    def fit(self, X: Any, y: Any = None) -> FramePreparer:
        frame = self._frame(X)
        self.n_features_in_ = frame.shape[1]
        self.feature_names_in_ = np.asarray(frame.columns, dtype=object)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        frame = self._frame(X)
        missing = [name for name in self.input_columns if name not in frame.columns]
        if missing:
            raise ValueError(f"rows to transform lack column(s) {', '.join(missing)}; "
                             f"expected: {', '.join(self.input_columns)}")
        out: dict[str, Any] = {}
        for name in self.numeric or ():
            out[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64).to_numpy()
        if self.datetime_parts:
            for name in self.datetime or ():
                dates = to_datetime(frame[name]).dt
                for part in DATETIME_PARTS:
                    values = getattr(dates, _DT_ATTRIBUTE.get(part, part))
                    out[f"{name}_{part}"] = values.astype(np.float64).to_numpy()
        for name in self.categorical or ():
            column = frame[name]
            out[name] = np.where(column.isna(), np.nan, column.astype(str)).astype(object)
        return pd.DataFrame(out, index=frame.index)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = [*(self.numeric or ()), *self.date_part_columns, *(self.categorical or ())]
        return np.asarray(names, dtype=object)

    def _frame(self, X: Any) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return X
        array = np.asarray(X)
        if array.ndim == 2 and array.shape[1] == len(self.input_columns):
            return pd.DataFrame(array, columns=self.input_columns)  # columns in the original order
        raise ValueError(f"expected a DataFrame with columns {', '.join(self.input_columns)}")


def clip_bounds(X: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (lower, upper): Tukey's fences (1.5 IQR beyond the quartiles)
    or mean +- 3 standard deviations; NaNs are ignored, and a column with no
    values gets infinite bounds."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        if method == "iqr":
            q1, q3 = np.nanpercentile(X, [25, 75], axis=0)
            lower, upper = q1 - IQR_FACTOR * (q3 - q1), q3 + IQR_FACTOR * (q3 - q1)
        elif method == "zscore":
            mean, std = np.nanmean(X, axis=0), np.nanstd(X, axis=0)
            lower, upper = mean - ZSCORE_LIMIT * std, mean + ZSCORE_LIMIT * std
        else:
            raise ValueError(f"outliers: unknown bounds method {method!r}; choose iqr or zscore")
    lower = np.where(np.isnan(lower), -np.inf, lower)
    upper = np.where(np.isnan(upper), np.inf, upper)
    return lower, upper


class OutlierClipper(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Clips each column to bounds learnt from the rows it was fitted on (the
    training split), so test rows are clipped with training statistics."""

    def __init__(self, method: str = "iqr") -> None:
        self.method = method

    def fit(self, X: Any, y: Any = None) -> OutlierClipper:
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        values = np.asarray(X, dtype=np.float64)
        self.n_features_in_ = values.shape[1]
        self.lower_, self.upper_ = clip_bounds(values, self.method)
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.clip(np.asarray(X, dtype=np.float64), self.lower_, self.upper_)


def keep_mask(frame: pd.DataFrame, numeric: list[str], method: str, seed: int) -> np.ndarray:
    """Which training rows survive outlier removal: a row goes when any numeric
    value lies outside the fences (iqr_remove, zscore_remove) or an
    IsolationForest fitted on these rows calls it an outlier.  Missing values
    never make a row an outlier."""
    keep = np.ones(len(frame), dtype=bool)
    if not numeric or method not in ("iqr_remove", "zscore_remove", "isolation_forest"):
        return keep
    values = frame[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if method == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        medians = np.nan_to_num(np.nanmedian(values, axis=0)) if np.isnan(values).any() else None
        if medians is not None:
            values = np.where(np.isnan(values), medians, values)
        return IsolationForest(random_state=seed).fit_predict(values) == 1
    lower, upper = clip_bounds(values, method.split("_")[0])
    with np.errstate(invalid="ignore"):
        outside = (values < lower) | (values > upper)
    return ~outside.any(axis=1)


def _imputer(strategy: str) -> Any:
    from sklearn.impute import KNNImputer, SimpleImputer

    if strategy == "none":
        return "passthrough"
    if strategy == "knn":
        return KNNImputer(keep_empty_features=True)
    if strategy == "constant":
        return SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True)
    return SimpleImputer(strategy=strategy, keep_empty_features=True)


def _encoder(encode: str) -> Any:
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if encode == "onehot":
        return OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float64)
    return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, dtype=np.float64)


def _selector(select: dict[str, Any] | None, task: str) -> Any:
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif, f_regression

    if not select:
        return "passthrough"
    if "variance" in select:
        return VarianceThreshold(threshold=float(select["variance"]))
    score = f_classif if task == "classification" else f_regression
    return SelectKBest(score_func=score, k=int(select["k_best"]))


def _scaler(scale: str) -> Any:
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    return {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}.get(
        scale, lambda: "passthrough")()


def build_pipeline(kinds: dict[str, list[str]], params: dict[str, Any], task: str,
                   columns: list[str] | None = None) -> Any:
    """The unfitted pipeline for columns of ``kinds`` (see jobs.data.column_kinds)
    and resolved prep ``params``; ``columns``: the raw feature columns in table
    order (how a plain array passed to the fitted pipeline is read)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    prepare = FramePreparer(numeric=list(kinds["numeric"]), categorical=list(kinds["categorical"]),
                            datetime=list(kinds["datetime"]), datetime_parts=bool(params["datetime_parts"]),
                            columns=list(columns) if columns is not None else None)
    outliers = params["outliers"]
    degree = params["poly_degree"]
    groups: list[tuple[str, Any, list[str]]] = []
    if prepare.numeric:
        groups.append(("num", Pipeline([
            ("outliers", OutlierClipper(outliers.split("_")[0]) if outliers.endswith("_clip") else "passthrough"),
            ("impute", _imputer(params["impute"])),
            ("poly", PolynomialFeatures(degree, include_bias=False) if degree and degree > 1 else "passthrough"),
        ]), list(prepare.numeric)))
    if prepare.date_part_columns:
        groups.append(("date", Pipeline([("impute", _imputer(params["impute"]))]), prepare.date_part_columns))
    if prepare.categorical:
        groups.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
            ("encode", _encoder(params["encode"])),
        ]), list(prepare.categorical)))
    if not groups:
        raise ValueError("no feature columns to transform (datetime columns need datetime_parts: true)")
    pca = params["pca"]
    return Pipeline([
        ("prepare", prepare),
        ("columns", ColumnTransformer(groups, remainder="drop", verbose_feature_names_out=False)),
        ("select", _selector(params["select"], task)),
        ("scale", _scaler(params["scale"])),
        ("pca", "passthrough" if not pca else PCA(
            n_components=pca, svd_solver="full" if isinstance(pca, float) else "auto",
            random_state=params["seed"])),
    ])


def fit_transform(pipeline: Any, frame: pd.DataFrame, y: np.ndarray) -> np.ndarray:
    """Fit on the training rows and transform them; sklearn's errors for
    impossible settings become ValueErrors that name the param to change."""
    try:
        return np.asarray(pipeline.fit_transform(frame, y), dtype=np.float64)
    except ValueError as exc:
        said = str(exc).splitlines()[0]
        if "NaN" in said:
            raise ValueError("impute: none leaves missing values that a later step (poly_degree, select, pca) "
                             f"cannot take; choose an impute strategy. sklearn said: {said}") from exc
        if "n_components" in said:
            raise ValueError(f"pca: too many components for this data. sklearn said: {said}") from exc
        if "k should be" in said or "threshold" in said:
            raise ValueError(f"select: {said}") from exc
        raise
