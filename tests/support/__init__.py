"""Helpers shared by the test modules; the fixtures themselves are in `tests/conftest.py`."""
