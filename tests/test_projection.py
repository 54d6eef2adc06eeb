import math

import numpy as np
import pytest
import torch

from affinity.projection import BlockProjector


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_inner_products_within_jl_bounds(kind):
    p, d, n = 5000, 400, 20
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(n, p, generator=gen, dtype=torch.float64)
    A /= A.norm(dim=1, keepdim=True)
    proj = BlockProjector(p, d, kind, seed=3, block_rows=777, dtype=torch.float64)
    B = proj.project_segments([A])
    true, est = A @ A.T, B @ B.T
    # JL: for unit vectors, |<Pa, Pb> - <a, b>| <= eps with eps = c * sqrt(log(n²/δ) / d); c = 2, δ = 1e-3.
    eps = 2 * math.sqrt(math.log(n * n / 1e-3) / d)
    assert float((est - true).abs().max()) <= eps
    # and norms concentrate much more tightly on average
    assert abs(float(torch.diagonal(est).mean()) - 1.0) < 0.05


def test_blocks_regenerate_the_same_matrix():
    cached = BlockProjector(1000, 16, seed=5, block_rows=128)
    uncached = BlockProjector(1000, 16, seed=5, block_rows=128, cache_bytes=0)
    assert uncached._cache is None
    full = cached.matrix()
    assert full.shape == (1000, 16)
    torch.testing.assert_close(uncached.rows(100, 700), full[100:700])
    torch.testing.assert_close(uncached.rows(0, 1000), full)
    assert set(torch.unique(full * math.sqrt(16)).tolist()) == {-1.0, 1.0}


def test_segments_equal_one_product():
    proj = BlockProjector(300, 8, "gaussian", seed=1, block_rows=50, dtype=torch.float64)
    g = torch.randn(5, 300, dtype=torch.float64)
    whole = g @ proj.matrix()
    parts = proj.project_segments([g[:, :37], g[:, 37:200], g[:, 200:]])
    torch.testing.assert_close(parts, whole)


def test_seed_changes_the_matrix():
    a = BlockProjector(100, 8, seed=0).matrix()
    b = BlockProjector(100, 8, seed=1).matrix()
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_bfloat16_products_stay_close_to_float32(kind):
    p, d = 3000, 64
    g = torch.randn(10, p, generator=torch.Generator().manual_seed(1))
    exact = BlockProjector(p, d, kind, seed=4, block_rows=1000)
    low = BlockProjector(p, d, kind, seed=4, block_rows=1000, precision="bfloat16")
    segments = [g[:, :1500], g[:, 1500:]]
    a, b = exact.project_segments(segments), low.project_segments(segments)
    assert b.dtype == torch.float32
    assert float((a - b).norm() / a.norm()) < 1e-2
    # the same matrix: the rebuilt projector (as on a Ray node) gives the same features
    rebuilt = BlockProjector.from_spec(low.spec(), "cpu", cache_bytes=0)
    torch.testing.assert_close(rebuilt.project_segments(segments), b)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="estimation.projection_precision='float16'"):
        BlockProjector(10, 2, precision="float16")
