"""Running the HTTP server: uvicorn over the app, loopback unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
import sys

from scheduler.errors import UserError
from scheduler.server.tokens import TokenBook


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(settings, cluster: str | None, host: str, port: int, tls_cert: str | None, tls_key: str | None,
          behind_proxy: bool = False) -> None:
    """Serve until interrupted; beyond loopback it warns without TLS, and says
    when no token exists yet (nobody could use it)."""
    import uvicorn

    from scheduler.server.app import create_app

    if bool(tls_cert) != bool(tls_key):
        raise UserError("--tls-cert and --tls-key go together: the certificate and its private key")
    if not TokenBook(settings.home_path).entries():
        print("note: no token exists yet, so every request is refused: `labq token create NAME` makes one "
              "(the server takes it at once)", file=sys.stderr)
    if not is_loopback(host):
        if not tls_cert and not behind_proxy:
            print(f"warning: serving plain HTTP on {host}: tokens cross the network in clear; give --tls-cert/"
                  "--tls-key, or put a TLS proxy in front (--proxy)", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings, cluster)
    scheme = "https" if tls_cert else "http"
    print(f"labq server on {scheme}://{host}:{port} for {settings.home_path}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, log_level="info",
                proxy_headers=behind_proxy, forwarded_allow_ips="127.0.0.1" if behind_proxy else None,
                server_header=False)
