import numpy as np
import pytest
import torch

from affinity.gradients import labelled_pairs, per_sample_gradients, projected_gradients, select_parameters
from affinity.manifest import ModelSpec
from affinity.models import build_model
from affinity.projection import BlockProjector


@pytest.fixture(params=[False, True], ids=["plain", "task_norm"])
def model(request):
    m = build_model(ModelSpec(hidden=[7, 5], task_norm=request.param), n_features=4, n_tasks=3, seed=0)
    if request.param:  # give the task norms distinct statistics
        m.train()
        m(torch.randn(64, 4))
    return m.eval()


def loop_gradients(model, names, x, tasks):
    """Reference: one sample at a time with autograd (how the research code does it)."""
    params = dict(model.named_parameters())
    out = []
    for xi, ti in zip(x, tasks):
        model.zero_grad()
        model(xi[None])[0, ti].backward()
        out.append(torch.cat([params[n].grad.reshape(-1).clone() for n in names]))
    return torch.stack(out)


@pytest.mark.parametrize("which", ["all", "encoder", "last"])
def test_per_sample_gradients_match_autograd_loop(model, which):
    names = select_parameters(model, which, last_layers=2)
    x = torch.randn(9, 4)
    tasks = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0])
    batched = torch.cat(per_sample_gradients(model, names, x, tasks), dim=1)
    torch.testing.assert_close(batched, loop_gradients(model, names, x, tasks))


def test_parameter_sets():
    m = build_model(ModelSpec(hidden=[7, 5]), 4, 3, seed=0)
    assert select_parameters(m, "last", 1) == ["head_weight", "head_bias"]
    assert "head_weight" not in select_parameters(m, "encoder")
    assert len(select_parameters(m, "all")) == len(list(m.parameters()))
    with pytest.raises(ValueError, match="estimation.last_layers=9 exceeds the model's 3 layers"):
        select_parameters(m, "last", 9)


def test_chunked_equals_unchunked_and_explicit_projection(model):
    names = select_parameters(model, "all")
    p = sum(dict(model.named_parameters())[n].numel() for n in names)
    X = torch.randn(40, 4)
    mask = np.random.default_rng(0).random((40, 3)) < 0.5
    rows, tasks = labelled_pairs(mask)
    proj = BlockProjector(p, 6, seed=2, block_rows=17)
    one = projected_gradients(model, X, rows, tasks, names, proj, chunk_rows=10_000, memory_mb=64)
    many = projected_gradients(model, X, rows, tasks, names, proj, chunk_rows=7, memory_mb=64)
    np.testing.assert_allclose(one.features, many.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one.base_output, many.base_output, rtol=1e-6, atol=1e-7)
    G = loop_gradients(model, names, X[torch.as_tensor(rows)], torch.as_tensor(tasks))
    np.testing.assert_allclose(one.features, (G @ proj.matrix()).numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected = model(X)[torch.as_tensor(rows), torch.as_tensor(tasks)].numpy()
    np.testing.assert_allclose(one.base_output, expected, rtol=1e-5, atol=1e-6)


def test_memory_budget_bounds_the_chunk(model, monkeypatch):
    import affinity.gradients as g

    seen = []
    real = g.gradients_and_outputs

    def spy(model, names, x, tasks):
        seen.append(x.shape[0])
        return real(model, names, x, tasks)

    monkeypatch.setattr(g, "gradients_and_outputs", spy)
    names = select_parameters(model, "all")
    p = sum(dict(model.named_parameters())[n].numel() for n in names)
    X = torch.randn(30, 4)
    rows, tasks = labelled_pairs(np.ones((30, 3), dtype=bool))
    # a tiny budget: 3 copies × 4 bytes × p per row
    budget_rows = (1 * 2**20) // (12 * p)
    projected_gradients(model, X, rows, tasks, names, BlockProjector(p, 4), chunk_rows=10_000, memory_mb=1)
    assert max(seen) <= budget_rows


class _SharedLinear(torch.nn.Module):
    """A Linear applied twice (weight sharing): the outer-product shortcut does not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class _SequenceModel(torch.nn.Module):
    """A Linear on 3-D input (rows × positions × features), mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(2, 5)
        self.out = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.embed(x.reshape(x.shape[0], 2, 2))).mean(1))


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.GELU(), torch.nn.Linear(6, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)),
    _SharedLinear,
    _SequenceModel,
], ids=["sequential", "shared_weights", "sequence_input"])
def test_other_models_match_autograd_loop(make):
    torch.manual_seed(0)
    m = make().eval()
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn(8, 4)
    tasks = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    fast = torch.cat(per_sample_gradients(m, names, x, tasks), dim=1)
    torch.testing.assert_close(fast, loop_gradients(m, names, x, tasks))


def test_linear_layers_skip_vmap(model, monkeypatch):
    """On the MLP only the per-task head (and task-norm) parameters go through torch.func."""
    import affinity.gradients as g

    through_vmap = []
    real = g.vmap_per_sample_gradients

    def spy(model, names, x, tasks):
        through_vmap.extend(names)
        return real(model, names, x, tasks)

    monkeypatch.setattr(g, "vmap_per_sample_gradients", spy)
    names = select_parameters(model, "all")
    x = torch.randn(6, 4)
    tasks = torch.tensor([0, 1, 2, 2, 1, 0])
    fast = torch.cat(per_sample_gradients(model, names, x, tasks), dim=1)
    assert through_vmap and not any(n.startswith("shared.") for n in through_vmap)
    reference = torch.cat(real(model, names, x, tasks), dim=1)
    torch.testing.assert_close(fast, reference)
