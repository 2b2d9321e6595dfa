"""The ``streammon`` command line: ``run``, ``export``, ``replay``, ``demo``, ``produce``, ``dashboard``, ``alerts``."""

from .main import main

__all__ = ["main"]
