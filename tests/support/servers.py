"""Throwaway Dovecot, PostgreSQL and SMTP servers for tests and benchmark scripts."""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import email
import email.policy
import glob
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, NoReturn

__all__ = [
    "CapturedMessage",
    "Dovecot",
    "ImapSettings",
    "Postgres",
    "ServerError",
    "SmtpCapture",
    "free_port",
    "free_ports",
    "imap_quote",
    "imap_utf7",
    "in_ci",
    "make_self_signed_cert",
    "require_or_skip",
    "shared_cert",
    "skip_or_fail",
]

LOOPBACK = "127.0.0.1"
_SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"]
)


class ServerError(RuntimeError):
    """A test server could not be started or driven (the message carries its log tail)."""


# --------------------------------------------------------------------------- generic helpers


def in_ci() -> bool:
    """True when the environment variable CI says we run under continuous integration."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test, or fail it when CI=true (a missing server is an error in CI)."""
    import pytest  # imported lazily: this module is also used outside pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test that needs this server must not skip)")
    pytest.skip(reason)


def require_or_skip(what: str | bool | None, reason: str) -> None:
    """Skip (locally) or fail (CI=true) unless `what` is available.

    `what` is either a program name looked up on PATH plus the sbin directories, or a
    condition (truthy means available).
    """
    available = _which(what) is not None if isinstance(what, str) else bool(what)
    if not available:
        skip_or_fail(reason)


def _which(program: str) -> str | None:
    if os.path.isabs(program):
        return program if os.access(program, os.X_OK) else None
    return shutil.which(program, path=_SBIN_PATH)


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return `count` distinct TCP ports that are free on `host` right now."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on `host` right now."""
    return free_ports(1, host)[0]


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return f"(no file {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _mkdtemp(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)  # Dovecot's unprivileged processes must traverse it
    return path


def make_self_signed_cert(
    directory: str, common_name: str = "localhost", name: str = "cert"
) -> tuple[str, str]:
    """Make a self-signed EC certificate for localhost/127.0.0.1; return (certfile, keyfile).

    The certificate is its own CA: pass the certfile as `cafile` to clients.
    """
    openssl = _which("openssl")
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
            directory = _mkdtemp("capbot-cert-")
            atexit.register(shutil.rmtree, directory, True)
            _shared_cert = make_self_signed_cert(directory)
        return _shared_cert


# Servers a script forgot to stop are stopped at interpreter exit.
_live: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            (getattr(server, "stop_sync", None) or server.stop)()


# --------------------------------------------------------------------------- IMAP helpers


def imap_utf7(name: str) -> str:
    """Encode a mailbox name in IMAP modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def imap_quote(name: str) -> str:
    """Quote (and modified-UTF-7 encode) a mailbox name for an IMAP command."""
    encoded = imap_utf7(name)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UID_RE = re.compile(rb"UID (\d+)")
_FLAGS_RE = re.compile(rb"FLAGS \(([^)]*)\)")


@dataclass(frozen=True)
class ImapSettings:
    """How to reach the test Dovecot as the bot user (what the `imap_server` fixture returns)."""

    host: str
    port: int
    ssl_port: int
    lmtp_port: int
    user: str
    password: str
    cafile: str
    domain: str
    address: str
    server: Dovecot = field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts the server's self-signed certificate."""
        return ssl.create_default_context(cafile=self.cafile)


# --------------------------------------------------------------------------- Dovecot

_DOVECOT_CONF = """\
# Throwaway test instance made by tests/support/servers.py
instance_name = {instance}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
auth_verbose = yes
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8 ::1/128
hostname = localhost
postmaster_address = postmaster@{domain}

listen = {host}
protocols = imap lmtp
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no

mail_location = maildir:~/Maildir
mail_fsync = never
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_max_userip_connections = 1000
{internal}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {dir}/users/%n
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {dir}/users/%n
}}
namespace inbox {{
  inbox = yes
{separator}}}

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
{chroot}}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
service anvil {{
  # No auth penalty: after one failed login (a test of bad passwords) every later
  # login from 127.0.0.1 would otherwise be delayed by seconds.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
{chroot}}}
service ipc {{
{chroot}}}
"""


