"""Text tasks on the packaged MiniLM with LoRA: gradients, frozen parameters, offline loading, errors, jobs.

The MiniLM forward is the cost: few rows, short texts, one or two epochs.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from affinity.cli import app
from affinity.data.table import DataError
from affinity.gradients import per_sample_gradients, select_parameters, vmap_per_sample_gradients
from affinity.kinds import load_data, make_model
from affinity.manifest import ManifestError, parse_manifest
from affinity.models import task_outputs
from affinity.training import TensorData, train_model

runner = CliRunner()

TINY = {
    "dataset": {"source": "text", "params": {"groups": 2, "per_group": 2, "unrelated": 1, "rows_per_task": 12}},
    "model": {"max_length": 16, "lora_rank": 4},
    "training": {"epochs": 2, "batch_size": 32, "lr": 2e-3, "patience": 2},
    "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 6, "subset_size": 3,
                   "projection_dim": 16, "chunk_rows": 32},
    "grouping": {"selection": "affinity", "k": 2},
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = parse_manifest(TINY)
    data = load_data(m)
    model = lora_off_zero(make_model(m.model, data, 0))
    model.eval()
    return m, data, model


def lora_off_zero(model):
    """``model`` with LoRA's B moved off zero, where it starts (A's gradients would vanish)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model


def assert_per_sample_gradients_equal_autograd(model, data):
    """Both per-sample gradient implementations equal one autograd call per row, over the LoRA and the heads."""
    X = TensorData.from_split(data, torch.device("cpu")).X
    x, tasks = X[:6], torch.arange(6) % data.n_tasks
    names = select_parameters(model, "all")  # LoRA and heads
    params = dict(model.named_parameters())
    ref = []
    for b in range(len(x)):
        out = task_outputs(model, x[b:b + 1], tasks[b:b + 1]).sum()
        ref.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, [params[n] for n in names])]))
    ref = torch.stack(ref)
    assert float(ref.abs().max()) > 0
    for fn in (per_sample_gradients, vmap_per_sample_gradients):
        got = torch.cat(fn(model, names, x, tasks), dim=1)
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), fn.__name__


def test_defaults_pick_text_and_transformer():
    m = parse_manifest({"dataset": "text"})
    assert (m.dataset.kind, m.model.kind, m.model.pretrained) == ("text", "transformer", "all-MiniLM-L6-v2")


def test_lora_per_sample_gradients_equal_autograd(tiny):
    _, data, model = tiny
    assert_per_sample_gradients_equal_autograd(model, data)


def test_frozen_parameters_get_no_gradient_and_are_not_projected(tiny):
    m, data, model = tiny
    params = dict(model.named_parameters())
    frozen = [n for n, p in params.items() if not p.requires_grad]
    assert frozen and all("lora_" not in n and not n.startswith("head_") for n in frozen)
    for which in ("all", "encoder"):
        names = select_parameters(model, which)
        assert names and all("lora_" in n or n.startswith("head_") for n in names)
    assert not any(n.startswith("head_") for n in select_parameters(model, "encoder"))
    counts = model.trainable_counts()
    assert counts["lora"] + counts["heads"] == sum(p.numel() for p in params.values() if p.requires_grad)
    assert counts["lora"] < counts["total"] / 100
    before = {n: params[n].detach().clone() for n in frozen}
    trainable_before = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    fresh = make_model(m.model, data, 0)
    fresh.load_state_dict(model.state_dict())
    train_model(fresh, TensorData.from_split(data, torch.device("cpu")), m.training.model_copy(update={"epochs": 1}))
    after = dict(fresh.named_parameters())
    assert all(after[n].grad is None and torch.equal(after[n], before[n]) for n in frozen)
    assert any(not torch.equal(after[n], v) for n, v in trainable_before.items())


