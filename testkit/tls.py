"""Self-signed certificates for the servers' TLS ports."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading

from testkit.process import ServerError, make_tempdir, which


def make_self_signed_cert(
    directory: str, common_name: str = "localhost", name: str = "cert"
) -> tuple[str, str]:
    """Make a self-signed EC certificate for localhost/127.0.0.1; return (certfile, keyfile).

    The certificate is its own CA: pass the certfile as `cafile` to clients.
    """
    openssl = which("openssl")
    if openssl is None:
        raise ServerError("openssl is not installed (apt-get install openssl)")
    cert = os.path.join(directory, f"{name}.pem")
    key = os.path.join(directory, f"{name}.key")
    cmd = [
        openssl, "req", "-x509", "-nodes", "-days", "30",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", key, "-out", cert, "-subj", f"/CN={common_name}",
        "-addext", f"subjectAltName=DNS:{common_name},DNS:localhost,IP:127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ServerError(f"openssl req failed: {proc.stderr.strip()}")
    return cert, key


_shared_cert_lock = threading.Lock()
_shared_cert: tuple[str, str] | None = None


def shared_cert() -> tuple[str, str]:
    """A self-signed (certfile, keyfile) made once per process and removed at exit."""
    global _shared_cert
    with _shared_cert_lock:
        if _shared_cert is None:
            directory = make_tempdir("capbot-cert-")
            atexit.register(shutil.rmtree, directory, True)
            _shared_cert = make_self_signed_cert(directory)
        return _shared_cert
