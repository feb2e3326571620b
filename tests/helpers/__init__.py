"""Test helpers importable as ``tests.helpers`` (the repository root is on pytest's ``pythonpath``)."""
