"""Model kind ``cnn``: a conv net on images (data kind ``images``) with one head per task.

Two architectures (``model.arch``):

- ``small``: one block per width of ``model.channels``: 3×3 conv (padding 1) → [per-task batch
  norm] → activation → 2×2 max pool (while the image is at least 2 pixels wide), then global
  average pooling;
- ``resnet18``: torchvision's ResNet-18 without its classifier (its first conv takes the images'
  channels; randomly initialized, or loaded from ``model.weights``, a torchvision state dict on
  disk — never downloaded).

With ``model.task_norm`` every conv layer's channels are normalized per task (:class:`TaskNorm2d`:
own scale γ_t, shift β_t and running statistics per task), so each task has its own path through
the network, as connection strength needs (Jeong & Yoon: priority per output channel of a conv,
kernel summed; affinity/optim/priority.py). Without it the small net has no normalization and
ResNet-18 keeps torchvision's shared batch norm.

The module has the interface of affinity/models.py: ``forward(x, mask=None, tasks=None)`` (all
tasks' outputs; with task norms the label mask gives each task the batch statistics of its own
labelled rows), ``forward_tasks`` (row b through task ``tasks[b]``'s path only), ``layers()`` (the
conv parameters block by block, then the task-specific ones — heads and per-task norms — as the
last layer, so ``estimation.params: encoder`` differentiates all but heads and norms),
``task_parameters()``, ``task_norm_layers()`` (each conv with the per-task norm that follows it)
and ``max_batch_rows``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from affinity.cnn_footprint import ACTIVATION_BUDGET
from affinity.data.table import DataError, SplitTable
from affinity.manifest import ModelSpec
from affinity.models import ACTIVATIONS, _transformed, update_task_statistics



class Route:
    """Which task path each row of the current forward pass takes; set by :class:`MultiTaskCNN` around a
    forward and read by every :class:`TaskNorm2d` of the network (the conv layers between them see a
    plain batch of ``rows × tasks`` images)."""

    def __init__(self) -> None:
        self.batch: int | None = None  # rows of the input
        self.tasks: torch.Tensor | None = None  # task indices whose paths run (each row through all of them)
        self.mask: torch.Tensor | None = None  # (rows, len(tasks)): the rows labelled for each task (training)
        self.rows: torch.Tensor | None = None  # one task per row (forward_tasks in eval mode)

    @contextmanager
    def use(self, **values):
        old = dict(self.__dict__)
        self.__dict__.update(values)
        try:
            yield
        finally:
            self.__dict__.update(old)


class TaskNorm2d(nn.Module):
    """Per-task batch normalization of conv channels: the 2-D counterpart of affinity.models.TaskNorm.

    Input ``(rows, C, H, W)`` (the same activations for every task, at the first norm) or
    ``(rows × k, C, H, W)`` (k task paths per row, task-major within a row); output
    ``(rows × k, C, H, W)``. In training mode task t is normalized with the mean and variance over
    its own labelled rows (the route's mask; every row without one) and all pixels, and only tasks
    with at least two such rows update their running statistics; otherwise the running statistics
    are used (and, inside a torch.func transform, not updated). With ``route.rows`` row b is
    normalized by task ``rows[b]``'s running statistics.
    """

    def __init__(self, n_tasks: int, channels: int, route: Route, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum, self.route = eps, momentum, route
        self.weight = nn.Parameter(torch.ones(n_tasks, channels))
        self.bias = nn.Parameter(torch.zeros(n_tasks, channels))
        self.register_buffer("running_mean", torch.zeros(n_tasks, channels))
        self.register_buffer("running_var", torch.ones(n_tasks, channels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = self.route
        if r.rows is not None:
            t = r.rows
            scale = self.weight[t] / torch.sqrt(self.running_var[t] + self.eps)
            shift = self.bias[t] - self.running_mean[t] * scale
            return h * scale[:, :, None, None] + shift[:, :, None, None]
        idx = r.tasks if r.tasks is not None else torch.arange(self.weight.shape[0], device=h.device)
        k = idx.shape[0]
        b = r.batch if r.batch is not None else h.shape[0]
        shape = h.shape[1:]
        h5 = h.unsqueeze(1).expand(b, k, *shape) if h.shape[0] == b else h.reshape(b, k, *shape)
        run_mean, run_var = self.running_mean[idx], self.running_var[idx]
        if self.training and b > 1:
            m = r.mask.to(h.dtype) if r.mask is not None else h.new_ones(b, k)
            labelled = m.sum(0)
            enough = (labelled >= 2)[:, None]
            c = (labelled * shape[1] * shape[2]).clamp_min(1)[:, None]
            batch_mean = torch.einsum("bk,bkchw->kc", m, h5) / c
            batch_var = torch.einsum("bk,bkchw->kc", m, (h5 - batch_mean[None, :, :, None, None]) ** 2) / c
            mean = torch.where(enough, batch_mean, run_mean)
            var = torch.where(enough, batch_var, run_var)
            update_task_statistics(self, idx, enough, batch_mean, batch_var, c, h)
        else:
            mean, var = run_mean, run_var
        scale = self.weight[idx] / torch.sqrt(var + self.eps)
        shift = self.bias[idx] - mean * scale
        out = h5 * scale[None, :, :, None, None] + shift[None, :, :, None, None]
        return out.reshape(b * k, *shape)


class SharedNorm2d(nn.BatchNorm2d):
    """Plain (shared) batch norm, as torchvision's, whose running statistics stay as they are inside a torch.func
    transform (where a module must be a pure function: TAG's lookahead steps)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and h.shape[0] * h.shape[2] * h.shape[3] < 2:
            # one value per channel (a batch of one row at a 1×1 stage, e.g. ResNet-18's last on ≤ 32 px images):
            # no batch statistics to take; the running ones normalize it and stay as they are
            return nn.functional.batch_norm(h, self.running_mean, self.running_var, self.weight, self.bias, False,
                                            0.0, self.eps)
        if self.training and (_transformed(h) or _transformed(self.weight)):
            return nn.functional.batch_norm(h, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(h)


class ConvBlock(nn.Module):
    """3×3 conv → [per-task batch norm] → activation → [2×2 max pool]."""

    def __init__(self, c_in: int, c_out: int, norm: nn.Module | None, activation: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = norm
        self.act = ACTIVATIONS[activation]()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.conv(h)
        if self.norm is not None:
            h = self.norm(h)
        return self.pool(self.act(h))


def small_backbone(spec: ModelSpec, image_shape: tuple[int, int, int], n_tasks: int,
                   route: Route) -> tuple[nn.Module, int]:
    c, height, width = image_shape
    blocks: list[nn.Module] = []
    for out in spec.channels:
        pool = min(height, width) >= 2
        blocks.append(ConvBlock(c, out, TaskNorm2d(n_tasks, out, route) if spec.task_norm else None,
                                spec.activation, pool))
        c, height, width = out, height // 2 if pool else height, width // 2 if pool else width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten()), c


def _torchvision_models():
    """``torchvision.models`` (affinity/torchvision_compat.py makes it importable on any build of torch)."""
    from affinity.torchvision_compat import import_torchvision

    if import_torchvision() is None:
        raise DataError("model.arch 'resnet18' needs torchvision; install the project as README says "
                        "(pip install -e .)")
    import torchvision.models as models

    return models


def resnet18_backbone(spec: ModelSpec, image_shape: tuple[int, int, int], n_tasks: int,
                      route: Route) -> tuple[nn.Module, int]:
    models = _torchvision_models()
    norm = (lambda channels: TaskNorm2d(n_tasks, channels, route)) if spec.task_norm else SharedNorm2d
    net = models.resnet18(weights=None, norm_layer=norm)
    channels = image_shape[0]
    if channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    width = net.fc.in_features
    net.fc = nn.Identity()
    if spec.weights is not None:
        load_resnet_weights(net, spec.weights, channels)
    return net, width


def load_resnet_weights(net: nn.Module, path: str, channels: int) -> None:
    """A torchvision ResNet-18 state dict into ``net``: the classifier dropped, batch-norm entries copied to
    every task's row of a per-task norm, the first conv summed over RGB for single-channel images."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"model.weights {path!r} is not a file; give a torchvision ResNet-18 state dict (.pth)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming the field
        raise DataError(f"model.weights {file.name}: cannot be read as a torch state dict ({type(exc).__name__}); "
                        "give a file saved with torch.save(model.state_dict())") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"model.weights {file.name} is not a state dict (a mapping of names to tensors); save "
                        "model.state_dict()")
    modules = dict(net.named_modules())
    own = net.state_dict()
    mapped = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        module = modules.get(key.rsplit(".", 1)[0])
        if isinstance(module, TaskNorm2d) and value.dim() == 1:
            value = value.expand(module.weight.shape[0], -1)
        elif key == "conv1.weight" and value.dim() == 4 and value.shape[1] != channels:
            if channels != 1:
                raise DataError(f"model.weights {file.name}: conv1 takes {value.shape[1]} channels but the images "
                                f"have {channels}; give images of {value.shape[1]} channels (or 1)")
            value = value.sum(1, keepdim=True)
        if key in own and own[key].shape != value.shape:
            raise DataError(f"model.weights {file.name}: {key} has shape {tuple(value.shape)}, ResNet-18 expects "
                            f"{tuple(own[key].shape)}; give a torchvision ResNet-18 state dict")
        mapped[key] = value.clone()
    missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in mapped if k not in own)
    if missing or unexpected:
        raise DataError(f"model.weights {file.name} is not a ResNet-18 state dict (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); give a torchvision ResNet-18 state dict")
    net.load_state_dict(mapped, strict=False)


BACKBONES = {"small": small_backbone, "resnet18": resnet18_backbone}


class MultiTaskCNN(nn.Module):
    """A conv backbone (features per row, or per row and task with task norms) and one linear head per task."""

    takes_mask = True  # forward(x, mask, tasks): affinity.models.task_forward passes the label mask

    def __init__(self, backbone: nn.Module, width: int, n_tasks: int, route: Route,
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.backbone = backbone
        self.route = route
        self.head_weight = nn.Parameter(torch.empty(n_tasks, width))
        self.head_bias = nn.Parameter(torch.zeros(n_tasks))
        nn.init.normal_(self.head_weight, std=width ** -0.5)
        self._pairs = _norm_pairs(self)
        first = next(m for m in self.modules() if isinstance(m, nn.Conv2d))
        c, h, w = image_shape
        per_row = first.out_channels * h * w // (first.stride[0] * first.stride[1]) * (n_tasks if self._pairs else 1)
        self.max_batch_rows = int(min(8192, max(16, ACTIVATION_BUDGET // max(per_row, 1))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                tasks: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs ``(rows, n_tasks)``, or ``(rows, len(tasks))`` for the given task indices."""
        if not self._pairs:
            h = self.backbone(x)
            w, b = (self.head_weight, self.head_bias) if tasks is None else (self.head_weight[tasks],
                                                                             self.head_bias[tasks])
            return h @ w.T + b
        idx = tasks if tasks is not None else torch.arange(self.n_tasks, device=x.device)
        with self.route.use(batch=x.shape[0], tasks=idx, mask=None if mask is None else mask[:, idx], rows=None):
            h = self.backbone(x)
        h = h.reshape(x.shape[0], idx.shape[0], -1)
        return (h * self.head_weight[idx]).sum(-1) + self.head_bias[idx]

    def forward_tasks(self, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        if self._pairs and self.training:
            return self.forward(x).gather(1, tasks[:, None]).squeeze(1)
        if self._pairs:
            with self.route.use(rows=tasks):
                h = self.backbone(x)
        else:
            h = self.backbone(x)
        return (h * self.head_weight[tasks]).sum(-1) + self.head_bias[tasks]

    def task_parameters(self) -> list[str]:
        """Heads and per-task norms (axis 0 indexes the task)."""
        return ["head_weight", "head_bias"] + [f"{norm}.{p}" for _, norm in self._pairs for p in ("weight", "bias")]

    def task_norm_layers(self) -> list[tuple[str, nn.Conv2d, TaskNorm2d]]:
        """Each conv layer with the per-task norm of its output channels (empty without task norms)."""
        return [(conv, self.get_submodule(conv), self.get_submodule(norm)) for conv, norm in self._pairs]

    def layers(self) -> list[list[str]]:
        """Shared parameters block by block (input to output), then the task-specific ones (heads, norms)."""
        own = set(self.task_parameters())
        groups: dict[str, list[str]] = {}
        for name, _ in self.named_parameters():
            if name in own:
                continue
            parts = name.split(".")
            key = ".".join(parts[:3] if len(parts) > 3 and parts[2].isdigit() else parts[:2])
            groups.setdefault(key, []).append(name)
        return [*groups.values(), self.task_parameters()]


def _norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) module names: each TaskNorm2d with the conv whose output it normalizes (the conv it
    follows in registration order, as in ConvBlock and torchvision's BasicBlock and downsample)."""
    pairs, last_conv = [], None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv = name
        elif isinstance(module, TaskNorm2d):
            if last_conv is None or model.get_submodule(last_conv).out_channels != module.weight.shape[1]:
                raise ValueError(f"task norm {name} follows no conv layer of its width")
            pairs.append((last_conv, name))
    return pairs


def build_cnn(spec: ModelSpec, data: SplitTable, seed: int) -> MultiTaskCNN:
    """A fresh multitask conv net for the images of ``data`` (X: rows × C × H × W), seeded."""
    if data.X.ndim != 4:
        raise DataError("model.kind 'cnn' takes images (rows × channels × height × width); set dataset.kind to "
                        "'images'")
    image_shape = tuple(int(n) for n in data.X.shape[1:])
    torch.manual_seed(seed)
    route = Route()
    backbone, width = BACKBONES[spec.arch](spec, image_shape, data.n_tasks, route)
    return MultiTaskCNN(backbone, width, data.n_tasks, route, image_shape)
