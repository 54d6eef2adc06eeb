"""The local backend: sharding does not change results; memory-mapped features."""

from __future__ import annotations

import copy

import numpy as np

from affinity.manifest import parse_manifest
from affinity.pipeline import run_job

JOB = {
    "dataset": {"source": "planted", "params": {"tasks": 4, "groups": 2, "rows_per_task": 60, "features": 6}},
    "model": {"hidden": [8], "activation": "tanh"},
    "training": {"epochs": 10, "batch_size": 64},
    "estimation": {"method": "grad_tag", "num_subsets": 12, "subset_size": 2, "projection_dim": 16},
    "grouping": {"k": 2, "method": "sdp"},
}


def _run(tmp_path, name, **compute):
    m = copy.deepcopy(JOB)
    m["compute"] = compute
    return run_job(parse_manifest(m), tmp_path / name)


def test_shard_size_does_not_change_the_result(tmp_path):
    one = _run(tmp_path, "one", shard_pairs=100_000)
    many = _run(tmp_path, "many", shard_pairs=7)
    np.testing.assert_allclose(many.gradients.features, one.gradients.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.estimate.matrix, one.estimate.matrix, rtol=1e-5, atol=1e-8)


def test_memory_mapped_features(tmp_path):
    ram = _run(tmp_path, "ram")
    mapped = _run(tmp_path, "mapped", memmap=True)
    assert isinstance(mapped.gradients.features, np.memmap)
    assert (tmp_path / "mapped" / "features.npy").is_file()
    assert mapped.gradients.features.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "mapped" / "features.npy"), ram.gradients.features)
    np.testing.assert_allclose(mapped.estimate.matrix, ram.estimate.matrix, rtol=1e-6)
