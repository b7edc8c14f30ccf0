"""A throwaway nginx reverse proxy on loopback, in front of several upstream ports.

`Nginx([port_a, port_b]).start()` writes a config of its own in a temp dir (nothing in /etc),
runs `nginx -p DIR -c nginx.conf` in the foreground as a child process, and balances the
requests round-robin over the upstreams. A dead upstream (connection refused, reset, 502) is
skipped for `fail_timeout` seconds; a request it refused before reading is passed to the next
one, as in production. Its access log keeps, per request, the upstream that answered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter

from testkit.ports import LOOPBACK, free_port
from testkit.process import ServerError, tail, which

CONFIG = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    log_format upstream '$upstream_addr $status $request_time';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    upstream replicas {{
{servers}
        keepalive 16;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


class Nginx:
    """nginx balancing `upstreams` (ports on loopback) from `port` (a free one by default)."""

    def __init__(self, upstreams: list[int], *, host: str = LOOPBACK, port: int = 0,
                 fail_timeout: float = 5.0) -> None:
        self.upstreams = upstreams
        self.host = host
        self.port = port
        self.fail_timeout = fail_timeout
        self.directory = ""
        self._process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing() -> str | None:
        if which("nginx") is None:
            return "nginx is not installed (apt-get install nginx-light)"
        return None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> str:
        servers = "\n".join(
            f"        server {self.host}:{p} max_fails=1 fail_timeout={self.fail_timeout:g}s;"
            for p in self.upstreams)
        # As root the workers run as nobody; otherwise as the current user.
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        return CONFIG.format(dir=self.directory, user=user, servers=servers, host=self.host,
                             port=self.port)

    def start(self, timeout: float = 10.0) -> Nginx:
        import tempfile

        program = which("nginx")
        if program is None:
            raise ServerError("nginx is not installed")
        self.directory = tempfile.mkdtemp(prefix="capbot-nginx-")
        os.chmod(self.directory, 0o755)
        os.makedirs(os.path.join(self.directory, "tmp"), mode=0o777)
        os.chmod(os.path.join(self.directory, "tmp"), 0o777)
        self.port = self.port or free_port(self.host)
        path = os.path.join(self.directory, "nginx.conf")
        with open(path, "w") as f:
            f.write(self.config())
        self._process = subprocess.Popen(
            [program, "-p", self.directory, "-c", path, "-e",
             os.path.join(self.directory, "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        import socket

        while True:
            if self._process.poll() is not None:
                raise ServerError(f"nginx exited ({self._process.returncode}):\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port),
                                                                        0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nginx did not listen in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # fast shutdown of master and worker
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        return tail(os.path.join(self.directory, "error.log"), lines)

    def answered_by(self) -> Counter[str]:
        """Requests per upstream that answered them (the access log's upstream address; a
        request tried on two shows as 'a, b', counted for the last)."""
        counts: Counter[str] = Counter()
        with contextlib.suppress(FileNotFoundError), open(
                os.path.join(self.directory, "access.log")) as f:
            for line in f:
                upstream = line.rsplit(" ", 2)[0]  # "$upstream_addr $status $time"
                counts[upstream.rsplit(",", 1)[-1].strip()] += 1
        return counts
