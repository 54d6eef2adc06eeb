"""Multitask optimizers: connection strength (method notes §2) and the torchjd aggregators (§3)."""

import copy
import json

import pytest
import torch
from torchjd import aggregation as agg
from torchjd.autojac import jac_to_grad, mtl_backward
from typer.testing import CliRunner

from affinity.losses import masked_task_means, pointwise_loss
from affinity.manifest import MTL_METHODS, ManifestError, ModelSpec, parse_manifest
from affinity.models import MultiTaskMLP, TaskNorm
from affinity.optim import METHODS, TaskBatch, make_method
from affinity.optim.connection_strength import ConnectionStrength, project_conflicts
from affinity.optim.priority import connection_strength, task_priority, top_priority
from affinity.optim.torchjd_methods import AGGREGATORS

# Nash-MTL's cvxpy problem is not DPP; cvxpy warns on every solve (the method filters it, the
# direct torchjd call in the comparison test does not).
pytestmark = pytest.mark.filterwarnings("ignore:You are solving a parameterized problem that is not DPP")


def _batch(model, n_tasks=4, rows=48, features=6, seed=0, conflict=True):
    """A batch where task 1's labels are task 0's flipped (conflicting gradients)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g)
    y = (torch.randn(rows, n_tasks, generator=g) > 0).float()
    y[:, 0] = (x[:, 0] > 0).float()
    if conflict:
        y[:, 1] = 1 - y[:, 0]
    mask = torch.rand(rows, n_tasks, generator=g) < 0.7
    binary = torch.ones(n_tasks, dtype=torch.bool)
    present = torch.nonzero(mask.any(0)).squeeze(1)
    return TaskBatch(model, x, y, mask, binary, present, torch.arange(n_tasks))


def _model(task_norm=True, hidden=(10, 8), n_tasks=4, features=6, seed=0):
    torch.manual_seed(seed)
    model = MultiTaskMLP(features, n_tasks, ModelSpec(hidden=list(hidden), task_norm=task_norm, activation="tanh"))
    if task_norm:  # distinct per-task scales so that units have different top-priority tasks
        with torch.no_grad():
            for norm in model.norms:
                norm.weight.copy_(0.2 + 2 * torch.rand(norm.weight.shape))
    return model


# --- connection strength and priority -----------------------------------------------------------

def test_connection_strength_equals_the_formula_on_a_hand_computed_layer():
    W = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])  # Σ_q W[p,q]² = 5, 1, 9
    gamma = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 0.5]])
    var = torch.tensor([[1.0, 1.0, 1.0], [3.0, 1.0, 0.25]])
    eps = 1e-5
    s0 = torch.tensor([5.0, 1.0, 9.0]) / (1 + eps)
    s1 = torch.tensor([4 * 5 / (3 + eps), 1 * 1 / (1 + eps), 0.25 * 9 / (0.25 + eps)])
    expected = torch.stack([s0 / s0.sum(), s1 / s1.sum()])
    got = connection_strength(W, gamma, var, eps)
    torch.testing.assert_close(got, expected)
    # by hand: task 0 → [1/3, 1/15, 3/5], task 1 ≈ [0.4, 0.06, 0.54]
    torch.testing.assert_close(got, torch.tensor([[1 / 3, 1 / 15, 0.6], [0.4, 0.06, 0.54]]), atol=1e-4, rtol=0)
    assert top_priority(got).tolist() == [1, 0, 0]
    assert top_priority(got, torch.tensor([1])).tolist() == [1, 1, 1]

    # the same through a model: its first shared layer and task norm
    model = MultiTaskMLP(2, 2, ModelSpec(hidden=[3], task_norm=True))
    with torch.no_grad():
        model.shared[0].weight.copy_(W)
        model.norms[0].weight.copy_(gamma)
        model.norms[0].running_var.copy_(var)
    prio = task_priority(model)
    assert prio["layers"][0]["top_task"] == [1, 0, 0]
    assert prio["layers"][0]["share"] == pytest.approx([2 / 3, 1 / 3])


def _reference_projection(g, top):
    """The notes' rule with plain loops: for each group i and task j, project G_j if G_i·G_j < 0."""
    out = g.clone()
    for i in torch.unique(top[top >= 0]).tolist():
        units = top == i
        gi = g[i, units].flatten()
        for j in range(g.shape[0]):
            if j == i:
                continue
            gj = g[j, units].flatten()
            d = gi @ gj
            if d < 0:
                out[j, units] = (gj - d / (gi @ gi) * gi).reshape(out[j, units].shape)
    return out


