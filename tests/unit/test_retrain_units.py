"""The evaluation gate's decision and the field test hold-out, without training anything."""

from __future__ import annotations

from pathlib import Path

from cloud_trainer.retrain_data import FieldItem, field_split
from cloud_trainer.retrain_gate import decide, gate_markdown


def _m(acc: float, n: int = 10) -> dict:
    return {"accuracy": acc, "macro_f1": acc, "n": n, "per_class": {"a": {"recall": acc, "support": n}}}


def test_gate_passes_only_when_no_worse_on_fixed_and_better_on_field() -> None:
    ok = decide("accuracy", {"base": _m(0.90), "candidate": _m(0.895)}, {"base": _m(0.5), "candidate": _m(0.8)},
                0.01, 0.0)  # fmt: skip
    assert ok.passed and ok.fixed["ok"] and ok.field["ok"]
    forgot = decide("accuracy", {"base": _m(0.90), "candidate": _m(0.85)}, {"base": _m(0.5), "candidate": _m(0.8)},
                    0.01, 0.0)  # fmt: skip
    assert not forgot.passed and "forgot" in forgot.reasons[0] and "-5.00 points" in forgot.reasons[0]
    same = decide("accuracy", {"base": _m(0.9), "candidate": _m(0.9)}, {"base": _m(0.5), "candidate": _m(0.5)},
                  0.01, 0.0)  # fmt: skip
    assert not same.passed and "not better on the field" in same.reasons[1]
    small = decide("accuracy", {"base": _m(0.9), "candidate": _m(0.9)}, {"base": _m(0.5), "candidate": _m(0.55)},
                   0.01, 0.1)  # fmt: skip
    assert not small.passed and "above 10.00 points" in small.reasons[1] and "below the minimum" in small.reasons[1]
    # A gain on fewer field test images than --min-field-test is chance: the gate fails and says to label more.
    few = decide("accuracy", {"base": _m(0.9), "candidate": _m(0.9)}, {"base": _m(0.0, 1), "candidate": _m(1.0, 1)},
                 0.01, 0.0, 5)  # fmt: skip
    assert not few.passed and not few.field["ok"] and "fewer than 5 field test images" in few.reasons[1]
    assert "label more" in few.reasons[1] and few.thresholds["min_field_test"] == 5
    md = gate_markdown(ok, "x")
    assert "PASSED" in md and "| a | 0.900 | 0.895 | 10 |" in md


def _items(label: str, n: int) -> list[FieldItem]:
    return [FieldItem(f"m{label}{i}", label, "agro", "2026-01-01", f"{label}{i:04d}", Path("x")) for i in range(n)]


def test_field_split_is_stratified_and_deterministic() -> None:
    items = _items("a", 10) + _items("b", 3) + _items("c", 1)
    field_split(items, 0.3, 0.2, seed=0)
    roles = {it.msg_id: it.role for it in items}
    by = {c: [it.role for it in items if it.label == c] for c in "abc"}
    assert by["a"].count("field_test") == 3 and by["a"].count("val") == 1 and by["a"].count("train") == 6
    assert by["b"].count("field_test") == 1 and by["b"].count("train") == 2
    assert by["c"] == ["train"]  # one labelled sample cannot be both trained on and tested
    again = _items("a", 10) + _items("b", 3) + _items("c", 1)
    field_split(list(reversed(again)), 0.3, 0.2, seed=0)
    assert {it.msg_id: it.role for it in again} == roles
    other = _items("a", 10)
    field_split(other, 0.3, 0.2, seed=1)
    assert [it.role for it in other] != [roles[it.msg_id] for it in other]


def test_since_with_a_utc_offset_becomes_utc() -> None:
    import datetime as dt

    from cloud_trainer.retrain import _since

    since = _since("2026-06-01T12:00:00+02:00")
    assert since == dt.datetime(2026, 6, 1, 10, tzinfo=dt.UTC) and since.utcoffset() == dt.timedelta(0)
    # What the SQLite export compares: the naive UTC time, not 12:00.
    assert since.replace(tzinfo=None) == dt.datetime(2026, 6, 1, 10)
    assert _since("2026-06-01") == dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def test_store_replaces_a_truncated_image_left_by_a_crash(tmp_path: Path) -> None:
    from cloud_trainer.retrain_data import _store, sha256_bytes

    src = tmp_path / "photo.jpg"
    src.write_bytes(b"\xff\xd8" + bytes(range(256)) * 4 + b"\xff\xd9")
    digest = sha256_bytes(src.read_bytes())
    images = tmp_path / "data" / "images"
    rel = _store(images, src, digest)
    (images.parent / rel).unlink()
    (images.parent / rel).write_bytes(src.read_bytes()[:100])  # what a crash mid-copy leaves
    assert _store(images, src, digest) == rel
    assert sha256_bytes((images.parent / rel).read_bytes()) == digest
    assert [p.name for p in (images.parent / rel).parent.iterdir()] == [f"{digest}.jpg"]  # no temp file left


def test_a_relative_base_data_path_resolves_against_the_base_runs_folder_or_says_so(tmp_path: Path) -> None:
    import pytest

    from cloud_trainer.retrain_data import RetrainError, _base_data_path

    assert _base_data_path(tmp_path, {"data": "leaves", "cwd": "/srv/train"}) == Path("/srv/train/leaves")
    assert _base_data_path(tmp_path, {"data": "/abs/leaves"}) == Path("/abs/leaves")
    with pytest.raises(RetrainError, match="relative to the folder the base run was trained in"):
        _base_data_path(tmp_path, {"data": "no-such-relative-folder"})


def test_gate_refuses_a_candidate_less_trustworthy_on_the_field() -> None:
    def trusted(acc: float, cw: float, ece: float) -> dict:
        return _m(acc) | {"confidently_wrong": cw, "ece": ece}

    fixed = {"base": _m(0.9), "candidate": _m(0.9)}
    better = decide("accuracy", fixed, {"base": trusted(0.5, 0.2, 0.2), "candidate": trusted(0.8, 0.1, 0.1)}, 0.01, 0.0)
    assert better.passed
    # More accurate on the field, but more often confidently wrong there: refused, and the report says why.
    bolder = decide(
        "accuracy", fixed, {"base": trusted(0.5, 0.1, 0.1), "candidate": trusted(0.8, 0.2, 0.05)}, 0.01, 0.0
    )
    assert not bolder.passed and any("confidently-wrong" in r and "FAIL" in r for r in bolder.reasons)
    worse_ece = decide("accuracy", fixed, {"base": trusted(0.5, 0.1, 0.05), "candidate": trusted(0.8, 0.1, 0.15)},
                       0.01, 0.0)  # fmt: skip
    assert not worse_ece.passed and any("ECE" in r and "FAIL" in r for r in worse_ece.reasons)
    tolerated = decide("accuracy", fixed, {"base": trusted(0.5, 0.1, 0.05), "candidate": trusted(0.8, 0.1, 0.06)},
                       0.01, 0.0, 1, 0.02)  # fmt: skip
    assert tolerated.passed and tolerated.thresholds["max_trust_regression"] == 0.02
