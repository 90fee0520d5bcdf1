"""Agora: a self-hostable realtime social-network backend."""

__version__ = "0.1.0"
