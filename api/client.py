"""Python client of the task-affinity service: submit a manifest, wait for the job, fetch the results.

    from api.client import Client

    client = Client("http://127.0.0.1:8000", key)
    job = client.submit({"dataset": {"source": "planted"}, "grouping": {"k": 4}})
    job.wait(progress=True)
    matrix, tasks = job.affinity()
    groups = job.groups()

Every error the server answers is raised as :class:`ApiProblem` (or a subclass by status) carrying the
server's problem detail (RFC 9457): ``status``, ``detail`` and, for a rejected manifest, ``errors``
(one entry per bad field). The client imports neither torch nor the compute engine; it reads a manifest file
with the CLI's reader (``affinity.manifest.read_manifest_file``) and leaves the checks to the server.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np

__all__ = ["ApiProblem", "Client", "ClientError", "Conflict", "ConnectionFailed", "InvalidRequest", "Job",
           "JobFailed", "JobTimeout", "NotFound", "Unauthorized"]

TERMINAL = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """Base class of every error this client raises."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or did not answer in time)."""


class ApiProblem(ClientError):
    """The server answered with an error: its problem detail (``application/problem+json``)."""

    def __init__(self, status: int, detail: str, errors: list[dict[str, Any]] | None = None, *,
                 title: str | None = None, instance: str | None = None, method: str = "", url: str = "") -> None:
        self.status, self.detail, self.errors = status, detail, errors or []
        self.title, self.instance, self.method, self.url = title, instance, method, url
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.title or ''}".rstrip() + f": {self.detail}"
        return f"{text} ({self.method} {self.url})" if self.method else text


class Unauthorized(ApiProblem):
    """401: missing, unknown or revoked API key."""


class NotFound(ApiProblem):
    """404: no such object for this key's owner (another owner's objects are not found either)."""


class Conflict(ApiProblem):
    """409: e.g. results of a job that has not succeeded, or a reused Idempotency-Key."""


class InvalidRequest(ApiProblem):
    """422 (or 400/413/415): the request was rejected; ``errors`` names each bad field."""


class JobFailed(ClientError):
    """``Job.wait`` ended with the job failed or cancelled; ``job.error`` holds the server's reason."""

    def __init__(self, job: "Job") -> None:
        self.job = job
        reason = f": {job.error}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")


class JobTimeout(ClientError, TimeoutError):
    """``Job.wait`` gave up before the job finished (the job goes on running on the server)."""


_BY_STATUS: dict[int, type[ApiProblem]] = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict,
                                           400: InvalidRequest, 413: InvalidRequest, 415: InvalidRequest,
                                           422: InvalidRequest}


