"""The agent's version, in its own module so the daemon and the updater both read it without importing each other."""

import shared

AGENT_VERSION = shared.__version__
