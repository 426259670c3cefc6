"""labq's control plane: the spec, the durable queue, the policy, the loop and the CLI.

Only ``scheduler.store`` talks SQL and only ``scheduler.ray_backend`` talks to Ray;
everything else works on plain records so tests and the simulator can drive it.
"""

__version__ = "0.1.0"

# Where state lives unless LABQ_HOME or cluster.yaml says otherwise.
DEFAULT_HOME = "~/.labq"
# Defaults of scheduler.config that the CLI also needs without a cluster file,
# here so it does not load pydantic for them: the queue every job goes to, and
# how fast past usage fades in fair share (scheduler.usage_half_life, seconds).
DEFAULT_QUEUE = "default"
DEFAULT_USAGE_HALF_LIFE = 7 * 86400.0
