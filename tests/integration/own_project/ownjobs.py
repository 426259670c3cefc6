"""A Python job (a callable) that works in its cwd, as scripts do."""

import time
from pathlib import Path


def write_here(ctx):
    tag = ctx.params["tag"]
    Path("out.txt").write_text(tag)  # relative to the cwd: the attempt's own copy
    config = Path("configs/digits.yaml").read_text()
    time.sleep(1.0)
    return {"read_back_ok": float(Path("out.txt").read_text() == tag), "config_found": float("C:" in config)}
