"""Core and cross-package tests of esper-core (a package so tests can import tests.toy_plugin)."""