def test_projection_is_the_per_group_rule():
    g = torch.randn(5, 7, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top = torch.tensor([0, 2, 2, -1, 4, 0, 2])
    torch.testing.assert_close(project_conflicts(g, top), _reference_projection(g, top))


def test_after_a_phase2_step_no_task_conflicts_with_the_priority_task_in_its_group():
    model = _model()
    batch = _batch(model)
    method = ConnectionStrength(seed=0)
    grads = method.phase2_gradients(batch)
    conflicts_before = 0
    layers_checked = 0
    for name, g, top in method.last_projected:
        groups = torch.unique(top[top >= 0])
        if groups.numel() < 2:
            continue
        layers_checked += 1
        for i in groups.tolist():
            units = top == i
            gi = g[i, units].flatten()
            for j in range(g.shape[0]):
                assert float(g[j, units].flatten() @ gi) >= -1e-6 * float(gi @ gi), (name, i, j)
        # the update written to the layer's parameters is the sum of the projected gradients
        layer = model.get_submodule(name)
        torch.testing.assert_close(grads[layer.weight], g.sum(0)[:, :-1])
        torch.testing.assert_close(grads[layer.bias], g.sum(0)[:, -1])
    assert layers_checked >= 1
    # there were conflicts to resolve: the unprojected per-task gradients of some group disagree
    losses = batch.losses()
    for name, _, top in method.last_projected:
        layer = model.get_submodule(name)
        jw = torch.stack([torch.autograd.grad(l, layer.weight, retain_graph=True)[0] for l in losses])
        for i in torch.unique(top[top >= 0]).tolist():
            units = top == i
            gi = jw[i, units].flatten()
            conflicts_before += sum(int(jw[j, units].flatten() @ gi < 0) for j in range(len(losses)))
    assert conflicts_before > 0
    # and a whole phase-2 step runs and changes the shared weights
    before = model.shared[0].weight.detach().clone()
    method.phase2_step(batch, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not torch.equal(before, model.shared[0].weight)


def test_schedule_follows_e_over_E():
    E, draws = 8, 3000
    method = ConnectionStrength(seed=3)
    for e in range(1, E + 1):
        phases = torch.tensor([method.phase(e, E) for _ in range(draws)])
        share2 = float((phases == 2).float().mean())
        assert share2 == pytest.approx(e / E, abs=0.035), e
    assert method.phase_counts[E] == [0, draws]  # e = E: always phase 2
    # the rule itself: phase 1 iff u >= e/E, u drawn from the seeded generator
    method, gen = ConnectionStrength(seed=5), torch.Generator().manual_seed(5)
    for e in (1, 3, 6):
        for _ in range(50):
            u = float(torch.rand((), generator=gen))
            assert method.phase(e, 10) == (1 if u >= e / 10 else 2)
    # schedule_epochs overrides E (e.g. when early stopping ends training early)
    method = ConnectionStrength(seed=0, schedule_epochs=4)
    assert all(method.phase(4, 100) == 2 for _ in range(100))


def test_phase1_steps_each_task_alone_and_keeps_other_tasks_parameters():
    model = _model()
    batch = _batch(model)
    before = copy.deepcopy(model.state_dict())
    method = ConnectionStrength(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # one task only: only its head row, norm rows and statistics move
    method.phase1_step(TaskBatch(model, batch.x, batch.y, batch.mask, batch.binary, torch.tensor([2]),
                                 batch.selected), opt)
    after = model.state_dict()
    for key in ("head_weight", "head_bias", "norms.0.weight", "norms.1.bias", "norms.0.running_mean",
                "norms.1.running_var"):
        changed = [not torch.equal(before[key][t], after[key][t]) for t in range(4)]
        assert changed == [False, False, True, False], key
    assert not torch.equal(before["shared.0.weight"], after["shared.0.weight"])


# --- per-task normalization ---------------------------------------------------------------------

def test_task_norm_keeps_per_task_statistics_apart():
    torch.manual_seed(0)
    norm = TaskNorm(3, 5).train()
    h = torch.randn(40, 5)
    mask = torch.zeros(40, 3, dtype=torch.bool)
    mask[:15, 0] = True
    mask[10:30, 1] = True
    mask[39, 2] = True  # one row: too few for statistics
    out = norm(h, mask)
    for t, rows in ((0, slice(0, 15)), (1, slice(10, 30))):
        own = h[rows]
        expected = (own - own.mean(0)) / torch.sqrt(own.var(0, unbiased=False) + norm.eps)
        torch.testing.assert_close(out[rows, t], expected)
        torch.testing.assert_close(norm.running_mean[t], 0.1 * own.mean(0))
        torch.testing.assert_close(norm.running_var[t], 0.9 + 0.1 * own.var(0, unbiased=True))
    # task 2 had one row: normalized with (and not changing) its running statistics
    assert torch.equal(norm.running_mean[2], torch.zeros(5)) and torch.equal(norm.running_var[2], torch.ones(5))
    # rows not labelled for task 0 do not change task 0's normalization of its own rows
    h2 = h.clone()
    h2[15:] = 100 * torch.randn(25, 5)
    torch.testing.assert_close(TaskNorm(3, 5).train()(h2, mask)[:15, 0], out[:15, 0])
    # running one task's path leaves the other tasks' statistics alone
    stats = norm.running_mean.clone(), norm.running_var.clone()
    norm(h, mask, torch.tensor([1]))
    assert torch.equal(norm.running_mean[[0, 2]], stats[0][[0, 2]])
    assert torch.equal(norm.running_var[[0, 2]], stats[1][[0, 2]])
    assert not torch.equal(norm.running_mean[1], stats[0][1])


def test_model_interface_still_holds_with_task_norm():
    model = _model()
    x = torch.randn(7, 6)
    model.eval()
    assert model(x).shape == (7, 4)
    tasks = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    torch.testing.assert_close(model.forward_tasks(x, tasks), model(x).gather(1, tasks[:, None]).squeeze(1))
    torch.testing.assert_close(model(x, tasks=torch.tensor([3, 1])), model(x)[:, [3, 1]])


# --- torchjd aggregators ------------------------------------------------------------------------

def _direct_update(model, batch, aggregator, lr):
    """torchjd called directly: mtl_backward on the encoder's features, then jac_to_grad, then SGD."""
    h = model.encode(batch.x)
    losses = []  # one head per task, each its own graph above the features (as mtl_backward expects)
    for t in batch.tasks.tolist():
        out = h @ model.head_weight[t] + model.head_bias[t]
        loss, _ = masked_task_means(pointwise_loss(out[:, None], batch.y[:, t:t + 1], batch.binary[t]),
                                    batch.mask[:, t:t + 1])
        losses.append(loss[0])
    mtl_backward(losses, features=h)
    shared = [p for n, p in model.named_parameters() if n.startswith("shared.")]
    jac_to_grad(shared, aggregator)
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_torchjd_method_gives_the_same_update_as_torchjd_directly(name):
    model = _model(task_norm=False)
    ours, direct = copy.deepcopy(model), copy.deepcopy(model)
    method = make_method(name)
    torch.manual_seed(7)  # GradDrop draws random numbers
    method.step(_batch(ours), torch.optim.SGD(ours.parameters(), lr=0.1), 1, 10)
    torch.manual_seed(7)
    batch = _batch(direct)
    _direct_update(direct, batch, AGGREGATORS[name](len(batch.tasks)), 0.1)
    for (k, a), (_, b) in zip(ours.named_parameters(), direct.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
    assert not torch.equal(ours.shared[0].weight, model.shared[0].weight)


# --- manifest and end to end --------------------------------------------------------------------

def test_manifest_names_every_method_and_rejects_unknown_ones():
    assert set(METHODS) == set(MTL_METHODS)
    with pytest.raises(ManifestError, match=r"training\.mtl_method: .*'upgrad'.*'connection_strength'.*got 'adam'"):
        parse_manifest({"dataset": "planted", "training": {"mtl_method": "adam"}})
    with pytest.raises(ManifestError, match=r"connection_strength.*set model\.task_norm to true"):
        parse_manifest({"dataset": "planted", "training": {"mtl_method": "connection_strength"}})
    with pytest.raises(ManifestError, match=r"training\.connection_strength\.schedule_epochs"):
        parse_manifest({"dataset": "planted", "model": {"task_norm": True},
                        "training": {"mtl_method": "connection_strength", "connection_strength": {"schedule_epochs": 0}}})
    m = parse_manifest({"dataset": "planted", "model": {"task_norm": True},
                        "training": {"mtl_method": "connection_strength", "connection_strength": {"schedule_epochs": 5}}})
    assert make_method(m.training.mtl_method, m.training).schedule_epochs == 5


def test_run_with_connection_strength_writes_priority(tmp_path):
    from affinity.cli import app

    manifest = {
        "dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 40}},
        "model": {"hidden": [8, 4], "activation": "tanh", "task_norm": True},
        "training": {"epochs": 4, "batch_size": 64, "mtl_method": "connection_strength"},
        "estimation": {"num_subsets": 12, "subset_size": 2, "projection_dim": 20},
        "grouping": {"k": 2},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    prio = json.loads((tmp_path / "out" / "priority.json").read_text())
    assert [layer["layer"] for layer in prio["layers"]] == ["shared.0", "shared.1"]
    assert prio["layers"][0]["units"] == 8 and len(prio["layers"][0]["top_task"]) == 8
    for layer in prio["layers"]:
        assert sum(layer["share"].values()) == pytest.approx(1.0)
        assert set(layer["share"]) <= set(prio["tasks"])
    assert prio["phase1_batches"] + prio["phase2_batches"] > 0
    assert "task priority" in result.output
