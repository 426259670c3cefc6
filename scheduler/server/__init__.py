"""`labq server`: labq's HTTP API and dashboard on the head.

- ``app``: the API routes, each over a ``scheduler.api`` verb
- ``auth`` and ``tokens``: who is calling (a token per labq user, kept hashed)
- ``uploads``: packing a spec's directory and unpacking it safely
- ``pages``: the dashboard
- ``serve``: uvicorn, loopback unless told otherwise
"""
