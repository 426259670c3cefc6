"""labq's job library and the API a job uses.

    from jobs import report, current

    def main(ctx):                 # ctx: jobs.JobContext
        for epoch in range(ctx.params["epochs"]):
            ...
            ctx.report(step=epoch, loss=loss)
        return {"accuracy": acc}   # final metrics
"""

from jobs.api import JobContext, StopTrial, Upstream, current, params, report, run_dir

__all__ = ["JobContext", "StopTrial", "Upstream", "current", "params", "report", "run_dir"]
