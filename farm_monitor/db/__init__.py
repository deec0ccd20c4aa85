"""The monitor database: models, engine setup and versioned migrations."""

from .engine import make_engine
from .migrations import LATEST_VERSION, current_version, migrate

__all__ = ["LATEST_VERSION", "current_version", "make_engine", "migrate"]
