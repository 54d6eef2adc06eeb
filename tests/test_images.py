"""Images (data kind ``images``) and conv nets (model kind ``cnn``): reading and its errors, the model
interface the estimators rely on, per-channel connection strength, a small job end to end.

Small and seeded: 8×8 digits, tiny synthetic images, a few epochs.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from affinity.cli import app
from affinity.cnn import MultiTaskCNN, TaskNorm2d
from affinity.data.table import DataError
from affinity.gradients import per_sample_gradients, select_parameters
from affinity.kinds import load_data, make_model
from affinity.manifest import ManifestError, parse_manifest
from affinity.models import task_forward, task_outputs
from affinity.optim.priority import layer_priorities
from affinity.training import TensorData

runner = CliRunner()


def images_manifest(source, **dataset):
    return parse_manifest({"dataset": {"kind": "images", "source": str(source), **dataset}})


def write_npz(path, n=40, shape=(3, 6, 6), tasks=2, seed=0, **extra):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    Y = (rng.random((n, tasks)) < 0.5).astype(float)
    Y[:, 0] = np.arange(n) % 2
    arrays = {"images": images, "Y": Y, **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return images, Y


# -- reading ------------------------------------------------------------------------------------------------

def test_npz_images_scaled_labels_and_mask(tmp_path):
    images, Y = write_npz(tmp_path / "a.npz", n=40)
    mask = np.ones_like(Y, dtype=bool)
    mask[:5, 1] = False
    Y_nan = Y.copy()
    Y_nan[5:8, 0] = np.nan
    np.savez(tmp_path / "b.npz", images=images, Y=Y_nan, mask=mask, task_names=np.array(["odd", "coin"]))
    from affinity.data.images import read_images

    table = read_images(images_manifest(tmp_path / "b.npz").dataset)
    assert table.X.shape == (40, 3, 6, 6)
    np.testing.assert_allclose(table.X, images / 255.0)
    assert table.task_names == ["odd", "coin"]
    assert np.isnan(table.Y[:5, 1]).all() and np.isnan(table.Y[5:8, 0]).all()
    assert np.isfinite(table.Y[8:]).all()
    data = load_data(images_manifest(tmp_path / "b.npz"))  # split and per-pixel standardized, still 4-D
    assert data.X.shape == (40, 3, 6, 6) and data.X.dtype == np.float32
    fit = data.train.any(axis=1)
    np.testing.assert_allclose(data.X[fit].mean(axis=0), 0.0, atol=1e-5)


def test_npz_with_label_table(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "x.npz", images=rng.random((30, 5, 5)).astype(np.float32))  # N×H×W: one channel
    labels = np.arange(30) % 2
    (tmp_path / "labels.csv").write_text("a,b\n" + "".join(f"{v},{1 - v}\n" for v in labels))
    m = parse_manifest({"dataset": {"kind": "images", "source": "x.npz", "labels": "labels.csv", "tasks": ["a", "b"]}},
                       base_dir=tmp_path)
    assert m.model.kind == "cnn"  # images default to the conv net
    from affinity.data.images import read_images

    table = read_images(m.dataset)
    assert table.X.shape == (30, 1, 5, 5) and table.task_names == ["a", "b"]
    np.testing.assert_array_equal(table.Y[:, 0], labels)


def test_folder_of_images_with_label_table(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i in range(24):
        pixels = rng.integers(0, 256, size=(7, 9), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{'' if i < 3 else (i // 2) % 2}")
    (tmp_path / "labels.csv").write_text("file,even,half\n" + "\n".join(rows) + "\n")
    m = parse_manifest({"dataset": {"kind": "images", "source": "imgs", "labels": "labels.csv",
                                    "tasks": ["even", "half"]}}, base_dir=tmp_path)
    from affinity.data.images import read_images

    table = read_images(m.dataset)
    assert table.X.shape == (24, 1, 7, 9)  # height 7, width 9
    np.testing.assert_allclose(table.X[5, 0], np.asarray(Image.open(folder / "5.png")) / 255.0)
    assert np.isnan(table.Y[:3, 1]).all()


def test_digits_as_images():
    m = parse_manifest({"dataset": {"kind": "images", "source": "digits"}})
    from affinity.data.digits import make_digits
    from affinity.data.images import read_images

    table, flat = read_images(m.dataset), make_digits({})
    assert table.X.shape == (1797, 1, 8, 8) and table.task_names == flat.task_names
    np.testing.assert_allclose(table.X.reshape(1797, 64) * 16, flat.X)
    np.testing.assert_array_equal(table.Y, flat.Y)


def _folder(tmp_path, files: dict[str, bytes | None], labels: str):
    folder = tmp_path / "f"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        if content is None:
            Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / name)
        else:
            (folder / name).write_bytes(content)
    (tmp_path / "l.csv").write_text(labels)
    return parse_manifest({"dataset": {"kind": "images", "source": "f", "labels": "l.csv", "tasks": ["t"]}},
                          base_dir=tmp_path).dataset


@pytest.mark.parametrize("case, expected", [
    ("rank", "'images' must be N×C×H×W"),
    ("rows", "'Y' has 39 rows but 'images' has 40"),
    ("no_images", "holds no array 'images'"),
    ("no_labels", "has no labels"),
    ("mask", "'mask' has shape"),
    ("dtype", "'images' has dtype"),
    ("nan", "NaN or infinite pixels"),
])
def test_npz_errors_name_the_array(tmp_path, case, expected):
    from affinity.data.images import read_images

    rng = np.random.default_rng(0)
    Y = (np.arange(40) % 2).astype(float)[:, None]
    good = rng.random((40, 1, 4, 4))
    arrays = {
        "rank": {"images": rng.random((40, 16)), "Y": Y},
        "rows": {"images": good, "Y": Y[:39]},
        "no_images": {"X": rng.random((40, 16)), "Y": Y},
        "no_labels": {"images": good},
        "mask": {"images": good, "Y": Y, "mask": np.ones((40, 2), dtype=bool)},
        "dtype": {"images": good.astype(np.complex64), "Y": Y},
        "nan": {"images": np.where(good > 0.99, np.nan, good), "Y": Y},
    }[case]
    np.savez(tmp_path / "e.npz", **arrays)
    with pytest.raises(DataError, match=expected.replace("(", r"\(")):
        read_images(images_manifest(tmp_path / "e.npz").dataset)


def test_folder_errors(tmp_path):
    from affinity.data.images import read_images

    labels = "file,t\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(12))
    spec = _folder(tmp_path, {f"{i}.png": None for i in range(11)}, labels)
    with pytest.raises(DataError, match=r"row 11: image file '11.png' is not in"):
        read_images(spec)
    spec = _folder(tmp_path, {"11.png": b"this is not an image"}, labels)
    with pytest.raises(DataError, match=r"11.png \(dataset.labels row 11\) is not an image file"):
        read_images(spec)
    Image.fromarray(np.zeros((5, 4), dtype=np.uint8)).save(tmp_path / "f" / "11.png")
    with pytest.raises(DataError, match=r"image '11.png' is 4×5 pixels but '0.png' is 4×4"):
        read_images(spec)
    spec = _folder(tmp_path, {}, "name,t\n0.png,1\n")
    with pytest.raises(DataError, match=r"dataset.image_column 'file' is not a column of l.csv"):
        read_images(spec)
    spec.labels = None
    with pytest.raises(DataError, match="dataset.labels is required for a folder"):
        read_images(spec)
    with pytest.raises(DataError, match="neither a built-in image dataset"):
        read_images(images_manifest(tmp_path / "missing.npz").dataset)


def test_manifest_fields_of_kinds():
    with pytest.raises(ManifestError, match="dataset.labels does not apply to dataset.kind 'table'"):
        parse_manifest({"dataset": {"source": "digits", "labels": "l.csv"}})
    with pytest.raises(ManifestError, match=r"model.arch: does not apply to model.kind 'mlp'"):
        parse_manifest({"dataset": "digits", "model": {"arch": "resnet18"}})
    with pytest.raises(ManifestError, match=r"model.hidden: does not apply to model.kind 'cnn'"):
        parse_manifest({"dataset": {"kind": "images", "source": "digits"}, "model": {"hidden": [8]}})
    with pytest.raises(ManifestError, match=r"model.kind 'cnn' takes dataset.kind 'images', not 'table'"):
        parse_manifest({"dataset": "digits", "model": {"kind": "cnn"}})


# -- the model's interface ------------------------------------------------------------------------------------

def tiny_images(shape=(1, 8, 8), n=48, tasks=3, seed=0):
    from affinity.data.split import split_table
    from affinity.data.table import TaskTable

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *shape))
    Y = (rng.random((n, tasks)) < 0.5).astype(float)
    Y[rng.random((n, tasks)) < 0.2] = np.nan
    Y[:4] = [[0] * tasks, [1] * tasks, [0] * tasks, [1] * tasks]
    table = TaskTable(X=X, Y=Y, task_names=[f"t{i}" for i in range(tasks)], task_types=["binary"] * tasks,
                      feature_names=["pixels"])
    return split_table(table, 0.3, 0)


def cnn(data, **model):
    m = parse_manifest({"dataset": {"kind": "images", "source": "digits"}, "model": model})
    net = make_model(m.model, data, 0)
    with torch.no_grad():  # off the initialization: distinct per-task norms
        for module in net.modules():
            if isinstance(module, TaskNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("model, shape", [
    ({"task_norm": True}, (1, 8, 8)),
    ({"task_norm": False, "channels": [4, 6, 8]}, (2, 8, 8)),
    ({"arch": "resnet18", "task_norm": True}, (3, 16, 16)),
])
def test_per_sample_gradients_equal_autograd(model, shape):
    data = tiny_images(shape)
    net = cnn(data, **model)
    names = select_parameters(net, "encoder")
    own = set(net.task_parameters())
    assert names and not own & set(names)  # heads and per-task norms are not differentiated
    assert all("norm" not in n and "bn" not in n and not n.startswith("head_") for n in names)
    x = torch.as_tensor(data.X[:2])
    tasks = torch.tensor([2, 1])
    got = per_sample_gradients(net, names, x, tasks)
    params = dict(net.named_parameters())
    for b in range(2):
        out = task_outputs(net, x[b:b + 1], tasks[b:b + 1]).sum()
        ref = torch.autograd.grad(out, [params[n] for n in names])
        for n, g, r in zip(names, got, ref):
            torch.testing.assert_close(g[b], r.reshape(-1), rtol=1e-4, atol=1e-6, msg=n)


def test_task_paths_and_masked_statistics():
    data = tiny_images((2, 6, 6), tasks=3)
    net = cnn(data, task_norm=True, channels=[5])
    x = torch.as_tensor(data.X[:10])
    tasks = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    torch.testing.assert_close(net.forward_tasks(x, tasks), net(x).gather(1, tasks[:, None]).squeeze(1))
    torch.testing.assert_close(net(x, tasks=torch.tensor([2, 0])), net(x)[:, [2, 0]])
    # training: task t is normalized with the statistics of its own labelled rows, and only its running ones move
    norm = net.backbone[0].norm
    before = norm.running_mean.clone()
    mask = torch.zeros(10, 3, dtype=torch.bool)
    mask[:6, 0] = True
    mask[4:, 1] = True
    net.train()
    task_forward(net, x, mask)
    conv = net.backbone[0].conv(x)
    for t, rows in ((0, slice(0, 6)), (1, slice(4, 10))):
        expected = before[t].lerp(conv[rows].mean(dim=(0, 2, 3)).detach(), norm.momentum)
        torch.testing.assert_close(norm.running_mean[t], expected)
    torch.testing.assert_close(norm.running_mean[2], before[2])  # no labelled rows: unchanged


def test_resnet_weights_from_a_path(tmp_path):
    from affinity.cnn import _torchvision_models

    reference = _torchvision_models().resnet18(weights=None)
    with torch.no_grad():
        reference.bn1.weight.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    data = tiny_images((1, 16, 16), tasks=2)
    m = parse_manifest({"dataset": {"kind": "images", "source": "digits"},
                        "model": {"arch": "resnet18", "task_norm": True, "weights": str(tmp_path / "r18.pth")}})
    net = make_model(m.model, data, 0)
    torch.testing.assert_close(net.backbone.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    for t in range(2):
        torch.testing.assert_close(net.backbone.bn1.weight[t], reference.bn1.weight)
    torch.testing.assert_close(net.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a state dict")
    with pytest.raises(DataError, match="model.weights bad.pth: cannot be read as a torch state dict"):
        cnn(data, arch="resnet18", weights=str(tmp_path / "bad.pth"))


# -- connection strength per output channel -------------------------------------------------------------------

@pytest.mark.parametrize("model", [{"task_norm": True, "channels": [4, 6]}, {"arch": "resnet18", "task_norm": True}])
def test_connection_strength_per_channel_matches_direct_computation(model):
    data = tiny_images((3, 8, 8), tasks=3)
    net = cnn(data, **model)
    layers = layer_priorities(net)
    assert len(layers) == len(net.task_norm_layers()) > 0
    for (name, strength, top), (_, conv, norm) in zip(layers, net.task_norm_layers()):
        W = conv.weight.detach().double().numpy()
        gamma, var = norm.weight.detach().double().numpy(), norm.running_var.double().numpy()
        channels = W.shape[0]
        assert strength.shape == (3, channels)
        direct = np.zeros((3, channels))
        for t in range(3):
            for p in range(channels):  # the kernel of output channel p summed over input channels and pixels
                kernel = float(np.sum(W[p] ** 2))
                direct[t, p] = gamma[t, p] ** 2 / (var[t, p] + 1e-5) * kernel
        direct /= direct.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(strength.double().numpy(), direct, rtol=1e-5)
        np.testing.assert_array_equal(top.numpy(), direct.argmax(axis=0))


def test_connection_strength_training_writes_per_channel_priority(tmp_path):
    np.savez(tmp_path / "d.npz", images=tiny_images((1, 8, 8), n=60).X, Y=tiny_images((1, 8, 8), n=60).Y)
    job = {"dataset": {"kind": "images", "source": str(tmp_path / "d.npz"), "standardize": False},
           "model": {"task_norm": True, "channels": [4, 6]},
           "training": {"epochs": 2, "batch_size": 16, "mtl_method": "connection_strength", "patience": 2},
           "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 6, "subset_size": 2,
                          "projection_dim": 8},
           "grouping": {"selection": "affinity", "k": 2}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = runner.invoke(app, ["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    priority = json.loads((tmp_path / "out" / "priority.json").read_text())
    assert [layer["layer"] for layer in priority["layers"]] == ["backbone.0.conv", "backbone.1.conv"]
    assert [layer["units"] for layer in priority["layers"]] == [4, 6]  # one entry per output channel
    assert all(len(layer["top_task"]) == layer["units"] and set(layer["top_task"]) <= set(priority["tasks"])
               for layer in priority["layers"])
    assert priority["phase1_batches"] + priority["phase2_batches"] > 0


# -- a job end to end -----------------------------------------------------------------------------------------

def test_small_job_end_to_end(tmp_path):
    images, _ = write_npz(tmp_path / "d.npz", n=60, shape=(1, 8, 8), tasks=4)
    job = {"dataset": {"kind": "images", "source": "d.npz"},
           "model": {"channels": [4, 8]},
           "training": {"epochs": 3, "batch_size": 32, "patience": 2},
           "estimation": {"method": "grad_tag", "params": "encoder", "num_subsets": 12, "subset_size": 2,
                          "projection_dim": 16},
           "grouping": {"selection": "affinity", "k": 2}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = runner.invoke(app, ["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "images of 1×8×8" in result.output
    groups = json.loads((tmp_path / "out" / "groups.json").read_text())
    assert sorted(t for g in groups["groups"] for t in g) == [f"task_{i}" for i in range(4)]
    model = torch.load(tmp_path / "out" / "model.pt", weights_only=False)
    assert any(k.startswith("backbone.0.conv") for k in model["state_dict"])


def test_bad_images_job_is_one_line(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((10, 4)), Y=np.zeros(10))
    job = {"dataset": {"kind": "images", "source": str(tmp_path / "bad.npz")}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    result = runner.invoke(app, ["run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "'images' must be N×C×H×W" in result.output and "Traceback" not in result.output


def test_cnn_is_a_multitask_cnn():
    assert isinstance(cnn(tiny_images(), task_norm=True), MultiTaskCNN)


SMALL = {"channels": [3, 4]}


@pytest.mark.parametrize("method, mtl, model", [
    ("exact", "equal", SMALL), ("scratch", "equal", {**SMALL, "task_norm": True}),
    ("tag_lookahead", "equal", {**SMALL, "task_norm": True}),
    ("gradient_cosine", "equal", {**SMALL, "task_norm": True}), ("grad_tag", "upgrad", {**SMALL, "task_norm": True}),
    ("exact", "equal", {**SMALL, "task_norm": True}),
])
def test_every_estimator_and_an_aggregator_run_on_a_cnn(tmp_path, method, mtl, model):
    from affinity.pipeline import run_job

    data = tiny_images((1, 6, 6), n=40)
    np.savez(tmp_path / "d.npz", images=data.X, Y=data.Y)
    m = parse_manifest({"dataset": {"kind": "images", "source": str(tmp_path / "d.npz")}, "model": model,
                        "training": {"epochs": 2, "batch_size": 16, "patience": 2, "mtl_method": mtl},
                        "estimation": {"method": method, "num_subsets": 6, "subset_size": 2, "projection_dim": 8},
                        "grouping": {"selection": "affinity", "k": 2}})
    result = run_job(m)
    assert result.estimate.matrix.shape == (3, 3) and np.isfinite(result.estimate.matrix).all()


def test_lookahead_steps_leave_the_running_statistics_alone():
    from affinity.estimators.tag_lookahead import LookaheadRecorder

    data = tiny_images((1, 6, 6), n=20)
    net = cnn(data, task_norm=True, channels=[3]).train()
    before = {k: v.clone() for k, v in net.named_buffers()}
    t = TensorData.from_split(data, torch.device("cpu"))
    recorder = LookaheadRecorder(3, 0.01, 1, t.binary)
    recorder(net, t.X, t.Y, t.train)
    assert recorder.counts.sum() > 0
    assert all(torch.equal(before[k], v) for k, v in net.named_buffers())


def test_shared_batch_norm_is_pure_inside_a_transform():
    from torch.func import functional_call, grad

    from affinity.cnn import SharedNorm2d

    norm = SharedNorm2d(3).train()
    x = torch.randn(4, 3, 2, 2)
    before = {k: v.clone() for k, v in norm.named_buffers()}
    g = grad(lambda w: functional_call(norm, {"weight": w}, (x,)).pow(2).sum())(norm.weight.detach())
    assert g.shape == (3,) and all(torch.equal(before[k], v) for k, v in norm.named_buffers())
    norm(x)  # outside a transform: plain batch norm, its statistics move
    assert not torch.equal(before["running_mean"], norm.running_mean)


@pytest.mark.parametrize("model, shape, tasks", [
    ({"task_norm": True}, (1, 8, 8), 15), ({"channels": [8, 16, 32]}, (3, 32, 32), 4),
    ({"arch": "resnet18", "task_norm": True}, (3, 32, 32), 3), ({"arch": "resnet18"}, (1, 28, 28), 2),
])
def test_footprint_counts_the_built_model(model, shape, tasks):
    from affinity.cnn_footprint import conv_cost

    net = cnn(tiny_images(shape, n=8, tasks=tasks), **model)
    cost = conv_cost(parse_manifest({"dataset": {"kind": "images", "source": "digits"}, "model": model}).model,
                     shape, tasks)
    own = set(net.task_parameters())
    assert cost.params == sum(p.numel() for p in net.parameters())
    assert cost.shared == sum(p.numel() for n, p in net.named_parameters() if n not in own)
    assert cost.eval_rows == net.max_batch_rows
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    outputs = []
    hooks = [c.register_forward_hook(lambda m, i, o: outputs.append(o[:1].numel())) for c in convs]
    net(torch.zeros(1, *shape), tasks=torch.tensor([0]))
    for h in hooks:
        h.remove()
    assert cost.activations == sum(outputs)  # every conv's output floats, one task path
