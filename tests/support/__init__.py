"""Test-server helpers shared by tests and benchmark scripts."""