def test_packaged_minilm_loads_with_networking_disabled(tmp_path):
    script = """
import socket
def refuse(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from affinity.torchvision_compat import import_torchvision
import_torchvision()  # before transformers, as affinity.transformer does
from affinity.transformer_folder import builtin_model_folder
from transformers import AutoModel, AutoTokenizer
folder = builtin_model_folder()
tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = AutoModel.from_pretrained(folder, local_files_only=True)
ids = tok(["three red dogs, happy"], return_tensors="pt")
print(model.config.model_type, model(**ids).last_hidden_state.shape[-1])
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["bert", "384"]


def _manifest(tmp_path, rows: str, **dataset):
    (tmp_path / "t.csv").write_text(rows)
    spec = {"dataset": {"kind": "text", "source": "t.csv", "text": "sentence", "tasks": ["a"], **dataset},
            "model": {"max_length": 16}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return path


def _one_line_error(path, tmp_path, *fragments):
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for f in fragments:
        assert f in errors[0], errors[0]


def test_empty_texts_are_refused(tmp_path):
    rows = "sentence,a\n" + "".join(f"text {i},{i % 2}\n" for i in range(12)) + ",1\n"
    _one_line_error(_manifest(tmp_path, rows), tmp_path, "dataset.text", "1 empty texts", "row 12")


def test_missing_text_column_is_refused(tmp_path):
    rows = "words,a\n" + "".join(f"text {i},{i % 2}\n" for i in range(12))
    _one_line_error(_manifest(tmp_path, rows), tmp_path, "dataset.text 'sentence' is not a column of t.csv")


def test_text_column_is_required(tmp_path):
    with pytest.raises(ManifestError, match="dataset.text is required"):
        parse_manifest({"dataset": {"kind": "text", "source": "t.csv", "tasks": ["a"]}})


def test_missing_tokenizer_folder_is_refused(tmp_path):
    rows = "sentence,a\n" + "".join(f"text {i},{i % 2}\n" for i in range(12))
    path = _manifest(tmp_path, rows)
    spec = json.loads(path.read_text())
    spec["model"]["pretrained"] = "no_such_model"
    path.write_text(json.dumps(spec))
    _one_line_error(path, tmp_path, "model.pretrained", "no_such_model", "is not a folder")


def test_fields_of_another_kind_are_refused():
    with pytest.raises(ManifestError, match="model.lora_rank: does not apply to model.kind 'mlp'"):
        parse_manifest({"dataset": "planted", "model": {"lora_rank": 4}})
    with pytest.raises(ManifestError, match="model.kind 'mlp' takes dataset.kind 'table', not 'text'"):
        parse_manifest({"dataset": "text", "model": {"kind": "mlp"}})
    with pytest.raises(ManifestError, match="dataset.features does not apply"):
        parse_manifest({"dataset": {"source": "text", "features": ["x"]}})


def test_user_csv_example_reads(tmp_path):
    from affinity.manifest import load_manifest

    m = load_manifest(os.path.join(os.path.dirname(__file__), "..", "examples", "my_texts.yaml"))
    data = load_data(m)
    assert data.n_tasks == len(m.dataset.tasks) and data.X.dtype == np.int64
    assert data.X.shape[1] == 2 and data.task_types.count("regression") == 1


def test_run_and_validate_a_tiny_text_job(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(TINY))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "texts of up to" in result.output and "features" not in result.output.split("device")[0]
    groups = json.loads((tmp_path / "run" / "groups.json").read_text())
    assert sorted(t for g in groups["groups"] for t in g) == [f"task_{t:02d}" for t in range(5)]
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=False)["state_dict"]  # adapters and heads only
    assert any("lora_A" in k for k in state) and "head_weight" in state
    assert not any(k.endswith("query.base_layer.weight") or "word_embeddings" in k for k in state)
    result = runner.invoke(app, ["validate", str(path), "-n", "2", "--out", str(tmp_path / "val")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert report["subsets"] == 2 and np.isfinite(report["median_rel_error"])
    assert report["estimator"]["params"] == "encoder" and report["estimator"]["n_params"] > 0


def test_max_batch_rows_bounds_evaluation_batches_without_changing_losses():
    from affinity.data import load_dataset
    from affinity.manifest import ModelSpec
    from affinity.models import build_model
    from affinity.training import evaluate_losses

    data = load_dataset(parse_manifest({"dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2,
                                                                                    "rows_per_task": 20}}}).dataset)
    tensors = TensorData.from_split(data, torch.device("cpu"))
    model = build_model(ModelSpec(hidden=[8]), data.X.shape[1], data.n_tasks, 0)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    whole = evaluate_losses(model, tensors, tensors.val)
    model.max_batch_rows = 7
    calls.clear()
    batched = evaluate_losses(model, tensors, tensors.val)
    assert max(calls) == 7 and torch.allclose(whole, batched)


def test_connection_strength_trains_a_transformer_with_task_norms(tmp_path):
    """model.task_norm on a transformer: a shared neck with per-task norms between the pooled output and the
    heads; connection strength learns its units' task priority and projects conflicts there, the LoRA adapters
    train, the frozen encoder does not move, and per-sample gradients through the norm equal autograd's."""
    from affinity.optim.connection_strength import ConnectionStrength
    from affinity.optim.base import TaskBatch
    from affinity.optim.priority import layer_priorities

    raw = {**TINY, "model": {**TINY["model"], "task_norm": True},
           "training": {**TINY["training"], "mtl_method": "connection_strength"}}
    m = parse_manifest(raw)
    data = load_data(m)
    model = make_model(m.model, data, 0)
    assert [name for name, _, _ in model.task_norm_layers()] == ["neck"]
    assert {"norm.weight", "norm.bias", "head_weight", "head_bias"} == set(model.task_parameters())
    assert model.layers()[-2] == ["neck.weight", "neck.bias"]
    counts = model.trainable_counts()
    assert counts["lora"] + counts["heads"] + counts["neck"] == sum(p.numel() for p in model.parameters()
                                                                       if p.requires_grad)
    # per-sample gradients of the adapters, the neck and the heads (eval mode: each task's own running statistics)
    model.eval()
    X = TensorData.from_split(data, torch.device("cpu")).X
    x, tasks = X[:5], torch.arange(5) % data.n_tasks
    names = select_parameters(model, "all")
    params = dict(model.named_parameters())
    ref = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        task_outputs(model, x[b:b + 1], tasks[b:b + 1]).sum(), [params[n] for n in names])]) for b in range(5)])
    got = torch.cat(vmap_per_sample_gradients(model, names, x, tasks), dim=1)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    # one phase-2 step: the neck's units are grouped by their top task and conflicting gradients projected
    model.train()
    t = TensorData.from_split(data, torch.device("cpu"))
    rows = torch.nonzero(t.train.any(1)).squeeze(1)[:24]
    mask = t.train[rows]
    present = torch.nonzero(mask.any(0)).squeeze(1)
    batch = TaskBatch(model, t.X[rows], t.Y[rows], mask, t.binary, present, torch.arange(data.n_tasks))
    assert [name for name, _, _ in layer_priorities(model, batch.selected)] == ["neck"]
    method = ConnectionStrength(seed=0)
    grads = method.phase2_gradients(batch)
    assert model.neck.weight in grads and any("lora_" in n and p in grads for n, p in model.named_parameters())
    assert method.last_projected[0][0] == "neck"
    # the whole job: base training with connection strength, its priority recorded, frozen weights unchanged
    path = tmp_path / "m.json"
    path.write_text(json.dumps(raw))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    priority = json.loads((tmp_path / "run" / "priority.json").read_text())
    assert priority["layers"][0]["layer"] == "neck" and priority["phase1_batches"] + priority["phase2_batches"] > 0


