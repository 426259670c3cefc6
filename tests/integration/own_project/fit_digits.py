"""A plain scikit-learn script that knows nothing of labq: reads its settings
from configs/, fits on the digits data bundled with scikit-learn, saves the
model, reads it back, and writes results/metrics.json."""

import json
import os
import sys

import joblib
import yaml
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

with open("configs/digits.yaml", encoding="utf-8") as f:
    config = yaml.safe_load(f)
C = float(sys.argv[1]) if len(sys.argv) > 1 else config["C"]
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
joblib.dump(LogisticRegression(C=C, max_iter=200).fit(X_train, y_train), "model.joblib")
model = joblib.load("model.joblib")
os.makedirs("results", exist_ok=True)
with open("results/metrics.json", "w", encoding="utf-8") as f:
    json.dump({"accuracy": model.score(X_test, y_test), "C": C}, f)
# A script that tidies up after itself: its config goes (only in its own copy).
os.remove("configs/digits.yaml")
