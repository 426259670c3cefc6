"""`labq server --tls-cert/--tls-key` serves HTTPS, and `labq --server
https://...` checks the server's certificate (LABQ_CA_FILE for a private CA).
No scheduler is needed: an empty queue is enough to see the transport."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.helpers import free_port
from tests.server.conftest import REPO



def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_with_a_given_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABQ_", "RAY_"))}
    env["LABQ_HOME"] = str(home)
    labq = [sys.executable, "-m", "scheduler.cli"]
    token = subprocess.run([*labq, "token", "create", "alice"], capture_output=True, text=True, env=env,
                           cwd=REPO).stdout.strip()
    port = free_port()
    server = subprocess.Popen([*labq, "server", "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                              env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = {**{k: v for k, v in env.items() if k != "LABQ_HOME"}, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            untrusted = subprocess.run([*labq, "login", url, "--token", token], capture_output=True, text=True,
                                       env=client, cwd=tmp_path)
            if "Connection refused" not in untrusted.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, untrusted.stderr
        trusted = {**client, "LABQ_CA_FILE": str(cert)}
        login = subprocess.run([*labq, "login", url, "--token", token], capture_output=True, text=True,
                               env=trusted, cwd=tmp_path)
        assert login.returncode == 0 and "as alice" in login.stdout, login.stderr
        queue = subprocess.run([*labq, "--server", url, "queue", "--json"], capture_output=True, text=True,
                               env=trusted, cwd=tmp_path)
        assert queue.returncode == 0 and queue.stdout.strip() == "[]", queue.stderr
        plain = subprocess.run([*labq, "--server", f"http://127.0.0.1:{port}", "queue"], capture_output=True,
                               text=True, env={**trusted, "LABQ_TOKEN": token}, cwd=tmp_path)
        assert plain.returncode == 3  # plain HTTP to a TLS port gets nowhere
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_tls_needs_both_halves(tmp_path):
    cert, _ = _self_signed(tmp_path)
    env = {**os.environ, "LABQ_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-m", "scheduler.cli", "server", "--tls-cert", str(cert)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: --tls-cert and --tls-key go together")
