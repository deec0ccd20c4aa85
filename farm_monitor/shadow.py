"""Shadow scoring: how a challenger running beside the champion compares, from stored detections.

A detection made while a shadow model ran carries the challenger's answer in its ``shadow`` column
(a ShadowResult). Per (champion version, challenger version) this counts the detections compared and
how often the two agree; where an agronomist labelled the sample of a detection
(``samples.detection_msg_id`` -> ``labels``, the latest label wins) it also counts how often each
model was right. The monitor's Retraining page and ``cropwatch retrain tick`` (auto-promotion) read
the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from .db.dialect import sqlite_timestamp as _sqlite_ts

SQL = """
SELECT d.msg_id, d.model_version, d.label, d.shadow,
       (SELECT l.label FROM samples s JOIN labels l ON l.sample_msg_id = s.msg_id
        WHERE s.detection_msg_id = d.msg_id
        ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1) AS truth
FROM detections d
WHERE d.farm_id = :farm AND d.model_name = :name AND d.shadow IS NOT NULL
"""


@dataclass
class ShadowScore:
    champion_version: str
    challenger_version: str
    compared: int = 0
    agreed: int = 0
    labelled: int = 0
    champion_correct: int = 0
    challenger_correct: int = 0

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion_correct / self.labelled if self.labelled else None

    @property
    def challenger_accuracy(self) -> float | None:
        return self.challenger_correct / self.labelled if self.labelled else None

    @property
    def margin(self) -> float | None:
        """Challenger accuracy minus champion accuracy on the labelled detections."""
        if not self.labelled:
            return None
        return (self.challenger_correct - self.champion_correct) / self.labelled

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "agreement": self.agreement,
            "champion_accuracy": self.champion_accuracy,
            "challenger_accuracy": self.challenger_accuracy,
            "margin": self.margin,
        }


def shadow_report(
    engine: Engine, farm: str, model_name: str, since: datetime | None = None, challenger: str | None = None
) -> list[ShadowScore]:
    """One score per (champion version, challenger version) seen on ``farm`` for ``model_name``."""
    sql, params = SQL, {"farm": farm, "name": model_name}
    if since is not None:
        sql += " AND d.observed_at >= :since"
        params["since"] = _sqlite_ts(since) if engine.dialect.name == "sqlite" else since
    scores: dict[tuple[str, str], ShadowScore] = {}
    with engine.connect() as conn:
        for r in conn.execute(text(sql), params):
            shadow = json.loads(r.shadow) if isinstance(r.shadow, str) else r.shadow
            if not shadow or not shadow.get("top_k"):
                continue
            version = shadow["model"]["version"]
            if challenger is not None and version != challenger:
                continue
            s = scores.setdefault((r.model_version, version), ShadowScore(r.model_version, version))
            their = shadow["top_k"][0]["label"]
            s.compared += 1
            s.agreed += their == r.label
            if r.truth is not None:
                s.labelled += 1
                s.champion_correct += r.label == r.truth
                s.challenger_correct += their == r.truth
    return sorted(scores.values(), key=lambda s: (s.champion_version, s.challenger_version))
