"""Over-the-air model updates: desired-model message in, a verified model swapped in, or a reason why not.

The farm's retained ``_fleet/model/{name}`` message says which version devices should run. The
updater checks it (:mod:`.policy`; the first failure rejects it, reported as an event and in the
status, while the running model keeps serving), downloads it into a staging folder and verifies it
(:mod:`.download`), moves it into its slot (:mod:`.slots`), loads it, which runs the manifest
self-test, and checks that the labels match the model's output size (:mod:`.loader`). The new
version then serves on trial until its health window passes (:mod:`.trial`). Challengers on
``_fleet/shadow/{name}`` take the same path into their own slots (:mod:`.shadow`).

Slots, per model name under ``data_dir/models/{name}/``::

    state.json            {"active": v|null, "trial": v|null, "previous": v|null, "failed": {v: msg_id}}
    versions/{version}/   complete, verified copies (manifest.json + files); only these are ever loaded
    staging/{version}/    downloads in progress (``*.part`` files resume with Range)

The updater sees the agent only through :class:`UpdaterHost`; :class:`ModelUpdater` runs its
thread and wires the parts together.
"""

from .common import CRASH_STEPS, UpdateRejected
from .core import ModelUpdater
from .download import download
from .host import UpdaterHost
from .slots import SlotStore
from .trial import Trial

__all__ = [
    "CRASH_STEPS",
    "ModelUpdater",
    "SlotStore",
    "Trial",
    "UpdateRejected",
    "UpdaterHost",
    "download",
]
