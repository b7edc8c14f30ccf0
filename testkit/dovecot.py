"""A throwaway Dovecot (IMAP, IMAPS, LMTP) in a temp dir, for tests and benchmark scripts."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

from testkit.imap import ImapSettings, MailboxClient
from testkit.ports import LOOPBACK, free_ports
from testkit.process import ServerError, live_servers, make_tempdir, tail, which
from testkit.tls import make_self_signed_cert

_DOVECOT_CONF = """\
# Throwaway test instance made by testkit/dovecot.py
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


class Dovecot(MailboxClient):
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
        lacking = sorted({pkg for prog, pkg in need.items() if which(prog) is None})
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
        self.directory = make_tempdir("capbot-dovecot-")
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
            live_servers.add(self)
            return self
        self._cleanup_failed()
        raise ServerError(last_error)

    def _launch(self) -> None:
        dovecot = which("dovecot")
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
        log = tail(stderr_path) + "\n" + tail(self.log_path)
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
        live_servers.discard(self)
        self._kill()
        if self.directory and not os.environ.get("CAPBOT_KEEP_SERVER_DIRS"):
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Dovecot's log."""
        return tail(self.log_path, lines)

    # -- doveadm --------------------------------------------------------------------------

    def doveadm(self, *args: str, check: bool = True) -> str:
        """Run `doveadm -c CONFIG ARGS...` and return its stdout."""
        doveadm = which("doveadm")
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
