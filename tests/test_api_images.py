"""The service with images: an NPZ of images uploaded and run on, bad image uploads refused (4xx), and an
images/cnn job's memory and time estimated from the images' shape (refused past the limits)."""

from __future__ import annotations

import io

import numpy as np

from api.resources import DatasetShape, estimate_memory, estimate_seconds
from api.worker import Worker
from affinity.manifest import parse_manifest
from tests.test_api import assert_problem


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _images(n: int = 60, shape=(1, 8, 8), tasks: int = 3):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    Y = (rng.random((n, tasks)) < 0.5).astype(float)
    Y[:4] = [[0] * tasks, [1] * tasks, [0] * tasks, [1] * tasks]
    return images, Y


def test_upload_images_npz_and_run_on_it(service):
    client, settings, store, alice, _ = service
    images, Y = _images()
    r = client.post("/v1/datasets", files={"file": ("digits.npz", _npz(images=images, Y=Y))}, headers=alice)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "images" and ds["rows"] == 60 and ds["columns"] == ["images", "task_0", "task_1", "task_2"]
    # the kind must match what the upload holds, before queueing
    assert_problem(client.post("/v1/jobs", json={"dataset": {"source": ds["id"]}}, headers=alice), 422,
                   "dataset.kind", "images")
    assert_problem(client.post("/v1/jobs", json={"dataset": {"kind": "images", "source": ds["id"],
                                                             "tasks": ["a", "b"]}}, headers=alice), 422,
                   "dataset.tasks", "3 columns")
    body = {"dataset": {"kind": "images", "source": ds["id"]}, "model": {"channels": [4]},
            "training": {"epochs": 2, "batch_size": 32, "patience": 2},
            "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 6, "subset_size": 2,
                           "projection_dim": 8},
            "grouping": {"selection": "affinity", "k": 2}}
    job = client.post("/v1/jobs", json=body, headers=alice)
    assert job.status_code == 201, job.text
    assert Worker(settings, store, worker_id="w1").run_once()
    done = client.get(f"/v1/jobs/{job.json()['id']}", headers=alice).json()
    assert done["status"] == "succeeded", done
    groups = client.get(f"/v1/jobs/{job.json()['id']}/groups", headers=alice).json()
    assert sorted(t for g in groups["groups"] for t in g) == ["task_0", "task_1", "task_2"]


def test_bad_image_uploads_are_4xx(service):
    client, settings, store, alice, _ = service
    images, Y = _images()
    cases = [
        (_npz(images=images.reshape(60, -1)[:, :, None, None, None], Y=Y), "got shape (60, 64, 1, 1, 1)"),
        (_npz(images=images, Y=Y[:59]), "one row per image"),
        (_npz(images=images), "must hold 'Y'"),
        (_npz(images=images, Y=Y, mask=np.ones((60, 2), dtype=bool)), "'mask' must be boolean with the shape"),
        (_npz(images=images.astype(np.complex64), Y=Y), "dtype complex64"),
    ]
    for content, needle in cases:
        assert_problem(client.post("/v1/datasets", files={"file": ("x.npz", content)}, headers=alice), 422, needle)
    assert client.get("/v1/datasets", headers=alice).json()["total"] == 0


def test_images_paths_stay_in_the_data_root(service):
    client, settings, store, alice, _ = service
    images, Y = _images()
    (settings.data_root / "imgs.npz").write_bytes(_npz(images=images, Y=Y))
    ok = {"dataset": {"kind": "images", "source": "imgs.npz"}, "model": {"channels": [4]},
          "training": {"epochs": 1}, "estimation": {"method": "grad_tag", "num_subsets": 6, "subset_size": 2}}
    assert client.post("/v1/jobs", json=ok, headers=alice).status_code == 201
    outside = {**ok, "model": {"arch": "resnet18", "weights": "/etc/passwd"}}
    assert_problem(client.post("/v1/jobs", json=outside, headers=alice), 422, "model.weights", "outside")
    (settings.data_root / "noy.npz").write_bytes(_npz(images=images))
    assert_problem(client.post("/v1/jobs", json={**ok, "dataset": {"kind": "images", "source": "noy.npz"}},
                               headers=alice), 422, "dataset.labels")


def test_cnn_memory_and_time_follow_the_images():
    def job(model, **estimation):
        return parse_manifest({"dataset": {"kind": "images", "source": "digits"}, "model": model,
                               "estimation": {"method": "grad_tag", **estimation}})

    small = DatasetShape(1000, 64, 4, 4000, image=(1, 8, 8))
    large = DatasetShape(1000, 3 * 224 * 224, 4, 4000, image=(3, 224, 224))
    for model in ({"channels": [16, 32]}, {"arch": "resnet18", "task_norm": True}):
        m = job(model)
        assert estimate_memory(m, large).total > estimate_memory(m, small).total  # conv activations grow with pixels
        assert estimate_seconds(m, large).seconds > 100 * estimate_seconds(m, small).seconds  # conv work too
    resnet, small_net = job({"arch": "resnet18"}), job({"channels": [16, 32]})
    assert estimate_memory(resnet, small).total > estimate_memory(small_net, small).total + 4 * 11_000_000 * 4
    norms = job({"channels": [16, 32], "task_norm": True})
    assert estimate_seconds(norms, large).seconds > 3 * estimate_seconds(small_net, large).seconds  # a path per task
    assert estimate_memory(norms, large).total > estimate_memory(small_net, large).total


def test_a_too_large_images_job_is_refused(service):
    client, settings, store, alice, _ = service
    body = {"dataset": {"kind": "images", "source": "digits"}, "model": {"arch": "resnet18", "task_norm": True},
            "training": {"batch_size": 100000}}
    r = assert_problem(client.post("/v1/jobs", json=body, headers=alice), 422, "memory")
    assert any(e["field"] in ("model.arch", "model.channels") for e in r["errors"]), r
