"""Class hierarchies: tree distances, coarse groups, JSON files and WordNet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdgen.data.hierarchy import (
    DEBIAN_DATA_NOUN,
    VIRTUAL_ROOT,
    Hierarchy,
    looks_like_wnids,
    parse_data_noun_line,
    wordnet_hierarchy,
)
from kdgen.errors import DataError

# root -> animal -> {mammal -> {dog, cat}, fish}; root -> vehicle -> car
TREE = {
    "root": None,
    "animal": "root",
    "vehicle": "root",
    "mammal": "animal",
    "dog": "mammal",
    "cat": "mammal",
    "fish": "animal",
    "car": "vehicle",
}
CLASSES = ["dog", "cat", "fish", "car"]


def test_distances_on_a_three_level_tree_by_hand() -> None:
    distance = Hierarchy(TREE, CLASSES).distance_matrix()
    expected = torch.tensor(
        [
            [0, 1, 2, 3],  # dog: cat via mammal, fish via animal, car via root
            [1, 0, 2, 3],
            [1, 1, 0, 2],  # fish is shallower: one edge up to animal
            [2, 2, 2, 0],
        ],
        dtype=torch.float64,
    )
    assert distance.dtype == torch.float64
    assert torch.equal(distance, expected)
    assert distance[0, 2] != distance[2, 0]  # asymmetric


def test_coarse_groups_by_parent_and_by_depth() -> None:
    by_parent = Hierarchy(TREE, CLASSES)
    assert by_parent.coarse_names == ["animal", "vehicle", "mammal"]
    assert by_parent.coarse_of_fine().tolist() == [2, 2, 0, 1]
    by_depth = Hierarchy(TREE, CLASSES, coarse_depth=1)
    assert by_depth.coarse_names == ["animal", "vehicle"]
    assert by_depth.coarse_of_fine().dtype == torch.int64
    assert by_depth.coarse_of_fine().tolist() == [0, 0, 0, 1]
    # A class no deeper than the cut is its own group.
    deep = Hierarchy(TREE, CLASSES, coarse_depth=3)
    assert [deep.coarse_names[i] for i in deep.coarse_of_fine()] == CLASSES


def test_two_level_matches_the_sibling_rule() -> None:
    coarse = [0, 1, 0, 2, 1, 2]
    names = [f"c{i}" for i in range(6)]
    hierarchy = Hierarchy.from_coarse(coarse, names, ["a", "b", "z"])
    assert hierarchy.coarse_of_fine().tolist() == coarse
    assert hierarchy.coarse_names == ["a", "b", "z"]
    groups = torch.tensor(coarse)
    rule = 1.0 + (groups[:, None] != groups[None, :]).double()
    rule.fill_diagonal_(0)
    assert torch.equal(hierarchy.distance_matrix(), rule)


def test_from_coarse_rejects_bad_labels() -> None:
    with pytest.raises(DataError, match="entries for 3 classes"):
        Hierarchy.from_coarse([0, 1], ["a", "b", "c"])
    with pytest.raises(DataError, match="must lie in"):
        Hierarchy.from_coarse([0, 3], ["a", "b"], ["x", "y"])


def test_forest_gets_a_virtual_root() -> None:
    hierarchy = Hierarchy({"a": "x", "b": "x", "c": "y"}, ["a", "b", "c"])
    assert hierarchy.path("c") == [VIRTUAL_ROOT, "y", "c"]
    assert hierarchy.distance_matrix()[0].tolist() == [0.0, 1.0, 2.0]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "hierarchy.json"
    path.write_text(json.dumps(data))
    return path


def test_json_tree_form(tmp_path: Path) -> None:
    hierarchy = Hierarchy.from_json(_write(tmp_path, TREE), CLASSES)
    assert torch.equal(hierarchy.distance_matrix(), Hierarchy(TREE, CLASSES).distance_matrix())


def test_json_coarse_label_form(tmp_path: Path) -> None:
    path = _write(tmp_path, {"dog": "pet", "cat": "pet", "fish": "pet", "car": "machine"})
    hierarchy = Hierarchy.from_json(path, CLASSES)
    assert hierarchy.coarse_names == ["pet", "machine"]
    assert hierarchy.coarse_of_fine().tolist() == [0, 0, 0, 1]
    assert hierarchy.distance_matrix()[0].tolist() == [0.0, 1.0, 1.0, 2.0]


def test_json_class_with_a_coarse_label_of_its_own_name(tmp_path: Path) -> None:
    # Fashion-MNIST's "bag" is its own coarse group: a label, not a cycle.
    path = _write(tmp_path, {"dog": "pet", "cat": "pet", "fish": "fish", "car": "car"})
    hierarchy = Hierarchy.from_json(path, CLASSES)
    assert hierarchy.coarse_of_fine().tolist() == [0, 0, 1, 2]
    assert hierarchy.coarse_names == ["pet", "fish (coarse)", "car (coarse)"]
    assert hierarchy.labels == {"fish (coarse)": "fish", "car (coarse)": "car"}
    assert hierarchy.distance_matrix()[2].tolist() == [2.0, 2.0, 0.0, 2.0]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"dog": "pet", "cat": "pet", "fish": "pet"}, "no parent given for 1 class.*'car'"),
        ({**TREE, "cow": "mammal"}, "unknown classes: 'cow'"),
        ({**TREE, "root": "vehicle"}, "cycle: .*root"),
        ({**TREE, "mammal": "mammal"}, "cycle: mammal -> mammal"),
        ({**TREE, "dog": 3}, "must map a string"),
        (["dog"], "one JSON object"),
    ],
)
def test_json_errors(tmp_path: Path, data: object, match: str) -> None:
    with pytest.raises(DataError, match=match):
        Hierarchy.from_json(_write(tmp_path, data), CLASSES)


def test_json_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Hierarchy.from_json(tmp_path / "absent.json", CLASSES)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        Hierarchy.from_json(bad, CLASSES)


def test_missing_class_in_constructor() -> None:
    with pytest.raises(DataError, match=r"lacks 1 class.*'cow'"):
        Hierarchy(TREE, [*CLASSES, "cow"])


# A fake data.noun in WordNet's format (offsets need not be byte offsets here).
FAKE_DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
00000001 03 n 01 entity 0 002 ~ 00000002 n 0000 ~ 00000005 n 0000 | the root
00000002 03 n 01 animal 0 002 @ 00000001 n 0000 ~ 00000003 n 0000 | an animal
00000003 05 n 02 dog 0 domestic_dog 0 002 @ 00000002 n 0000 @ 00000004 n 0000 | a dog
00000004 05 n 01 pet 0 001 @ 00000001 n 0000 | a pet
00000006 05 n 01 cat 0 002 @ 00000004 n 0000 @ 00000002 n 0000 | listed under pet first
00000005 06 n 01 car 0 001 @i 00000001 n 0000 | only an instance hypernym
"""


