"""Class ids to the words people read: the shipped leaf sample's classes, PlantVillage's awkward
names, and any other label."""

from __future__ import annotations

import pytest

from cloud_trainer.disease import LEAF_SAMPLE
from shared.display_names import display_name, display_names

LEAF_SAMPLE_NAMES = {
    "Apple___Apple_scab": "Apple · Apple scab",
    "Apple___Black_rot": "Apple · Black rot",
    "Apple___Cedar_apple_rust": "Apple · Cedar apple rust",
    "Apple___healthy": "Apple · Healthy",
    "Blueberry___healthy": "Blueberry · Healthy",
    "Orange___Haunglongbing_(Citrus_greening)": "Orange · Huanglongbing (citrus greening)",
    "Raspberry___healthy": "Raspberry · Healthy",
    "Strawberry___Leaf_scorch": "Strawberry · Leaf scorch",
    "Strawberry___healthy": "Strawberry · Healthy",
}


def test_every_shipped_leaf_class_reads_as_crop_and_condition() -> None:
    classes = sorted(p.name for p in LEAF_SAMPLE.iterdir() if p.is_dir())
    assert classes == sorted(LEAF_SAMPLE_NAMES)
    assert display_names(classes) == LEAF_SAMPLE_NAMES


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("Tomato___Late_blight", "Tomato · Late blight"),
        ("Tomato___Tomato_Yellow_Leaf_Curl_Virus", "Tomato · Yellow leaf curl virus"),
        ("Tomato___Spider_mites Two-spotted_spider_mite", "Tomato · Spider mites (two-spotted spider mite)"),
        ("Corn_(maize)___Common_rust_", "Corn · Common rust"),
        ("Pepper,_bell___Bacterial_spot", "Bell pepper · Bacterial spot"),
        ("Cherry_(including_sour)___healthy", "Cherry · Healthy"),
        ("Potato___HEALTHY", "Potato · Healthy"),
        # No crop part: the condition alone.
        ("bean_rust", "Bean rust"),
        ("healthy", "Healthy"),
        ("cassava mosaic disease", "Cassava mosaic disease"),
        # Odd shapes: spaces collapse, an empty side falls back to the words there are.
        ("Tomato___", "Tomato"),
        ("___Late_blight", "Late blight"),
        ("a__b___c", "A b · C"),
        ("___", "___"),
        ("_", "_"),
    ],
)
def test_other_labels(label: str, shown: str) -> None:
    assert display_name(label) == shown


def test_a_models_table_wins_over_the_rule() -> None:
    table = {"Tomato___Late_blight": "Tomato · Late blight (Phytophthora infestans)"}
    assert display_name("Tomato___Late_blight", table) == "Tomato · Late blight (Phytophthora infestans)"
    assert display_name("Tomato___healthy", table) == "Tomato · Healthy"
