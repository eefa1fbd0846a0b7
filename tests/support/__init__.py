"""Test support: real servers started by the tests, and waiting on conditions."""
