"""labq's control plane: the spec, the durable queue, the policy, the loop and the CLI.

Only ``scheduler.store`` talks SQL and only ``scheduler.ray_backend`` talks to Ray;
everything else works on plain records so tests and the simulator can drive it.
"""

__version__ = "0.1.0"

# Where state lives unless LABQ_HOME or cluster.yaml says otherwise.
DEFAULT_HOME = "~/.labq"
