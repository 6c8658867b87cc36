"""Helpers shared by the test suites (real-broker fixtures, unique names)."""
