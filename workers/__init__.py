"""labq's data plane: what runs inside Ray for one job attempt.

Plain functions; ``scheduler.ray_backend`` makes them Ray tasks where it launches
them, so they can be tested without Ray.
"""