def _problem(response: httpx.Response) -> ApiProblem:
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        pass
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"] if isinstance(body["detail"], str) else json.dumps(body["detail"])
        errors, title, instance = body.get("errors"), body.get("title"), body.get("instance")
    else:
        detail = (response.text or response.reason_phrase or "no detail").strip()[:500]
        errors, title, instance = None, response.reason_phrase, None
    cls = _BY_STATUS.get(response.status_code, ApiProblem)
    return cls(response.status_code, detail, errors if isinstance(errors, list) else None, title=title,
               instance=instance, method=response.request.method, url=str(response.request.url))


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest file (.json, .yaml/.yml) as a dict, read as the CLI reads it (checked by the server)."""
    from affinity.manifest import ManifestError, read_manifest_file

    p = Path(path)
    try:
        data = read_manifest_file(p)
    except ManifestError as exc:
        raise ClientError(str(exc)) from None
    if not isinstance(data, dict):
        raise ClientError(f"manifest {p} must hold a mapping (an object), not {type(data).__name__}")
    return data


class Client:
    """A connection to a task-affinity server, authenticated with an API key (``Authorization: Bearer``)."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not url:
            raise ClientError("no server URL given")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- transport --------------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a non-2xx answer raises :class:`ApiProblem` with the server's detail."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ConnectionFailed(f"{self.url} did not answer {method} {path} in time") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise _problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the server's answer is not JSON") from None

    # -- API --------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """``GET /readyz``: the server is up and its database reachable."""
        return self._json("GET", "/readyz")

    def submit(self, manifest: dict[str, Any] | str | os.PathLike[str], *, idempotency_key: str | None = None,
               upload_local: bool = True) -> "Job":
        """Queue a job. ``manifest`` is a dict or a .json/.yaml file.

        With ``upload_local`` (default), a dataset source that names a file on this machine (relative to
        the manifest file, or to the working directory for a dict) is uploaded first and replaced by the
        uploaded dataset's id; built-in names and ``ds_...`` ids are sent as they are.
        """
        base = Path.cwd()
        if isinstance(manifest, (str, os.PathLike)):
            path = Path(manifest)
            manifest, base = load_manifest(path), path.resolve().parent
        elif not isinstance(manifest, dict):
            raise ClientError(f"manifest must be a dict or a file path, not {type(manifest).__name__}")
        manifest = dict(manifest)
        dataset = manifest.get("dataset")
        if upload_local and isinstance(dataset, dict) and isinstance(dataset.get("source"), str):
            local = base / dataset["source"]
            edges = base / dataset["edges"] if isinstance(dataset.get("edges"), str) else None
            if not dataset["source"].startswith("ds_") and local.is_file():
                if edges is not None and edges.is_file():  # a graph: node table and edge list, one dataset
                    uploaded = self.upload_graph(local, edges)
                    dataset = {k: v for k, v in dataset.items() if k != "edges"}
                else:
                    uploaded = self.upload_dataset(local)
                manifest["dataset"] = {**dataset, "source": uploaded["id"]}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return Job(self, self._json("POST", "/v1/jobs", json=manifest, headers=headers))

    def job(self, job_id: str) -> "Job":
        """A job by id (404 → :class:`NotFound`)."""
        return Job(self, self._json("GET", f"/v1/jobs/{_segment(job_id)}"))

    def jobs(self, status: str | None = None, *, limit: int = 50, offset: int = 0) -> list["Job"]:
        """The key owner's jobs, newest first (``status``: queued, running, succeeded, failed, cancelled)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return [Job(self, item) for item in self._json("GET", "/v1/jobs", params=params)["items"]]

    def upload_dataset(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload a CSV, Parquet or NPZ file (a table, or images: 'images' and 'Y'); returns {id, filename, format, size_bytes, rows, columns, ...}.

        Use the returned ``id`` as the manifest's ``dataset.source``.
        """
        p = Path(path)
        try:
            handle = p.open("rb")
        except OSError as exc:
            raise ClientError(f"cannot read dataset {p}: {exc.strerror or exc}") from None
        with handle:
            return self._json("POST", "/v1/datasets", files={"file": (p.name, handle, "application/octet-stream")})

    def upload_graph(self, nodes: str | os.PathLike[str], edges: str | os.PathLike[str]) -> dict[str, Any]:
        """Upload a graph: its node table and its edge list (each CSV, Parquet or NPZ) in one request; returns the
        dataset record (format ``graph``). Use its ``id`` as ``dataset.source`` with ``dataset.kind: graph``."""
        paths = {"nodes": Path(nodes), "edges": Path(edges)}
        handles = {}
        try:
            for part, p in paths.items():
                try:
                    handles[part] = p.open("rb")
                except OSError as exc:
                    raise ClientError(f"cannot read the graph's {part} file {p}: {exc.strerror or exc}") from None
            return self._json("POST", "/v1/datasets", files={
                part: (paths[part].name, h, "application/octet-stream") for part, h in handles.items()})
        finally:
            for h in handles.values():
                h.close()

    def datasets(self) -> list[dict[str, Any]]:
        """The key owner's uploaded datasets."""
        return self._json("GET", "/v1/datasets")["items"]

    def manifest_schema(self) -> dict[str, Any]:
        """The JSON Schema of a manifest."""
        return self._json("GET", "/v1/schema/manifest")


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


