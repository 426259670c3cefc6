"""`labq results --plot`: the main metric against each swept param, and per-step
curves when jobs reported steps.  matplotlib, headless (Agg)."""

from __future__ import annotations

from typing import Any


def plot_results(res: Any, curves: list[Any], out: str) -> None:
    """``res``: api.Results; ``curves``: api.StepCurve of some of its jobs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = res.metric
    rows = [r for r in res.rows if metric and isinstance(r["metrics"].get(metric), (int, float))]
    panels = len(res.varying_params) + (1 if curves else 0)
    if not rows or panels == 0:
        panels = 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    axes = axes[0]
    for ax, param in zip(axes, res.varying_params):
        points = [(r["params"].get(param), r["metrics"][metric]) for r in rows if param in r["params"]]
        labels = sorted({_label(x) for x, _ in points}, key=_sort_key)
        position = {label: i for i, label in enumerate(labels)}
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
        xs = [x if numeric else position[_label(x)] for x, _ in points]
        ax.scatter(xs, [y for _, y in points], alpha=0.8)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        if numeric and len({x for x in xs}) > 2 and min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    if curves:
        ax = axes[len(res.varying_params)]
        shown = sorted(curves, key=lambda c: c.pruned)[:20] if len(curves) > 20 else curves
        for curve in shown:
            line, = ax.plot(curve.steps, curve.values, label=f"job {curve.job_id}" + (" (pruned)" if curve.pruned else ""),
                            alpha=0.45 if curve.pruned else 1.0, linewidth=1.0 if curve.pruned else 1.6)
            if curve.pruned and curve.steps:  # where early stopping ended it
                ax.scatter([curve.steps[-1]], [curve.values[-1]], marker="x", color=line.get_color(), zorder=3)
        ax.set_xlabel("step" + ("   (x: pruned)" if any(c.pruned for c in shown) else ""))
        ax.set_ylabel(curves[0].metric)
        ax.grid(alpha=0.3)
        if len(curves) <= 10:
            ax.legend(fontsize=7)
    if not res.varying_params and not curves:
        axes[0].bar([str(r["job_id"]) for r in rows], [r["metrics"][metric] for r in rows])
        axes[0].set_xlabel("job")
        axes[0].set_ylabel(metric or "")
    fig.suptitle(f"{res.experiment}: {metric or 'no metric'}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _label(value: Any) -> str:
    return "null" if value is None else str(value)


def _sort_key(label: str) -> tuple:
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)
