"""Hostile files and folders: a model folder without its tokenizer or with broken files, texts beyond the
encoder's positions, LoRA targets that are not layers, inputs beyond float32, odd encodings, a plug-in's
unchecked table, a row count a long first text hides. Each gives one line naming the field and the fix (the
CLI), a refusal at submit (the server), or a clean run (ResNet-18's batch of one row) — never a traceback, a
silent garbage job or a job the limits should have refused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from affinity.cli import app
from affinity.data.table import DataError, TaskTable, check_labels
from affinity.manifest import ManifestError, load_manifest, parse_manifest
from affinity.transformer_folder import builtin_model_folder

runner = CliRunner()

TEXT_JOB = {
    "dataset": {"kind": "text", "source": "t.csv", "text": "sentence", "tasks": ["a", "b"]},
    "model": {"max_length": 16, "lora_rank": 2},
    "training": {"epochs": 1, "batch_size": 32, "patience": 1},
    "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 1, "subset_size": 2,
                   "projection_dim": 8, "chunk_rows": 32},
    "grouping": {"selection": "affinity", "k": 1},
}


def text_job(tmp_path: Path, model: dict | None = None, texts=None, rows: int = 12) -> Path:
    texts = texts or (lambda i: f"text number {i}")
    frame = pd.DataFrame({"sentence": [texts(i) for i in range(rows)], "a": [i % 2 for i in range(rows)],
                          "b": [(i // 2) % 2 for i in range(rows)]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = json.loads(json.dumps(TEXT_JOB))
    spec["model"].update(model or {})
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return path


def one_line_error(path: Path, tmp_path: Path, *fragments: str) -> str:
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert len(result.output.strip().splitlines()) <= 3, result.output  # no module dump after it
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def model_copy(tmp_path: Path, skip: tuple[str, ...] = (), replace: dict[str, bytes] | None = None) -> str:
    """The packaged MiniLM as a folder of links, without ``skip`` and with ``replace``'s files written."""
    src = builtin_model_folder()
    dst = tmp_path / "pre"
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip and f.name not in (replace or {}):
            (dst / f.name).symlink_to(f)
    for name, content in (replace or {}).items():
        (dst / name).write_bytes(content)
    return "pre"


def submitted(tmp_path: Path, manifest: Path):
    """The server's submit-time check of ``manifest`` (data root: its folder), no server started."""
    from api.settings import Settings
    from api.submission import SubmissionError, check_manifest

    settings = Settings(data_root=tmp_path, home=tmp_path / "home")
    try:
        check_manifest(json.loads(manifest.read_text()), "owner", None, settings)
    except SubmissionError as exc:
        return exc.problems
    return None


