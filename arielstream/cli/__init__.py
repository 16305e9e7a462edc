"""The ``arielstream`` command: :func:`main` (:mod:`.app`) and its exit codes (:mod:`.exits`)."""

from .app import main

__all__ = ["main"]
