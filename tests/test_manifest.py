import json

import pytest
import yaml

from affinity.defaults import BUILTIN_JOBS, builtin_manifest
from affinity.manifest import Manifest, ManifestError, load_manifest, manifest_schema, parse_manifest


def test_smallest_manifest_is_just_a_dataset():
    m = parse_manifest({"dataset": "planted"})
    assert m.version == 1
    assert m.dataset.source == "planted"
    assert m.estimation.projection_dim == 200
    assert m.grouping.k == "auto"


@pytest.mark.parametrize(
    "data, field, value",
    [
        ({"dataset": "planted", "training": {"lr": -1}}, "training.lr", "-1"),
        ({"dataset": "planted", "model": {"hidden": [0]}}, "model.hidden[0]", "0"),
        ({"dataset": "planted", "model": {"activation": "relu6"}}, "model.activation", "relu6"),
        ({"dataset": "planted", "estimation": {"projection": "sparse"}}, "estimation.projection", "sparse"),
        ({"dataset": "planted", "estimation": {"subset_size": 1}}, "estimation.subset_size", "1"),
        ({"dataset": "planted", "grouping": {"k": 0}}, "grouping.k", "0"),
        ({"dataset": "planted", "grouping": {"k": "many"}}, "grouping.k", "many"),
        ({"dataset": "planted", "grouping": {"k": [5, 2]}}, "grouping.k", "[5, 2]"),
        ({"dataset": "planted", "grouping": {"method": "kmeans"}}, "grouping.method", "kmeans"),
        ({"dataset": "planted", "tranining": {}}, "tranining", "{}"),
        ({"dataset": {"source": "a.csv", "tasks": ["y", "y"]}}, "dataset.tasks", "duplicate task names"),
        ({"dataset": {"source": "a.csv", "tasks": [{"name": "y", "type": "multiclass"}]}}, "dataset.tasks[0].type", "multiclass"),
        ({"dataset": "planted", "version": 2}, "version", "2"),
        ({"model": {}}, "dataset", "Field required"),
    ],
)
def test_invalid_values_name_field_value_and_fix(data, field, value):
    with pytest.raises(ManifestError) as exc:
        parse_manifest(data)
    msg = str(exc.value)
    assert f"{field}:" in msg
    assert value in msg
    assert ";" in msg  # the fix follows the problem


def test_json_and_yaml_files(tmp_path):
    data = {"dataset": {"source": "table.csv", "tasks": ["a", {"name": "b", "type": "regression"}]}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    a, b = load_manifest(tmp_path / "m.json"), load_manifest(tmp_path / "m.yaml")
    assert a == b
    assert a.dataset.source == str(tmp_path / "table.csv")  # relative to the manifest
    assert [t.type for t in a.dataset.tasks] == ["binary", "regression"]


def test_unreadable_manifest_files(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ManifestError, match="expected a mapping"):
        load_manifest(tmp_path / "list.yaml")


def test_schema_lists_every_section():
    schema = manifest_schema()
    assert set(schema["properties"]) >= {"version", "dataset", "model", "training", "estimation", "grouping"}
    assert schema["required"] == ["dataset"]


@pytest.mark.parametrize("name", sorted(BUILTIN_JOBS))
def test_examples_are_the_builtin_jobs_spelled_out(name, repo_root):
    example = json.loads((repo_root / "examples" / f"{name}.json").read_text())
    assert Manifest.model_validate(example) == builtin_manifest(name)
    assert example == builtin_manifest(name).model_dump(mode="json")


def test_csv_example_manifest_is_valid(repo_root):
    m = load_manifest(repo_root / "examples" / "my_table.yaml")
    assert m.dataset.source.endswith("my_table.csv")