def test_a_model_folder_without_its_tokenizer_is_refused(tmp_path):
    # transformers would build an empty tokenizer there: every word [UNK], a job that runs and means nothing
    pre = model_copy(tmp_path, skip=("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                                     "special_tokens_map.json"))
    path = text_job(tmp_path, {"pretrained": pre})
    one_line_error(path, tmp_path, "model.pretrained", "holds no tokenizer", "tokenizer.save_pretrained")
    problems = submitted(tmp_path, path)
    assert problems and problems[0]["field"] == "model.pretrained", problems


def test_truncated_weights_are_refused_at_submit_and_in_the_cli(tmp_path):
    weights = (builtin_model_folder() / "model.safetensors").read_bytes()[: 1 << 20]  # an interrupted download
    path = text_job(tmp_path, {"pretrained": model_copy(tmp_path, replace={"model.safetensors": weights})})
    one_line_error(path, tmp_path, "model.pretrained", "cannot load the model")
    problems = submitted(tmp_path, path)
    assert problems and problems[0]["field"] == "model.pretrained", problems
    assert "truncated" in problems[0]["message"]


@pytest.mark.parametrize("name, content", [("tokenizer_config.json", b"[1]"), ("config.json", b"[]")])
def test_malformed_model_files_give_one_line(tmp_path, name, content):
    path = text_job(tmp_path, {"pretrained": model_copy(tmp_path, replace={name: content})})
    one_line_error(path, tmp_path, "model.pretrained")
    problems = submitted(tmp_path, path)
    if name == "config.json":  # read at submit: named as the folder's fault, not a plug-in's
        assert problems and problems[0]["field"] == "model.pretrained", problems


def test_max_length_beyond_the_encoders_positions_is_refused(tmp_path):
    path = text_job(tmp_path, {"max_length": 600}, texts=lambda i: " ".join(["word"] * 700))
    one_line_error(path, tmp_path, "model.max_length=600", "512", "use at most 512")
    problems = submitted(tmp_path, path)
    assert problems and "model.max_length" in problems[0]["message"], problems


@pytest.mark.parametrize("target", ["encoder", "LayerNorm"])
def test_lora_targets_that_are_not_layers_are_refused(tmp_path, target):
    path = text_job(tmp_path, {"target_modules": [target]})
    one_line_error(path, tmp_path, "model.target_modules", target, "query")


def test_text_cells_that_are_not_texts_are_refused(tmp_path):
    frame = pd.DataFrame({"sentence": [["t", str(i)] for i in range(12)], "a": [i % 2 for i in range(12)],
                          "b": [(i // 2) % 2 for i in range(12)]})
    frame.to_parquet(tmp_path / "t.parquet")
    spec = json.loads(json.dumps(TEXT_JOB))
    spec["dataset"]["source"] = "t.parquet"
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    one_line_error(path, tmp_path, "dataset.text", "'sentence'", "row 0", "store the texts as strings")


def test_a_table_built_in_is_not_a_text_dataset():
    with pytest.raises(ManifestError, match="'planted' is a built-in of another kind.*use 'text'"):
        parse_manifest({"dataset": {"kind": "text", "source": "planted"}})
    with pytest.raises(ManifestError, match="use 'digits'"):
        parse_manifest({"dataset": {"kind": "images", "source": "yeast"}})


def test_a_manifest_level_error_does_not_echo_the_manifest():
    with pytest.raises(ManifestError) as err:
        parse_manifest({"dataset": "text", "model": {"kind": "mlp"}})
    assert "(got {" not in str(err.value)


def test_manifest_encodings(tmp_path):
    spec = {"dataset": "planted", "grouping": {"k": 2}}
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(spec).encode())
    assert load_manifest(bom).grouping.k == 2  # a Windows editor's byte order mark is not the manifest's
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("dataset: planted\n# r\xe9sum\xe9\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="latin.yaml is not UTF-8 text .*save it as UTF-8"):
        load_manifest(latin)


def _table_job(tmp_path: Path, csv: bytes, **dataset) -> Path:
    (tmp_path / "t.csv").write_bytes(csv)
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"dataset": {"source": "t.csv", "tasks": ["y"], **dataset},
                                "training": {"epochs": 1}, "grouping": {"k": 1}}))
    return path


def test_csv_encodings_are_named(tmp_path):
    body = "x1,y\n" + "".join(f"{i},{i % 2}\n" for i in range(40))
    one_line_error(_table_job(tmp_path, body.encode("utf-16")), tmp_path, "UTF-16", "save it as UTF-8")
    latin = ("x1,note,y\n" + "".join(f"{i},caf\xe9,{i % 2}\n" for i in range(40))).encode("latin-1")
    one_line_error(_table_job(tmp_path, latin, features=["x1"]), tmp_path, "not UTF-8", "save it as UTF-8")


@pytest.mark.parametrize("big, standardize", [(1e39, False), (1e200, True)])
def test_features_beyond_float32_are_refused(tmp_path, big, standardize):
    # unstandardized they would reach training as inf; standardized, a spread that overflows would zero the column
    body = "x1,x2,y\n" + "".join(f"{i % 3},{big if i < 2 else i},{i % 2}\n" for i in range(40))
    one_line_error(_table_job(tmp_path, body.encode(), standardize=standardize), tmp_path, "feature 'x2'",
                   "float32", "rescale it")


def test_a_plug_in_table_is_checked_like_a_built_in():
    X = np.zeros((20, 2))
    Y = np.tile([0.0, 1.0], 10)[:, None].repeat(2, axis=1)
    table = TaskTable(X=X, Y=Y, task_names=["a", "a"], task_types=["binary"] * 2, feature_names=["x1", "x2"])
    with pytest.raises(DataError, match=r"duplicate task names \['a'\]"):
        check_labels(table, 4)


def test_library_refuses_bad_task_types_names_and_inputs():
    from affinity.library import task_affinity
    from affinity.models import MultiTaskMLP
    from affinity.manifest import ModelSpec

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    Y = (rng.normal(size=(60, 2)) > 0).astype(np.float32)
    model = MultiTaskMLP(3, 2, ModelSpec(hidden=[4]))
    with pytest.raises(ValueError, match="task_types .*'classification'.*use 'binary' or 'regression'"):
        task_affinity(model, X, Y, task_types=["classification"] * 2)
    with pytest.raises(ValueError, match=r"task_names \['a'\] are given twice"):
        task_affinity(model, X, Y, task_names=["a", "a"])
    bad = X.copy()
    bad[7, 1] = math.nan
    with pytest.raises(ValueError, match="X has NaN or infinite values .*row 7"):
        task_affinity(model, bad, Y)
    with pytest.raises(ValueError, match="estimation\\['method'\\] is 'exact' but method is 'grad_tag'"):
        task_affinity(model, X, Y, estimation={"method": "exact"})


def test_resnet18_trains_on_a_batch_of_one_small_image():
    # at ≤ 32 px ResNet-18's last stage is 1×1: one row leaves one value per channel, no batch statistics
    from affinity.cnn import SharedNorm2d

    norm = SharedNorm2d(4).train()
    before = norm.running_mean.clone()
    out = norm(torch.randn(1, 4, 1, 1))
    assert torch.isfinite(out).all() and torch.equal(norm.running_mean, before)
    assert norm(torch.randn(2, 4, 1, 1)).shape == (2, 4, 1, 1)  # two rows: batch statistics as before
    assert not torch.equal(norm.running_mean, before)


def test_row_estimate_is_not_fooled_by_a_long_first_text(tmp_path):
    from api.resources import csv_rows

    path = tmp_path / "t.csv"
    with path.open("w") as f:
        f.write("sentence,a\n" + "word " * 20_000 + ",1\n" + "".join(f"short {i},{i % 2}\n" for i in range(30_000)))
    assert csv_rows(path) == 30_001


def test_a_library_error_without_a_message_still_gives_one_line(tmp_path, monkeypatch):
    """Some libraries raise with an empty message (or one that starts with a blank line); the one-line error quotes
    the first line that says something, or the exception's type, instead of failing on the quote."""
    from affinity.messages import first_line

    assert first_line(ValueError()) == "ValueError"
    assert first_line(ValueError("\n  \nbad header\nmore")) == "bad header"
    (tmp_path / "t.csv").write_text("a,x\n1,2\n")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"dataset": {"source": "t.csv", "tasks": ["a"], "features": ["x"]}}))

    def broken(*args, **kwargs):
        raise pd.errors.ParserError()

    monkeypatch.setattr(pd, "read_csv", broken)
    result = runner.invoke(app, ["run", str(job), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "cannot read t.csv as CSV: ParserError" in result.output
    assert "Traceback" not in result.output
