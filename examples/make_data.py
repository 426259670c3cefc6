"""Generate examples/data/customers.csv, the small churn table that
examples/tabular_csv.yaml prepares and trains on.

    python examples/make_data.py

Deterministic (fixed numpy seed): rerunning gives the same bytes.  The table
is deliberately a little dirty, to exercise jobs.prep: missing values in the
numeric columns and in `plan`, a few gross outliers in `monthly_charges`, a
handful of duplicate rows, a constant column (`country`) and an ISO date
column (`signup_date`).  `churned` (0/1) depends on tenure, support calls,
plan, charges and signup date, so a model does clearly better than chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SEED = 7
ROWS = 600
DUPLICATES = 6
OUT = Path(__file__).resolve().parent / "data" / "customers.csv"


def make(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(float)
    tenure = rng.integers(0, 73, rows).astype(float)
    plan = rng.choice(["basic", "pro", "enterprise"], rows, p=[0.5, 0.35, 0.15])
    base = {"basic": 30.0, "pro": 70.0, "enterprise": 120.0}
    charges = np.round(np.array([base[p] for p in plan]) + rng.normal(0, 12, rows), 2)
    calls = rng.poisson(2.0, rows).astype(float)
    region = rng.choice(["north", "south", "east", "west"], rows)
    days = rng.integers(0, 6 * 365, rows)
    signup = pd.Timestamp("2018-01-01") + pd.to_timedelta(days, unit="D")

    plan_effect = np.array([{"basic": 0.8, "pro": 0.0, "enterprise": -1.0}[p] for p in plan])
    logit = 1.6 * (-0.05 * (tenure - 36) + 0.55 * (calls - 2) + plan_effect
             + 0.012 * (charges - 60) + 0.0006 * (days - 3 * 365) - 0.4)
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)

    frame = pd.DataFrame({
        "age": age,
        "tenure_months": tenure,
        "monthly_charges": charges,
        "support_calls": calls,
        "plan": plan.astype(object),
        "region": region,
        "country": "US",
        "signup_date": signup.strftime("%Y-%m-%d"),
        "churned": churned,
    })
    # Dirt: missing values, gross outliers (a data-entry slip: cents as dollars), duplicates.
    for column, share in (("age", 0.06), ("monthly_charges", 0.04), ("support_calls", 0.03), ("plan", 0.02)):
        frame.loc[rng.random(rows) < share, column] = np.nan
    outliers = rng.choice(rows, 5, replace=False)
    frame.loc[outliers, "monthly_charges"] = frame.loc[outliers, "monthly_charges"].fillna(50) * 100
    frame = pd.concat([frame, frame.iloc[rng.choice(rows, DUPLICATES, replace=False)]], ignore_index=True)
    return frame


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    make().to_csv(OUT, index=False, float_format="%.2f", lineterminator="\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
