"""The farm layout file: it lives in :mod:`farm_monitor.layout` so the farm report (which the app
imports, so it may not import the app) reads the same fields; the pages keep this name."""

from __future__ import annotations

from farm_monitor.layout import (
    DeviceFeature,
    DeviceProps,
    FarmLayout,
    FieldFeature,
    FieldProps,
    LayoutError,
    load_layout,
    parse_layout,
    replace_farm,
    save_layout,
)

__all__ = [
    "DeviceFeature",
    "DeviceProps",
    "FarmLayout",
    "FieldFeature",
    "FieldProps",
    "LayoutError",
    "load_layout",
    "parse_layout",
    "replace_farm",
    "save_layout",
]
