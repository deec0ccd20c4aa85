"""The checks that accept or refuse a desired-model message before anything is downloaded.

In order, the first failure refusing it: the topic and farm (on the MQTT thread, :func:`screen`),
then the envelope's signature (when present, or required by ``[trust] require_signed_rollout``),
the manifest's signature against ``[trust]``, the agent version it needs, replay of an older
signed message, the rollout policy (:mod:`shared.rollout`), no downgrade unless the message allows
one, and the download size cap. Each raises :class:`UpdateRejected` with a reason code.
"""

from __future__ import annotations

import logging
import threading

from shared.errors import ManifestError, MessageError
from shared.ids import msg_id_time
from shared.manifest import TrustedKeys, verify_manifest
from shared.messages import Artifact, DesiredModel, parse_desired_model
from shared.rollout import is_newer, selects

from ..config import AgentConfig
from ..inference import InferenceBackend
from ..version import AGENT_VERSION
from .common import DISEASE, SHADOW, YIELD, Role, UpdateRejected
from .slots import SlotStore

logger = logging.getLogger(__name__)


def screen(payload: bytes, name: str, role: Role, farm_id: str) -> DesiredModel | None:
    """Parse a message of ``_fleet/model/{name}`` or ``_fleet/shadow/{name}``; None: another farm's."""
    try:
        desired = parse_desired_model(payload)
    except MessageError as exc:
        raise UpdateRejected(exc.reason, str(exc)) from exc
    if desired.farm_id != farm_id:
        logger.warning("desired model for farm %s ignored (this is another farm)", desired.farm_id)
        return None
    if desired.model_name != name:
        raise UpdateRejected("topic_mismatch", f"message for model {desired.model_name} on the topic of {name}")
    if desired.rollout.mode != ("shadow" if role == SHADOW else "active"):
        where = ".../_fleet/shadow/NAME" if desired.rollout.mode == "shadow" else ".../_fleet/model/NAME"
        raise UpdateRejected(
            "wrong_topic",
            f"rollout mode {desired.rollout.mode} belongs on {where} "
            "(cropwatch models publish --mode shadow publishes a challenger there)",
        )
    return desired


def check_common(d: DesiredModel, cfg: AgentConfig, trusted: TrustedKeys) -> None:
    """What champion and challenger messages must both pass: trust, expiry, agent version, task."""
    if not cfg.updates.enabled:
        raise UpdateRejected("updates_disabled", "[updates] enabled = false")
    if not len(trusted) and cfg.trust.require_signature:
        raise UpdateRejected("no_trusted_keys", "trust.public_keys is empty; no update can be verified")
    if d.signature is None and cfg.trust.require_signed_rollout:
        raise UpdateRejected(
            "rollout_unsigned",
            f"desired-model message {d.model_name} {d.version} has no envelope signature and "
            "[trust] require_signed_rollout = true; publish it with `cropwatch models publish --signing-key KEY`",
        )
    try:
        if d.signature is not None:
            d.verify(trusted)
        verify_manifest(d.manifest, trusted)
    except ManifestError as exc:
        raise UpdateRejected(exc.reason, str(exc)) from exc
    m = d.manifest
    if is_newer(m.min_agent_version, AGENT_VERSION):
        raise UpdateRejected(
            "agent_too_old", f"{m.name} {m.version} needs agent {m.min_agent_version}, this is {AGENT_VERSION}"
        )
    if m.task not in (DISEASE, YIELD):
        raise UpdateRejected("unsupported_task", f"over-the-air updates of {m.task} models are not supported")


def check_fresh(store: SlotStore, d: DesiredModel, lock: threading.RLock, closed: bool = False) -> None:
    """Replay protection for signed envelopes: refuse one older than the newest signed one seen.

    Only a signed envelope's msg_id can be trusted (an unsigned message can be forged fresh
    anyway), so only those move the mark. ``closed``: a shadow run that ended also refuses its
    own message replayed. msg_ids are ULIDs, ordered by time.
    """
    if d.signature is None:
        return
    name = d.model_name
    with lock:
        state = store.read(name)
        newest = state.get("newest_msg_id")
        ended = state.get("closed_msg_id") if closed else None
        if (newest is not None and d.msg_id < newest) or (ended is not None and d.msg_id <= ended):
            mark = max(m for m in (newest, ended) if m is not None)
            raise UpdateRejected(
                "replayed",
                f"signed desired-model message {d.msg_id} (made {msg_id_time(d.msg_id):%Y-%m-%d %H:%M:%S}Z) is "
                f"not newer than {mark} ({msg_id_time(mark):%Y-%m-%d %H:%M:%S}Z), which this device already "
                "saw: a replay or a stale copy. Publish again to change the model; if the publishing host's "
                f"clock ran ahead, fix it and remove newest_msg_id from {store.state_path(name)}",
            )
        if newest is None or d.msg_id > newest:
            state["newest_msg_id"] = d.msg_id
            store.write(name, state)


def check_targeted(d: DesiredModel, cfg: AgentConfig) -> None:
    """The champion's rollout selects this device, and the device runs a model of that task."""
    if not selects(d.rollout, d.model_name, cfg.device.device_id, cfg.device.groups):
        raise UpdateRejected("not_selected", "this device is not in the rollout")
    if d.manifest.task == YIELD and not cfg.yield_model.enabled:
        raise UpdateRejected("not_selected", "this device runs no yield model ([yield] enabled = false)")


def check_version(d: DesiredModel, base: InferenceBackend | None) -> None:
    """Against the model a trial would fall back to (or the serving one): same name, newer or allowed older."""
    if base is None:
        return
    if base.manifest.name != d.model_name:
        raise UpdateRejected("not_selected", f"this device runs {base.manifest.name}, not {d.model_name}")
    current = base.manifest.version
    if current == d.version:
        raise UpdateRejected("current", "already running this version")
    if not is_newer(d.version, current) and not d.allow_downgrade:
        raise UpdateRejected(
            "downgrade", f"{d.version} is older than the running {current}; publish it as a rollback to allow that"
        )


def check_size(wanted: list[Artifact], cfg: AgentConfig) -> None:
    total = sum(a.size for a in wanted)
    cap = int(cfg.updates.max_download_mb * 1e6)
    if total > cap:
        raise UpdateRejected("too_large", f"{total} bytes to download exceed max_download_mb ({cap} bytes)")
