"""The size and work of a ``cnn`` model (affinity/cnn.py) on images of a given shape, without building it, and
the cnn kind's memory and time estimates (the layered estimate of affinity/footprint.py on that cost).

What the estimate of an images job needs (affinity/footprint.py): the parameters (all; shared = all but the
heads and per-task norms), the conv activations of one row (floats of every conv layer's output,
one task path), the multiply-adds of one row's forward pass (one path), and the rows of a no-grad
evaluation batch (the model's ``max_batch_rows``). With ``model.task_norm`` every row runs one path
per task through the network (the caller multiplies by the tasks, as for the MLP's task norms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affinity.data.table import DataError
from affinity.footprint import DatasetShape, MemoryEstimate, ModelCost, TimeEstimate, layered_memory, layered_seconds
from affinity.manifest import Manifest

ACTIVATION_BUDGET = 2**24  # floats of the first conv's outputs per no-grad evaluation batch (MultiTaskCNN.max_batch_rows)


@dataclass(frozen=True)
class ConvCost:
    params: int
    shared: int
    activations: int  # floats of one row's conv outputs, one task path
    macs: int  # multiply-adds of one row's forward pass, one task path
    eval_rows: int  # rows per no-grad evaluation batch


def _down(n: int) -> int:  # a stride-2 conv or pool with "same" padding
    return (n + 1) // 2


def conv_layers(model: Any, image: tuple[int, int, int]) -> list[tuple[int, int, int, int, int, bool]]:
    """(in channels, out channels, kernel, out height, out width, bias) of every conv layer, input to output."""
    c, h, w = image
    layers = []
    if model.arch == "small":
        for out in model.channels:
            layers.append((c, out, 3, h, w, True))
            if min(h, w) >= 2:
                h, w = h // 2, w // 2
            c = out
        return layers
    h, w = _down(h), _down(w)
    layers.append((c, 64, 7, h, w, False))
    h, w, c = _down(h), _down(w), 64
    for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            ho, wo = (_down(h), _down(w)) if s == 2 else (h, w)
            layers.append((c, planes, 3, ho, wo, False))
            layers.append((planes, planes, 3, ho, wo, False))
            if s != 1 or c != planes:
                layers.append((c, planes, 1, ho, wo, False))
            c, h, w = planes, ho, wo
    return layers


def conv_cost(model: Any, image: tuple[int, int, int], tasks: int) -> ConvCost:
    layers = conv_layers(model, image)
    shared = sum(k * k * ci * co + (co if bias else 0) for ci, co, k, _, _, bias in layers)
    channels = sum(co for _, co, _, _, _, _ in layers)
    per_task_norms = model.task_norm
    norms = 2 * tasks * channels if per_task_norms else (0 if model.arch == "small" else 2 * channels)
    heads = tasks * (layers[-1][1] + 1)
    first = layers[0][1] * layers[0][3] * layers[0][4] * (tasks if per_task_norms else 1)
    return ConvCost(
        params=shared + norms + heads,
        shared=shared + (norms if not per_task_norms else 0),
        activations=sum(co * ho * wo for _, co, _, ho, wo, _ in layers),
        macs=sum(k * k * ci * co * ho * wo for ci, co, k, ho, wo, _ in layers),
        eval_rows=int(min(8192, max(16, ACTIVATION_BUDGET // max(first, 1)))),
    )


def cnn_cost(manifest: Manifest, shape: DatasetShape) -> ModelCost:
    """The conv net on the dataset's images, in the terms of the layered estimate (affinity/footprint.py)."""
    model, est = manifest.model, manifest.estimation
    if shape.image is None:
        raise DataError("dataset.kind: model.kind 'cnn' takes images but the dataset holds a table; set "
                        "dataset.kind to 'images' with an images dataset")
    c = conv_cost(model, shape.image, max(shape.tasks, 1))
    if est.params == "all":
        selected = c.params
    elif est.params == "encoder":
        selected = c.shared
    else:  # the last layer is the heads and per-task norms; more layers: all of them (an upper bound)
        selected = c.params - c.shared if est.last_layers == 1 else c.params
    return ModelCost(c.params, c.shared, c.activations, c.macs, selected, ("model.arch", "model.channels"),
                     c.eval_rows)


def cnn_memory(manifest: Manifest, shape: DatasetShape) -> MemoryEstimate:
    return layered_memory(manifest, shape, cnn_cost(manifest, shape))


def cnn_seconds(manifest: Manifest, shape: DatasetShape) -> TimeEstimate:
    return layered_seconds(manifest, shape, cnn_cost(manifest, shape))
