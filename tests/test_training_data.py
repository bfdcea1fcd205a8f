"""Data layouts and splits: seeded stratified split, manifest split column, explicit split folders."""

from __future__ import annotations

from pathlib import Path

from tests.training_support import make_dataset
from training.data import ClassMap, load_dataset, stratified_split


def test_stratified_split_is_seeded_and_keeps_every_group_in_every_split() -> None:
    keys = ["a"] * 20 + ["b"] * 10 + ["c"] * 3
    first = stratified_split(keys, (0.8, 0.1, 0.1), seed=1)
    assert first == stratified_split(keys, (0.8, 0.1, 0.1), seed=1)
    assert first != stratified_split(keys, (0.8, 0.1, 0.1), seed=2)
    for group in "abc":
        splits = {s for k, s in zip(keys, first, strict=True) if k == group}
        assert splits == {"train", "val", "test"}
    assert first[:20].count("val") == 2 and first[:20].count("test") == 2
    assert first[20:30].count("train") == 8


def test_class_folders_get_a_seeded_split_stratified_by_subclass(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    samples = load_dataset(root, seed=3)
    assert len(samples) == 25 and {s.subclass for s in samples} == {"fire", "knife", "sky", "grass"}
    assert sum(s.label for s in samples) == 12  # harmful = 1
    for sub in ("fire", "knife", "grass"):
        assert sorted(s.split for s in samples if s.subclass == sub) == ["test", "train", "train", "train", "train",
                                                                          "val"]
    assert [s.split for s in samples] == [s.split for s in load_dataset(root, seed=3)]


def test_manifest_split_column_wins_and_unknown_labels_are_ignored(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    (root / "manifest.csv").write_text("path,label,subclass,split\nharmful/fire/0.jpg,harmful,fire,test\n"
                                       "benign/sky/1.jpg,benign,sky,train\nbenign/sky/2.jpg,other,sky,train\n")
    manifest = load_dataset(root)
    assert [(s.path.name, s.label, s.split) for s in manifest] == [("0.jpg", 1, "test"), ("1.jpg", 0, "train")]
    assert len(load_dataset(root, ClassMap(("harmful",), ("benign",)), use_manifest=False)) == 25


def test_explicit_split_folders_and_configurable_class_names(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        make_dataset(tmp_path / "data" / split, per_subclass=2, corrupt=False)
    (tmp_path / "data" / "train" / "harmful").rename(tmp_path / "data" / "train" / "weapons")
    samples = load_dataset(tmp_path / "data", ClassMap(("harmful", "weapons"), ("benign",)))
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert sum(1 for s in samples if s.split == "train" and s.label == 1) == 4