@pytest.fixture
def fake_data_noun(tmp_path: Path) -> Path:
    path = tmp_path / "data.noun"
    path.write_text(FAKE_DATA_NOUN)
    return path


def test_parse_data_noun_line() -> None:
    line = FAKE_DATA_NOUN.splitlines()[3]
    assert parse_data_noun_line(line) == ("n00000003", "dog", "n00000002")
    assert parse_data_noun_line(FAKE_DATA_NOUN.splitlines()[1])[2] is None
    with pytest.raises(DataError, match="malformed"):
        parse_data_noun_line("00000001 03 n zz")


def test_wordnet_parser_on_a_fake_file(fake_data_noun: Path) -> None:
    wnids = ["n00000003", "n00000006", "n00000005"]
    hierarchy = wordnet_hierarchy(wnids, coarse_depth=1, data_noun=fake_data_noun)
    assert hierarchy is not None
    assert hierarchy.path("n00000003") == ["n00000001", "n00000002", "n00000003"]
    assert hierarchy.path("n00000006") == ["n00000001", "n00000004", "n00000006"]
    assert hierarchy.path("n00000005") == ["n00000001", "n00000005"]  # via @i
    assert hierarchy.labels["n00000003"] == "dog"
    assert [hierarchy.coarse_names[i] for i in hierarchy.coarse_of_fine()] == [
        "n00000002",
        "n00000004",
        "n00000005",
    ]
    assert hierarchy.distance_matrix().tolist() == [[0, 2, 2], [2, 0, 2], [1, 1, 0]]


def test_wordnet_errors(fake_data_noun: Path) -> None:
    with pytest.raises(DataError, match=r"not WordNet 3\.0 nouns: 'n00000099'"):
        wordnet_hierarchy(["n00000003", "n00000099"], data_noun=fake_data_noun)
    with pytest.raises(DataError, match=r"n \+ 8 digits"):
        wordnet_hierarchy(["dog"], data_noun=fake_data_noun)


def test_wordnet_missing_warns_and_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kdgen.data.hierarchy.load_data_noun", lambda path=None: None)
    with pytest.warns(UserWarning, match="apt-get install wordnet-base"):
        assert wordnet_hierarchy(["n02084071"]) is None


def test_looks_like_wnids() -> None:
    assert looks_like_wnids(["n01440764", "n02084071"])
    assert not looks_like_wnids(["n01440764", "dog"])
    assert not looks_like_wnids([])


@pytest.mark.skipif(not DEBIAN_DATA_NOUN.is_file(), reason="Debian's wordnet-base not installed")
def test_real_wordnet_dog_cat_car() -> None:
    dog, cat, car = "n02084071", "n02121808", "n04285008"
    hierarchy = wordnet_hierarchy([dog, cat, car], data_noun=DEBIAN_DATA_NOUN)
    assert hierarchy is not None
    assert hierarchy.path(dog)[0] == "n00001740"  # entity
    assert hierarchy.labels[dog] == "dog" and hierarchy.labels[car] == "sports_car"
    assert "n02075296" in hierarchy.path(dog) and "n02075296" in hierarchy.path(cat)  # carnivore
    distance = hierarchy.distance_matrix()
    assert distance[0, 1] < distance[0, 2]
    groups = hierarchy.coarse_of_fine()
    assert groups[0] == groups[1] != groups[2]
