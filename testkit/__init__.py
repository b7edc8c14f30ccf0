"""Helpers shared by the tests and the benchmark scripts (not shipped in the wheel).

One module per throwaway server (dovecot, postgres, smtp), their plumbing (ports, process,
tls, imap), the fake Telegram Bot API and probes, seeded data and the pytest fixtures
(`pytest_plugins = ["testkit.fixtures"]`). testkit imports nothing from tests or benchmarks.
"""
