"""Shared pytest configuration: loads the test-server fixtures."""

pytest_plugins = ["tests.support.fixtures"]
