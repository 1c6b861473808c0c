"""Offline data: standard-library docstrings as text, the shipped prompt set and teacher responses."""