class Dovecot:
    """A throwaway Dovecot (IMAP, IMAPS, LMTP; maildir; passwd-file users) in a temp dir.

    Usage: ``d = Dovecot(); d.start(); ...; d.stop()`` or ``with Dovecot() as d: ...``.
    The user ``bot`` exists from the start; ``add_user()`` adds more (Dovecot re-reads the
    users file by itself). Logins use the bare user name (``bot``); mail to
    ``bot+anything@<domain>`` via LMTP lands in bot's INBOX.
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        domain: str = "example.org",
        bot_user: str = "bot",
        bot_password: str = "bot-secret",
        separator: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.domain = domain
        self.bot_user = bot_user
        self.bot_password = bot_password
        self.separator = separator
        self.start_timeout = start_timeout
        self.users: dict[str, str] = {}
        self.imap_port = 0
        self.imaps_port = 0
        self.lmtp_port = 0
        self.directory = ""
        self.config_path = ""
        self.log_path = ""
        self.cafile = ""
        self.keyfile = ""
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._root = os.geteuid() == 0
        self._uid, self._gid = self._mail_ids()

    # -- availability -------------------------------------------------------------------

    @staticmethod
    def missing() -> str | None:
        """None when Dovecot can run here, else a reason naming what to install."""
        need = {
            "dovecot": "dovecot-core",
            "doveadm": "dovecot-core",
            "/usr/lib/dovecot/imap": "dovecot-imapd",
            "/usr/lib/dovecot/lmtp": "dovecot-lmtpd",
            "openssl": "openssl",
        }
        lacking = sorted({pkg for prog, pkg in need.items() if _which(prog) is None})
        if lacking:
            return "Dovecot is not installed (apt-get install " + " ".join(lacking) + ")"
        return None

    # -- properties ---------------------------------------------------------------------

    @property
    def password(self) -> str:
        """The bot user's password."""
        return self.users.get(self.bot_user, self.bot_password)

    @property
    def passwords(self) -> dict[str, str]:
        """Alias of `users` (user name -> password)."""
        return self.users

    @property
    def pid(self) -> int | None:
        """The master process id while running."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def address(self, user: str | None = None, detail: str | None = None) -> str:
        """The mail address of `user` (default bot), with an optional +detail."""
        local = user or self.bot_user
        if detail:
            local = f"{local}+{detail}"
        return f"{local}@{self.domain}"

    def settings(self, user: str | None = None) -> ImapSettings:
        """Connection settings for `user` (default: the bot user)."""
        user = user or self.bot_user
        return ImapSettings(
            host=self.host,
            port=self.imap_port,
            ssl_port=self.imaps_port,
            lmtp_port=self.lmtp_port,
            user=user,
            password=self.users[user],
            cafile=self.cafile,
            domain=self.domain,
            address=self.address(user),
            server=self,
        )

    # -- life cycle -----------------------------------------------------------------------

    def _mail_ids(self) -> tuple[int, int]:
        if not self._root:
            return os.getuid(), os.getgid()
        try:
            nobody = pwd.getpwnam("nobody")
            return nobody.pw_uid, nobody.pw_gid
        except KeyError:
            return 5000, 5000

    def _write_config(self) -> None:
        if self._root:
            internal = ""
            chroot = ""
        else:
            me = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            internal = (
                f"default_internal_user = {me}\n"
                f"default_internal_group = {group}\n"
                f"default_login_user = {me}\n"
            )
            chroot = "  chroot =\n"
        separator = f"  separator = {self.separator}\n" if self.separator else ""
        conf = _DOVECOT_CONF.format(
            instance=os.path.basename(self.directory),
            dir=self.directory,
            domain=self.domain,
            host=self.host,
            cert=self.cafile,
            key=self.keyfile,
            uid=self._uid,
            gid=self._gid,
            internal=internal,
            separator=separator,
            imap_port=self.imap_port,
            imaps_port=self.imaps_port,
            lmtp_port=self.lmtp_port,
            chroot=chroot,
        )
        with open(self.config_path, "w") as f:
            f.write(conf)

    def _write_user(self, user: str) -> None:
        # One passwd-file per user (the path has %n): a user added while Dovecot runs is
        # found at once, whereas a shared file is re-read at most once per second.
        users_dir = os.path.join(self.directory, "users")
        path = os.path.join(users_dir, user)
        home = os.path.join(self.directory, "home", user)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{user}:{{PLAIN}}{self.users[user]}:{self._uid}:{self._gid}::{home}::\n")
        if self._root:
            # Dovecot's auth process runs as user dovecot: it must read the file.
            with contextlib.suppress(KeyError, OSError):
                os.chown(tmp, 0, grp.getgrnam("dovecot").gr_gid)
            os.chmod(tmp, 0o640)
        os.replace(tmp, path)

    def _make_home(self, user: str) -> None:
        home = os.path.join(self.directory, "home", user)
        os.makedirs(home, exist_ok=True)
        if self._root:
            os.chown(home, self._uid, self._gid)

    def add_user(self, user: str, password: str | None = None) -> str:
        """Add (or re-password) a mail user; return the password. Works while running."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", user):
            raise ValueError(f"unsupported user name {user!r}")
        password = password or f"{user}-secret"
        if ":" in password:
            raise ValueError("password must not contain ':'")
        self.users[user] = password
        if self.directory:
            self._make_home(user)
            self._write_user(user)
        return password

    def start(self) -> Dovecot:
        """Start Dovecot and wait for its IMAP banner; raise ServerError with the log tail."""
        reason = self.missing()
        if reason:
            raise ServerError(reason)
        if self._proc is not None:
            raise ServerError("Dovecot already started")
        t0 = time.monotonic()
        self.directory = _mkdtemp("capbot-dovecot-")
        self.config_path = os.path.join(self.directory, "dovecot.conf")
        self.log_path = os.path.join(self.directory, "dovecot.log")
        for sub in ("run", "state", "home", "users"):
            os.makedirs(os.path.join(self.directory, sub))
            os.chmod(os.path.join(self.directory, sub), 0o755)
        self.cafile, self.keyfile = make_self_signed_cert(self.directory)
        self.users.setdefault(self.bot_user, self.bot_password)
        for user in self.users:
            self._make_home(user)
            self._write_user(user)
        last_error = ""
        for _attempt in range(3):
            self.imap_port, self.imaps_port, self.lmtp_port = free_ports(3, self.host)
            self._write_config()
            try:
                self._launch()
            except ServerError as exc:
                last_error = str(exc)
                if "in use" in last_error:
                    continue  # a port was taken in the meantime: try fresh ones
                self._cleanup_failed()
                raise
            self.startup_seconds = time.monotonic() - t0
            _live.add(self)
            return self
        self._cleanup_failed()
        raise ServerError(last_error)

    def _launch(self) -> None:
        dovecot = _which("dovecot")
        assert dovecot is not None
        stderr_path = os.path.join(self.directory, "stderr.log")
        with open(stderr_path, "wb") as err:
            self._proc = subprocess.Popen(
                [dovecot, "-F", "-c", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # own process group: stop() kills all of it
                cwd=self.directory,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                with socket.create_connection((self.host, self.imap_port), timeout=1) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    banner = s.recv(512)
                if banner.startswith(b"* OK"):
                    return
            time.sleep(0.02)
        self._kill()
        log = _tail(stderr_path) + "\n" + _tail(self.log_path)
        raise ServerError(
            f"Dovecot did not show an IMAP banner on {self.host}:{self.imap_port} within "
            f"{self.start_timeout}s (config {self.config_path}); log tail:\n{log}"
        )

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        # The master is our unreaped child, so its pid still names its process group:
        # kill the whole group at once (no waiting for lingering imap processes).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self._proc = None

    def _cleanup_failed(self) -> None:
        self._kill()
        if self.directory and not os.environ.get("CAPBOT_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        """Kill Dovecot (master and children) and remove its directory. Idempotent."""
        _live.discard(self)
        self._kill()
        if self.directory and not os.environ.get("CAPBOT_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Dovecot's log."""
        return _tail(self.log_path, lines)

    # -- doveadm --------------------------------------------------------------------------

    def doveadm(self, *args: str, check: bool = True) -> str:
        """Run `doveadm -c CONFIG ARGS...` and return its stdout."""
        doveadm = _which("doveadm")
        assert doveadm is not None
        proc = subprocess.run(
            [doveadm, "-c", self.config_path, *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.directory,
        )
        if check and proc.returncode != 0:
            raise ServerError(
                f"doveadm {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
                f"\nlog tail:\n{self.log_tail(10)}"
            )
        return proc.stdout

    def _maildir_state(self, user: str) -> tuple[bool, bool]:
        """(has folders besides INBOX, INBOX has messages), read from the maildir itself."""
        maildir = os.path.join(self.directory, "home", user, "Maildir")
        try:
            with os.scandir(maildir) as entries:
                folders = any(e.name.startswith(".") and e.is_dir() for e in entries)
        except FileNotFoundError:
            return False, False
        has_mail = False
        for sub in ("cur", "new"):
            with (
                contextlib.suppress(FileNotFoundError),
                os.scandir(os.path.join(maildir, sub)) as it,
            ):
                if any(True for _ in it):
                    has_mail = True
        return folders, has_mail

    def reset(self) -> None:
        """Empty every user's mail: delete all mailboxes but INBOX and expunge INBOX.

        Users whose maildir is already empty cost nothing (no doveadm call).
        """
        for user in self.users:
            folders, has_mail = self._maildir_state(user)
            if folders:
                extra = [b for b in self.list_mailboxes(user) if b != "INBOX"]
                # Children first; an implicit parent (A of A.B) may vanish with its child.
                extra.sort(key=len, reverse=True)
                if extra:
                    self.doveadm("mailbox", "delete", "-u", user, "-s", *extra, check=False)
                left = [b for b in self.list_mailboxes(user) if b != "INBOX"]
                if left:
                    raise ServerError(f"reset: could not delete {left!r} of {user}")
            if has_mail:
                self.doveadm("expunge", "-u", user, "mailbox", "INBOX", "all")

    # -- IMAP (stdlib imaplib, synchronous) ---------------------------------------------

    @contextlib.contextmanager
    def imap(self, user: str | None = None) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib imaplib connection (plain IMAP) as `user` (default bot)."""
        user = user or self.bot_user
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def create_mailbox(self, user: str | None, name: str) -> None:
        """Create mailbox `name` (any Unicode name) for `user`."""
        with self.imap(user) as c:
            typ, data = c.create(imap_quote(name))
            if typ != "OK":
                raise ServerError(f"CREATE {name!r} failed: {data!r}")

    def list_mailboxes(self, user: str | None = None) -> list[str]:
        """Mailbox names of `user` (as doveadm prints them, i.e. decoded UTF-8)."""
        out = self.doveadm("mailbox", "list", "-u", user or self.bot_user)
        return [line for line in out.splitlines() if line]

    def append(
        self,
        user: str | None,
        raw: bytes,
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
    ) -> int:
        """APPEND one message; return its UID."""
        return self.append_many(user, [raw], mailbox, flags)[0]

    def append_many(
        self,
        user: str | None,
        messages: Iterable[bytes],
        mailbox: str = "INBOX",
        flags: Iterable[str] = (),
    ) -> list[int]:
        """APPEND many messages over one connection; return their UIDs."""
        flag_arg = "(" + " ".join(flags) + ")" if flags else None
        uids: list[int] = []
        with self.imap(user) as c:
            for raw in messages:
                typ, data = c.append(imap_quote(mailbox), flag_arg, None, raw)
                if typ != "OK":
                    raise ServerError(f"APPEND to {mailbox!r} failed: {data!r}")
                m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
                uids.append(int(m.group(1)) if m else -1)
        return uids

    def _select(self, c: imaplib.IMAP4, mailbox: str) -> None:
        typ, data = c.select(imap_quote(mailbox), readonly=True)
        if typ != "OK":
            raise ServerError(f"SELECT {mailbox!r} failed: {data!r}")

    def list_uids(self, user: str | None = None, mailbox: str = "INBOX") -> list[int]:
        """UIDs of the messages in `mailbox`, ascending."""
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("SEARCH", "ALL")
            if typ != "OK":
                raise ServerError(f"UID SEARCH failed: {data!r}")
            return sorted(int(x) for x in (data[0] or b"").split())

    def fetch_messages(self, user: str | None = None, mailbox: str = "INBOX") -> dict[int, bytes]:
        """{uid: raw bytes} of every message in `mailbox` (does not set \\Seen)."""
        result: dict[int, bytes] = {}
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
            if typ != "OK":
                raise ServerError(f"UID FETCH failed: {data!r}")
            for item in data:
                if isinstance(item, tuple):
                    m = _UID_RE.search(item[0])
                    if m:
                        result[int(m.group(1))] = bytes(item[1])
        return dict(sorted(result.items()))

    def fetch_all(self, user: str | None = None, mailbox: str = "INBOX") -> list[bytes]:
        """Raw bytes of every message in `mailbox`, in UID order (does not set \\Seen)."""
        return list(self.fetch_messages(user, mailbox).values())

    def fetch_parsed(self, user: str | None = None, mailbox: str = "INBOX") -> list[EmailMessage]:
        """Every message in `mailbox` parsed with email.policy.default, in UID order."""
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for raw in self.fetch_all(user, mailbox)
        ]

    def flags(self, user: str | None = None, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """{uid: set of flags} for every message in `mailbox`."""
        result: dict[int, set[str]] = {}
        with self.imap(user) as c:
            self._select(c, mailbox)
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
            if typ != "OK":
                raise ServerError(f"UID FETCH failed: {data!r}")
            for item in data:
                line = item[0] if isinstance(item, tuple) else item
                if not isinstance(line, bytes):
                    continue
                u, f = _UID_RE.search(line), _FLAGS_RE.search(line)
                if u and f:
                    result[int(u.group(1))] = set(f.group(1).decode().split())
        return result

    # -- LMTP -----------------------------------------------------------------------------

    def deliver(
        self,
        recipients: str | Iterable[str],
        raw: bytes,
        mail_from: str = "sender@example.net",
    ) -> None:
        """Deliver `raw` through LMTP (adds Return-Path and Delivered-To), one
        transaction per recipient. A bare user name gets @domain appended."""
        if isinstance(recipients, str):
            recipients = [recipients]
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as lmtp:
            for rcpt in recipients:
                if "@" not in rcpt:
                    rcpt = f"{rcpt}@{self.domain}"
                refused = lmtp.sendmail(mail_from, [rcpt], raw)
                if refused:
                    raise ServerError(f"LMTP refused {refused!r}")


# --------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throwaway PostgreSQL cluster (trust auth, fsync off) in a temp dir.

    Usage: ``pg = Postgres(); pg.start(); pg.create_database("x"); pg.url("x"); pg.stop()``.
    As root it runs as the `postgres` system user (via runuser).
    """

    def __init__(self, *, host: str = LOOPBACK, user: str = "postgres") -> None:
        self.host = host
        self.user = user
        self.port = 0
        self.directory = ""
        self.data_dir = ""
        self.log_path = ""
        self.bindir = self.find_bindir() or ""
        self.startup_seconds = 0.0
        self.initdb_seconds = 0.0
        self._running = False
        self._root = os.geteuid() == 0

    @staticmethod
    def find_bindir() -> str | None:
        """The newest /usr/lib/postgresql/*/bin that has initdb (or PATH's), else None."""

        def version(path: str) -> tuple[int, ...]:
            v = path.split("/")[-2]
            return tuple(int(p) for p in v.split(".") if p.isdigit())

        dirs = [
            d
            for d in glob.glob("/usr/lib/postgresql/*/bin")
            if os.access(os.path.join(d, "initdb"), os.X_OK)
        ]
        if dirs:
            return max(dirs, key=version)
        initdb = shutil.which("initdb")
        return os.path.dirname(initdb) if initdb else None

    @property
    def major_version(self) -> int:
        """Major version from the bin dir path (/usr/lib/postgresql/15/bin -> 15), else 0."""
        part = self.bindir.rstrip("/").split("/")[-2] if self.bindir.count("/") >= 2 else ""
        return int(part) if part.isdigit() else 0

    @classmethod
    def missing(cls) -> str | None:
        """None when PostgreSQL can run here, else a reason naming what to install."""
        bindir = cls.find_bindir()
        if bindir is None:
            return "PostgreSQL is not installed (apt-get install postgresql)"
        for prog in ("pg_ctl", "postgres", "psql"):
            if not os.access(os.path.join(bindir, prog), os.X_OK):
                return f"PostgreSQL in {bindir} lacks {prog} (apt-get install postgresql)"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root but there is no 'postgres' system user"
            if _which("runuser") is None:
                return "running as root but runuser is missing (util-linux)"
        return None

    def _run_as_owner(self, args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        cmd = ["runuser", "-u", "postgres", "--", *args] if self._root else args
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env.pop("PGDATA", None)
        return subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.directory, env=env, **kw
        )

    def start(self, timeout: float = 60.0) -> Postgres:
        """initdb + start the cluster; raise ServerError with the log tail on failure."""
        reason = self.missing()
        if reason:
            raise ServerError(reason)
        if self._running:
            raise ServerError("PostgreSQL already started")
        t0 = time.monotonic()
        self.directory = tempfile.mkdtemp(prefix="capbot-pg-")
        self.data_dir = os.path.join(self.directory, "data")
        self.log_path = os.path.join(self.directory, "postgres.log")
        if self._root:
            pg = pwd.getpwnam("postgres")
            os.chown(self.directory, pg.pw_uid, pg.pw_gid)
        os.chmod(self.directory, 0o700)
        bin_ = self.bindir
        proc = self._run_as_owner(
            [f"{bin_}/initdb", "-D", self.data_dir, "-U", self.user, "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
            timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            self._remove_dir()
            raise ServerError(f"initdb failed: {proc.stdout}\n{proc.stderr}")
        self.initdb_seconds = time.monotonic() - t0
        error = ""
        for _attempt in range(3):
            self.port = free_port(self.host)
            opts = (
                f"-p {self.port} -k {self.directory} -c listen_addresses={self.host} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            proc = self._run_as_owner(
                [f"{bin_}/pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-w",
                 "-t", str(int(timeout)), "-o", opts, "start"],
                timeout=timeout + 10,
            )  # fmt: skip
            if proc.returncode == 0:
                self._running = True
                _live.add(self)
                self.startup_seconds = time.monotonic() - t0
                return self
            error = f"pg_ctl start failed: {proc.stdout}\n{proc.stderr}\n{_tail(self.log_path)}"
            if "already in use" not in error:
                break
        self._remove_dir()
        raise ServerError(error)

    def _remove_dir(self) -> None:
        if self.directory and not os.environ.get("CAPBOT_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def stop(self) -> None:
        """Stop immediately (no checkpoint) and remove the cluster. Idempotent."""
        _live.discard(self)
        if self._running:
            self._running = False
            proc = self._run_as_owner(
                [f"{self.bindir}/pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop"],
                timeout=60,
            )
            if proc.returncode != 0:
                self._kill_postmaster()
        self._remove_dir()

    def _kill_postmaster(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        return _tail(self.log_path, lines)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy async URL: postgresql+asyncpg://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq/asyncpg DSN: postgresql://postgres@127.0.0.1:PORT/dbname."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql (as the superuser, over TCP); return its output."""
        proc = subprocess.run(
            [f"{self.bindir}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname, "-c", sql],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            raise ServerError(f"psql failed for {sql!r}: {proc.stderr.strip()}")
        return proc.stdout

    @staticmethod
    def _ident(name: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
            raise ValueError(f"unsupported database name {name!r}")
        return f'"{name}"'

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE `name` (optionally from `template`); return its SQLAlchemy URL."""
        sql = f"CREATE DATABASE {self._ident(name)}"
        if template:
            sql += f" TEMPLATE {self._ident(template)}"
        if self.major_version >= 15:
            sql += " STRATEGY FILE_COPY"  # ~55 ms instead of ~75 ms with fsync off
        self.psql(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS `name`, terminating its connections."""
        self.psql(f"DROP DATABASE IF EXISTS {self._ident(name)} WITH (FORCE)")


# --------------------------------------------------------------------------- SMTP capture


@dataclass
class CapturedMessage:
    """One message received by SmtpCapture."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    auth_login: str | None = None
    tls: bool = False

    @property
    def message(self) -> EmailMessage:
        """The message parsed with email.policy.default."""
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class _CaptureHandler:
    def __init__(self, owner: SmtpCapture) -> None:
        self.owner = owner

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.owner.reject_recipients:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.owner.accept_delay:  # a busy MTA: the message is stored just before "250"
            await asyncio.sleep(self.owner.accept_delay)
        auth = session.auth_data
        if isinstance(auth, bytes):
            auth = auth.decode("utf-8", "replace")
        msg = CapturedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(envelope.original_content),
            auth_login=auth if isinstance(auth, str) else None,
            tls=session.ssl is not None,
        )
        with self.owner._lock:
            self.owner.messages.append(msg)
        return "250 Message accepted for delivery"


class SmtpCapture:
    """An aiosmtpd server on loopback that keeps every message it receives.

    Async: ``cap = SmtpCapture(starttls=True); await cap.start(); ...; await cap.stop()``
    (or ``async with``), served on the running loop. Sync code: ``cap.start_threaded()`` /
    ``cap.stop_threaded()`` (or ``with``), served by aiosmtpd's Controller thread.
    With TLS (starttls/implicit_tls), give clients ``cap.cafile``. With ``auth={user: pw}``
    AUTH PLAIN/LOGIN is offered (and required unless ``auth_required=False``).
    """

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        starttls: bool = False,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        auth: dict[str, str] | None = None,
        auth_required: bool = True,
        auth_require_tls: bool | None = None,
        reject_recipients: Iterable[str] = (),
        hostname: str = "smtp.test",
        accept_delay: float = 0.0,
    ) -> None:
        self.accept_delay = accept_delay
        self.host = host
        self.port = port or 0
        self.starttls = starttls or require_starttls
        self.require_starttls = require_starttls
        self.implicit_tls = implicit_tls
        self.auth = dict(auth) if auth else None
        self.auth_required = auth_required and bool(auth)
        # Default: AUTH needs TLS only when TLS is offered at all.
        self.auth_require_tls = auth_require_tls if auth_require_tls is not None else self.starttls
        self.reject_recipients = {r.lower() for r in reject_recipients}
        self.hostname = hostname
        self.messages: list[CapturedMessage] = []
        self.cafile: str | None = None
        self.keyfile: str | None = None
        self._lock = threading.Lock()
        self._handler = _CaptureHandler(self)
        self._server: asyncio.base_events.Server | None = None
        self._protocols: list[Any] = []
        self._controller: Any = None
        self._tls_context: ssl.SSLContext | None = None
        if self.starttls or self.implicit_tls:
            self.cafile, self.keyfile = shared_cert()
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cafile, self.keyfile)
            self._tls_context = ctx

    # -- aiosmtpd plumbing -----------------------------------------------------------------

    def _authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = self.auth.get(login) == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def _smtp_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "hostname": self.hostname,
            "ident": "capbot test SMTP",
        }
        if self.starttls:
            kw["tls_context"] = self._tls_context
            kw["require_starttls"] = self.require_starttls
        if self.auth is not None:
            kw["authenticator"] = self._authenticator
            kw["auth_required"] = self.auth_required
            kw["auth_require_tls"] = self.auth_require_tls
        else:
            kw["auth_require_tls"] = False
        return kw

    def _factory(self) -> Any:
        from aiosmtpd.smtp import SMTP

        proto = SMTP(self._handler, **self._smtp_kwargs())
        self._protocols.append(proto)
        return proto

    # -- async life cycle ------------------------------------------------------------------

    async def start(self) -> SmtpCapture:
        """Serve on the running event loop."""
        loop = asyncio.get_running_loop()
        ssl_ctx = self._tls_context if self.implicit_tls else None
        self._server = await loop.create_server(
            self._factory, self.host, self.port, ssl=ssl_ctx, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop serving and drop open client connections."""
        if self._server is not None:
            self._server.close()
            for proto in self._protocols:
                transport = getattr(proto, "transport", None)
                if transport is not None:
                    transport.close()
            self._protocols.clear()
            await self._server.wait_closed()
            self._server = None
            await asyncio.sleep(0)  # let the session tasks see their cancellation

    async def __aenter__(self) -> SmtpCapture:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- threaded life cycle ---------------------------------------------------------------

    def start_threaded(self) -> SmtpCapture:
        """Serve from aiosmtpd's Controller thread (for synchronous code)."""
        from aiosmtpd.controller import Controller

        if self.port == 0:
            self.port = free_port(self.host)
        self._controller = Controller(
            self._handler,
            hostname=self.host,
            port=self.port,
            ssl_context=self._tls_context if self.implicit_tls else None,
            server_hostname=self.hostname,
            **{k: v for k, v in self._smtp_kwargs().items() if k != "hostname"},
        )
        self._controller.start()
        _live.add(self)
        return self

    def stop_threaded(self) -> None:
        """Stop the Controller thread."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        _live.discard(self)

    def stop_sync(self) -> None:
        """Alias of stop_threaded (used by the at-exit cleanup)."""
        self.stop_threaded()

    def __enter__(self) -> SmtpCapture:
        return self.start_threaded()

    def __exit__(self, *exc: object) -> None:
        self.stop_threaded()

    # -- inspection ------------------------------------------------------------------------

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts this server's certificate."""
        return ssl.create_default_context(cafile=self.cafile)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._lock:
            self.messages.clear()

    async def wait_for(
        self,
        count: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109 (the documented API)
    ) -> list[CapturedMessage]:
        """Wait until at least `count` messages arrived; return them (TimeoutError if not)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < count:
            if asyncio.get_running_loop().time() >= deadline:
                raise TimeoutError(
                    f"SmtpCapture got {len(self.messages)} of {count} messages in {timeout}s"
                )
            await asyncio.sleep(0.01)
        return list(self.messages)

    def wait_for_sync(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMessage]:
        """Blocking wait_for, for the threaded mode."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"SmtpCapture got {len(self.messages)} of {count} messages in {timeout}s"
                )
            time.sleep(0.01)
        return list(self.messages)
