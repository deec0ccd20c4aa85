"""Re-encode a stored sample message's JPEG so the whole message fits a byte size."""

from __future__ import annotations

import logging

from shared.errors import ImageDecodeError, MessageError
from shared.image import decode_image, encode_jpeg, image_size
from shared.messages import Sample, parse_device_message

from .budget import MIN_SAMPLE_BYTES

logger = logging.getLogger(__name__)


def shrink_sample(payload: bytes, max_bytes: int) -> bytes | None:
    """The sample's JSON with its image re-encoded (lower quality, then half size) to fit ``max_bytes``.

    None when it cannot fit with a useful image, or the payload is not a sample. JPEG stays the
    contract's image format: a receiver needs no new decoder.
    """
    if len(payload) <= max_bytes:
        return payload
    try:
        msg = parse_device_message(payload, "sample")
    except MessageError:
        return None
    assert isinstance(msg, Sample)
    # The image travels as base64 (4 bytes per 3); the rest of the message stays as it is.
    rest = len(payload) - (len(msg.image_jpeg) + 2) // 3 * 4
    image_budget = (max_bytes - rest) * 3 // 4 - 4
    if image_budget < MIN_SAMPLE_BYTES:
        return None
    try:
        array = decode_image(msg.image_jpeg, (msg.height, msg.width), resize="stretch")
        jpeg = encode_jpeg(array, quality=70, max_bytes=image_budget)
        width, height = image_size(jpeg)
    except ImageDecodeError as exc:
        logger.warning("cannot re-encode sample %s: %s", msg.msg_id, exc)
        return None
    out = msg.model_copy(update={"image_jpeg": jpeg, "width": width, "height": height}).to_json()
    return out if len(out) <= max_bytes else None
