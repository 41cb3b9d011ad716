"""The engine role: registers with a controller and runs the work it is sent."""

from corral.engine.engine import Engine, main

__all__ = ["Engine", "main"]
