"""The Cropwatch contract: message schemas, topic tree, model manifests, image decoding, config.

Both ends (field agent and cloud) import this package, so it depends only on pydantic, numpy,
pillow, cryptography, and cbor2 and zstandard for the compact wire encoding.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cropwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

SCHEMA_VERSION = 1