@pytest.mark.parametrize("method, mtl, grouping", [
    ("exact", "equal", None), ("scratch", "equal", None), ("tag_lookahead", "equal", None),
    ("gradient_cosine", "equal", None), ("grad_tag", "upgrad", None),
    ("grad_tag", "equal", {"selection": "outcome", "k": "auto", "folds": 3, "random_control": 2}),
])
def test_every_estimator_an_aggregator_and_the_check_run_on_a_transformer(method, mtl, grouping):
    # the stages reach the model only through the kind's interface: the same calls as for an MLP or a CNN
    from affinity.pipeline import run_job

    raw = {**TINY, "training": {**TINY["training"], "mtl_method": mtl},
           "estimation": {**TINY["estimation"], "method": method}}
    if grouping is not None:
        raw["grouping"] = grouping
    result = run_job(parse_manifest(raw))
    n = len(result.data.task_names)
    assert result.estimate.matrix.shape == (n, n) and np.isfinite(result.estimate.matrix).all()
    if grouping is not None:  # every candidate trained as the user would: one transformer per group and fold
        assert result.advice["selection"] == "outcome"
        assert all(np.isfinite(c["predicted_val_loss"]) for c in result.advice["candidates"])
        assert result.advice["recommendation"] in ("together", "groups", "separately")


def test_built_in_sentences_draw_test_rows_apart():
    """test_rows_per_task: more sentences per task from a stream of their own, marked as test rows; the job's own
    rows are those drawn without them (what the outcome suite scores the text job's advice on)."""
    from affinity.data.sentences import make_sentences

    plain = make_sentences({"seed": 4})
    more = make_sentences({"seed": 4, "test_rows_per_task": 7})
    n, tasks = plain.Y.shape
    assert plain.test_rows is None and more.Y.shape == (n + 7 * tasks, tasks)
    assert more.texts[:n] == plain.texts and np.array_equal(more.Y[:n], plain.Y, equal_nan=True)
    assert more.test_rows.tolist() == [False] * n + [True] * (7 * tasks)
    assert (~np.isnan(more.Y[n:])).sum(axis=0).tolist() == [7] * tasks  # every task labels 7 of them
    with pytest.raises(DataError, match="test_rows_per_task"):
        make_sentences({"test_rows_per_task": -1})
