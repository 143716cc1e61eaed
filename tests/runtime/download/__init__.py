"""Tests of `infernetes download` (a package, so its conftest does not shadow tests/conftest.py,
which other tests import as `conftest`)."""
