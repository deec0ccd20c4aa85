from __future__ import annotations

from pathlib import Path

from shared.schema_docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "messages.md"


def test_message_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/messages.md is stale: run `python -m shared.schema_docs > docs/messages.md`"
    )


def test_message_reference_covers_every_kind() -> None:
    from shared.messages import MESSAGE_TYPES

    text = DOC.read_text(encoding="utf-8")
    for kind in MESSAGE_TYPES:
        assert f"\n## {kind}\n" in text
