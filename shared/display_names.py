"""Class names people read: ``Apple___Cedar_apple_rust`` reads as ``Apple · Cedar apple rust``.

Class ids stay what the model's labels are (folder names, often PlantVillage's ``Crop___Condition``);
what a person sees comes from here, so the agent, the monitor and the trainer agree. The disease
export writes :func:`display_names` of its labels into the signed manifest; a reader without a
manifest table (an older model, a label typed by hand) falls back to :func:`display_name`, which
gives the same text for any label the table was made from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

SEPARATOR = " · "

# PlantVillage's class names that the rule cannot read well: misspellings, the crop repeated in
# the condition, a second name after a space, a trailing underscore.
OVERRIDES: Mapping[str, str] = {
    "Orange___Haunglongbing_(Citrus_greening)": "Orange · Huanglongbing (citrus greening)",
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus": "Tomato · Yellow leaf curl virus",
    "Tomato___Tomato_mosaic_virus": "Tomato · Mosaic virus",
    "Tomato___Spider_mites Two-spotted_spider_mite": "Tomato · Spider mites (two-spotted spider mite)",
    "Corn_(maize)___Cercospora_leaf_spot Gray_leaf_spot": "Corn · Cercospora leaf spot (gray leaf spot)",
    "Corn_(maize)___Common_rust_": "Corn · Common rust",
    "Corn_(maize)___Northern_Leaf_Blight": "Corn · Northern leaf blight",
    "Grape___Esca_(Black_Measles)": "Grape · Esca (black measles)",
    "Grape___Leaf_blight_(Isariopsis_Leaf_Spot)": "Grape · Leaf blight (Isariopsis leaf spot)",
}
# Crop parts the rule cannot read well.
CROP_OVERRIDES: Mapping[str, str] = {
    "Pepper,_bell": "Bell pepper",
    "Corn_(maize)": "Corn",
    "Cherry_(including_sour)": "Cherry",
}


def _words(text: str) -> str:
    """Underscores to spaces, runs of spaces to one, ends trimmed."""
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip()


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _condition(text: str) -> str:
    words = _words(text)
    return "Healthy" if words.lower() == "healthy" else _first_upper(words)


def display_name(label: str, table: Mapping[str, str] | None = None) -> str:
    """What a person reads for ``label``: ``table``'s entry, else the shipped override, else the rule.

    The rule: ``Crop___Condition`` becomes ``Crop · Condition`` with underscores as spaces and the
    first letter of each part upper-case (``healthy`` becomes ``Healthy``); a label without ``___``
    is the condition alone. A label that reduces to nothing is returned unchanged.
    """
    if table and label in table:
        return table[label]
    if label in OVERRIDES:
        return OVERRIDES[label]
    crop, sep, condition = label.partition("___")
    if not sep:
        return _condition(label) or label
    crop_text = CROP_OVERRIDES.get(crop) or _first_upper(_words(crop))
    condition_text = _condition(condition)
    if not crop_text or not condition_text:
        return _condition(label.replace("___", " ")) or label
    return f"{crop_text}{SEPARATOR}{condition_text}"


def display_names(labels: Iterable[str]) -> dict[str, str]:
    """The table a model ships with: every label's :func:`display_name`."""
    return {label: display_name(label) for label in labels}
