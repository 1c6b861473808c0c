"""Helpers shared by the test suite: model fixtures, free ports, service processes."""
