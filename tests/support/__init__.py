"""Helpers shared by the test suites (service launchers, CLI runners)."""
