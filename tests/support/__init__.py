"""Test support: real services, a TCP proxy to cut them, node processes, API helpers."""
