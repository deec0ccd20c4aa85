"""The farm layout file: GeoJSON fields (crop, planting date) and device locations, per farm.

One GeoJSON FeatureCollection for all farms. Each feature's ``properties`` has ``farm_id`` and a
``kind``: ``field`` (Polygon; ``field_id``, ``name``, ``crop``, ``planting_date``) or ``device``
(Point; ``device_id``, optional ``field_id``). Coordinates are [longitude, latitude].
Devices that report but are not in the file still appear in the monitor, flagged "not in layout".
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.fsutil import atomic_write_text
from shared.ids import ID_RE

Id = Annotated[str, Field(pattern=ID_RE.pattern)]
LonLat = tuple[Annotated[float, Field(ge=-180, le=180)], Annotated[float, Field(ge=-90, le=90)]]


class LayoutError(Exception):
    pass


class FieldProps(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["field"]
    farm_id: Id
    field_id: Id
    name: str | None = None
    crop: str | None = None
    planting_date: date | None = None


class DeviceProps(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["device"]
    farm_id: Id
    device_id: Id
    field_id: Id | None = None
    name: str | None = None


class Polygon(BaseModel):
    type: Literal["Polygon"]
    coordinates: list[Annotated[list[LonLat], Field(min_length=4)]] = Field(min_length=1)


class Point(BaseModel):
    type: Literal["Point"]
    coordinates: LonLat


class FieldFeature(BaseModel):
    type: Literal["Feature"]
    geometry: Polygon
    properties: FieldProps


class DeviceFeature(BaseModel):
    type: Literal["Feature"]
    geometry: Point
    properties: DeviceProps


class FarmLayout(BaseModel):
    fields: list[FieldFeature] = Field(default_factory=list)
    devices: list[DeviceFeature] = Field(default_factory=list)

    def farms(self) -> list[str]:
        return sorted({f.properties.farm_id for f in self.fields} | {d.properties.farm_id for d in self.devices})

    def for_farm(self, farm_id: str) -> FarmLayout:
        return FarmLayout(
            fields=[f for f in self.fields if f.properties.farm_id == farm_id],
            devices=[d for d in self.devices if d.properties.farm_id == farm_id],
        )

    def to_geojson(self) -> dict[str, Any]:
        return {
            "type": "FeatureCollection",
            "features": [f.model_dump(mode="json", exclude_none=True) for f in [*self.fields, *self.devices]],
        }


def parse_layout(doc: Any) -> FarmLayout:
    """Validate a GeoJSON FeatureCollection; LayoutError names the feature and what is wrong."""
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise LayoutError('the farm layout must be a GeoJSON object with "type": "FeatureCollection"')
    fields, devices = [], []
    seen: set[tuple[str, str, str]] = set()
    for i, feat in enumerate(doc.get("features") or []):
        kind = (feat.get("properties") or {}).get("kind") if isinstance(feat, dict) else None
        try:
            if kind == "field":
                fld = FieldFeature.model_validate(feat)
                key = ("field", fld.properties.farm_id, fld.properties.field_id)
                fields.append(fld)
            elif kind == "device":
                dev = DeviceFeature.model_validate(feat)
                key = ("device", dev.properties.farm_id, dev.properties.device_id)
                devices.append(dev)
            else:
                raise LayoutError(f'feature {i}: properties.kind must be "field" or "device" (got {kind!r})')
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise LayoutError(f"feature {i} ({kind}): {where}: {first['msg']}") from None
        if key in seen:
            raise LayoutError(f"feature {i}: {key[0]} {key[2]} appears twice in farm {key[1]}")
        seen.add(key)
    return FarmLayout(fields=fields, devices=devices)


def load_layout(path: str | os.PathLike[str]) -> FarmLayout:
    """The layout in ``path``; an empty layout when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        return FarmLayout()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LayoutError(f"{path} is not valid JSON: {exc}") from None
    try:
        return parse_layout(doc)
    except LayoutError as exc:
        raise LayoutError(f"{path}: {exc}") from None


def save_layout(path: str | os.PathLike[str], layout: FarmLayout) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(layout.to_geojson(), indent=1) + "\n")


def replace_farm(layout: FarmLayout, farm_id: str, farm_doc: Any) -> FarmLayout:
    """``layout`` with farm ``farm_id``'s features replaced by those in ``farm_doc`` (all must be that farm's)."""
    new = parse_layout(farm_doc)
    others: list[FieldFeature | DeviceFeature] = [*new.fields, *new.devices]
    wrong = sorted({f.properties.farm_id for f in others} - {farm_id})
    if wrong:
        raise LayoutError(f"this editor changes farm {farm_id} only; features name farm(s) {', '.join(wrong)}")
    return FarmLayout(
        fields=[f for f in layout.fields if f.properties.farm_id != farm_id] + new.fields,
        devices=[d for d in layout.devices if d.properties.farm_id != farm_id] + new.devices,
    )
