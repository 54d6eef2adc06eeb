"""Uploaded datasets: POST (multipart), list, get, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile

from api.deps import Config, Owner, Store
from api.problems import ApiError, responses
from api.schemas import DatasetList, DatasetOut
from api.store import DatasetInUse, new_id
from api.tables import Dataset
from api.uploads import SUFFIX, BadUpload, Inspected, UploadTooLarge, inspect_edges, inspect_file, remove, save_stream

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=responses(401))

PARTS = ("file", "nodes", "edges")


async def one_of_each_part(request: Request) -> None:
    """Refuse a multipart body with a part this endpoint does not read, or a part twice (one would be dropped
    unseen): 422 naming the part. The form is the one FastAPI parsed for the File parameters (cached)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return
    names = [name for name, _ in (await request.form()).multi_items()]
    unknown = sorted({n for n in names if n not in PARTS})
    if unknown:
        raise ApiError(422, f"the upload has the part(s) {unknown}, which this endpoint does not read; send a table as "
                            "the part 'file', or a graph as the two parts 'nodes' and 'edges'")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ApiError(422, f"the upload has the part(s) {twice} more than once; send each part once (one table per "
                            "upload: upload another table as another dataset)")


@router.post("", status_code=201, response_model=DatasetOut, responses=responses(400, 413, 415, 422),
             dependencies=[Depends(one_of_each_part)])
def upload_dataset(request: Request, owner: Owner, store: Store, settings: Config,
                   file: Annotated[UploadFile | None, File(description="A CSV, Parquet or NPZ table.")] = None,
                   nodes: Annotated[UploadFile | None, File(
                       description="A graph's node table (CSV, Parquet or NPZ), sent with `edges` instead of `file`."
                   )] = None,
                   edges: Annotated[UploadFile | None, File(
                       description="A graph's edge list (CSV, Parquet or NPZ), sent with `nodes` instead of `file`."
                   )] = None) -> DatasetOut:
    """Upload a wide table (`file`: one row per example, feature columns, one label column per task), or a graph
    (`nodes` and `edges` in the same request: the node table and the edge list of dataset.kind graph)."""
    limit = settings.upload_limit_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise ApiError(413, f"upload of {int(declared)} bytes exceeds this server's limit of {limit} bytes")
    parts = {"file": file, "nodes": nodes, "edges": edges}
    given = [name for name, part in parts.items() if part is not None]
    if given not in (["file"], ["nodes", "edges"]):
        raise ApiError(422, f"the upload has parts {given or 'none'}; send a table as the part 'file', or a graph as "
                            "the two parts 'nodes' and 'edges' (multipart/form-data)")
    ds_id = new_id("ds")
    folder = settings.datasets / ds_id
    stored: dict[str, tuple[Path, Inspected, int]] = {}
    try:
        for name in given:
            raw = folder / f"upload-{name}"
            size = save_stream(parts[name].file, raw, limit - sum(s for *_, s in stored.values()))
            info = inspect_edges(raw, limit) if name == "edges" else inspect_file(raw, limit)
            stored[name] = (raw, info, size)
    except UploadTooLarge:
        remove(folder)
        raise ApiError(413, f"upload exceeds this server's limit of {limit} bytes") from None
    except BadUpload as exc:
        remove(folder)
        raise ApiError(exc.status, f"{given[len(stored)]}: {exc}" if len(given) > 1 else str(exc)) from None
    for name, (raw, info, _) in stored.items():
        path = folder / f"{'data' if name == 'file' else name}{SUFFIX[info.format]}"
        raw.replace(path)
        stored[name] = (path, info, stored[name][2])
    main = stored["file" if file is not None else "nodes"]
    name = Path(parts[given[0]].filename or "upload").name[:500]
    if edges is not None:  # a graph: the node table's rows and columns; the edge list lies beside it
        name = f"{name} + {Path(edges.filename or 'edges').name}"[:500]
    ds = store.add_dataset(Dataset(id=ds_id, owner=owner, filename=name,
                                   format="graph" if edges is not None else main[1].format, path=str(main[0]),
                                   size_bytes=sum(s for *_, s in stored.values()), rows=main[1].rows,
                                   columns=main[1].columns))
    return DatasetOut.of(ds)


@router.get("", response_model=DatasetList, responses=responses(422))
def list_datasets(owner: Owner, store: Store, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> DatasetList:
    rows, total = store.list_datasets(owner, limit, offset)
    return DatasetList(items=[DatasetOut.of(d) for d in rows], total=total, limit=limit, offset=offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=responses(404))
def get_dataset(dataset_id: str, owner: Owner, store: Store) -> DatasetOut:
    ds = store.get_dataset(owner, dataset_id)
    if ds is None:
        raise ApiError(404, f"no dataset {dataset_id}")
    return DatasetOut.of(ds)


@router.delete("/{dataset_id}", status_code=204, response_class=Response, responses=responses(404, 409))
def delete_dataset(dataset_id: str, owner: Owner, store: Store, settings: Config) -> Response:
    """Delete an uploaded dataset (not while a queued or running job reads it)."""
    try:
        ds = store.delete_dataset(owner, dataset_id)
    except DatasetInUse as exc:
        raise ApiError(409, f"dataset {dataset_id} is used by queued or running jobs {exc.jobs[:10]}; cancel them "
                            "or wait until they finish") from None
    if ds is None:
        raise ApiError(404, f"no dataset {dataset_id}")
    remove(Path(ds.path).parent)
    return Response(status_code=204)