class Job:
    """A job on the server. Attributes mirror the last fetched state; ``refresh()`` fetches it again."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client, self.data = client, data

    def __repr__(self) -> str:
        return f"Job({self.id!r}, status={self.status!r}, progress={self.progress:.0%})"

    id = property(lambda self: self.data["id"])
    status = property(lambda self: self.data["status"], doc="queued, running, succeeded, failed or cancelled")
    stage = property(lambda self: self.data.get("stage"))
    progress = property(lambda self: float(self.data.get("progress") or 0.0), doc="overall progress 0–1")
    eta_seconds = property(lambda self: self.data.get("eta_seconds"))
    error = property(lambda self: self.data.get("error"))
    summary = property(lambda self: self.data.get("summary"))
    manifest = property(lambda self: self.data.get("manifest"))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def _path(self, suffix: str = "") -> str:
        return f"/v1/jobs/{_segment(self.id)}{suffix}"

    def refresh(self) -> "Job":
        self.data = self.client._json("GET", self._path())
        return self

    def wait(self, progress: bool = True, timeout: float | None = None, poll: float = 1.0,
             raise_on_failure: bool = True) -> "Job":
        """Poll until the job has finished; with ``progress``, show a bar with stage, percent and ETA.

        Raises :class:`JobFailed` when it failed or was cancelled (unless ``raise_on_failure=False``) and
        :class:`JobTimeout` after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with _ProgressBar(self.id, enabled=progress) as bar:
            while True:
                if not self.done:
                    self.refresh()
                bar.update(self)
                if self.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(f"job {self.id} still {self.status} after {timeout:g} s "
                                     f"(stage {self.stage or '-'}, {self.progress:.0%})")
                time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))
        if raise_on_failure and self.status != "succeeded":
            raise JobFailed(self)
        return self

    def cancel(self) -> "Job":
        self.data = self.client._json("POST", self._path("/cancel"))
        return self

    def delete(self) -> None:
        self.client.request("DELETE", self._path())

    # -- results (409 → Conflict until the job has succeeded) -------------------------------------------
    def affinity_json(self) -> dict[str, Any]:
        """The engine's affinity.json: tasks, matrix, counts, self_gain, base_val_loss, method, estimator..."""
        return self.client._json("GET", self._path("/affinity"))

    def affinity(self) -> tuple[np.ndarray, list[str]]:
        """The task × task affinity matrix and the task names of its rows and columns."""
        data = self.affinity_json()
        return np.asarray(data["matrix"], dtype=float), list(data["tasks"])

    def groups_json(self) -> dict[str, Any]:
        """The engine's groups.json: labels, groups, k, objective, method..."""
        return self.client._json("GET", self._path("/groups"))

    def groups(self) -> list[list[str]]:
        """The task groups, each a list of task names."""
        return [list(g) for g in self.groups_json()["groups"]]

    def subsets(self) -> dict[str, Any]:
        return self.client._json("GET", self._path("/subsets"))

    def artifact(self, name: str) -> bytes:
        """One artifact file's bytes (model.pt, gradients.npz, heatmap.png, summary.json...)."""
        return self.client.request("GET", self._path(f"/artifacts/{_segment(name)}")).content

    def artifact_names(self) -> list[str]:
        summary = self.summary or self.refresh().summary or {}
        names = summary.get("artifacts")
        if names is None:  # an old summary: the files every job writes
            names = ["affinity.json", "groups.json", "subsets.json", "heatmap.png", "summary.json"]
        return list(names)

    def download(self, directory: str | os.PathLike[str], names: list[str] | None = None) -> list[Path]:
        """Write the job's artifacts (all of them by default) into ``directory``; returns the paths."""
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClientError(f"cannot create {out}: {exc.strerror or exc}") from None
        written = []
        for name in names or self.artifact_names():
            target = out / Path(name).name
            tmp = target.with_name(f".{target.name}.part")
            try:
                with self.client._http.stream("GET", self._path(f"/artifacts/{_segment(name)}")) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _problem(response)
                    with tmp.open("wb") as fh:
                        for chunk in response.iter_bytes():
                            fh.write(chunk)
                tmp.replace(target)
            except httpx.HTTPError as exc:
                tmp.unlink(missing_ok=True)
                raise ConnectionFailed(f"downloading {name} from {self.client.url}: {exc}") from None
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise ClientError(f"cannot write {target}: {exc.strerror or exc}") from None
            written.append(target)
        return written


class _ProgressBar:
    """A rich progress bar on stderr: stage, percent and the server's ETA; silent when disabled."""

    def __init__(self, job_id: str, enabled: bool) -> None:
        self.job_id, self.enabled, self._progress, self._task = job_id, enabled, None, None

    def __enter__(self) -> "_ProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                      TextColumn("{task.fields[eta]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.start()
            self._task = self._progress.add_task(self.job_id, total=1.0, eta="")
        return self

    def update(self, job: Job) -> None:
        if self._progress is None:
            return
        eta = job.eta_seconds
        eta_text = f"ETA {_duration(eta)}" if eta is not None and job.status == "running" else ""
        label = job.stage if job.status == "running" and job.stage else job.status
        self._progress.update(self._task, completed=1.0 if job.status == "succeeded" else job.progress,
                              description=f"{job.id} {label}", eta=eta_text)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def iter_jobs(client: Client, status: str | None = None, page: int = 100) -> Iterator[Job]:
    """Every job of the key's owner, page by page."""
    offset = 0
    while True:
        batch = client.jobs(status, limit=page, offset=offset)
        yield from batch
        if len(batch) < page:
            return
        offset += page
