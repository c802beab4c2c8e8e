"""Batch task files over v5 (spec: iotda-v5 §4.1): spreadsheets of device ids for tasks.

The upload is multipart (one part, `file`) and signed `UNSIGNED-PAYLOAD`, as the SDK sends
it; a task names the file as its `document_source`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Response, UploadFile
from pydantic import BaseModel

from fleetbatch.api.v5.common import RuntimeDep, Signed
from fleetbatch.api.v5.route import V5Route
from fleetbatch.domain.batch_files import MAX_FILE_BYTES, BatchTaskFile
from fleetbatch.domain.errors import InvalidInput
from fleetbatch.domain.timefmt import to_compact

router = APIRouter(route_class=V5Route, tags=["Batch task files"])

FileId = Annotated[str, Path(max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class BatchTaskFileWire(BaseModel):
    """An uploaded device list."""

    file_id: str
    file_name: str
    upload_time: str


class BatchTaskFilesWire(BaseModel):
    """ListBatchTaskFiles: every file of the project, newest first (no paging)."""

    files: list[BatchTaskFileWire]


def file_wire(file: BatchTaskFile) -> dict[str, Any]:
    """A file as IoTDA's BatchTaskFile."""
    return {
        "file_id": file.file_id,
        "file_name": file.file_name,
        "upload_time": to_compact(file.uploaded_at_ms),
    }


@router.post(
    "/batchtask-files",
    status_code=201,
    response_model=BatchTaskFileWire,
    summary="UploadBatchTaskFile",
)
async def upload_batch_task_file(
    file: Annotated[
        UploadFile,
        File(description="An .xlsx or .xls file: one device id per row in the first column"),
    ],
    runtime: RuntimeDep,
    who: Signed,
) -> dict[str, Any]:
    """Upload a device list for deleteDevices, freezeDevices and unfreezeDevices tasks."""
    content = await file.read(MAX_FILE_BYTES + 1)
    if not content:
        raise InvalidInput("file", "is empty")
    stored = await runtime.registry.batch_files.upload(who.project_id, file.filename or "", content)
    return file_wire(stored)


@router.get("/batchtask-files", response_model=BatchTaskFilesWire, summary="ListBatchTaskFiles")
async def list_batch_task_files(runtime: RuntimeDep, who: Signed) -> dict[str, Any]:
    """The project's uploaded files, newest first."""
    files = await runtime.registry.batch_files.list_all(who.project_id)
    return {"files": [file_wire(f) for f in files]}


@router.delete(
    "/batchtask-files/{file_id}",
    status_code=204,
    response_class=Response,
    summary="DeleteBatchTaskFile",
)
async def delete_batch_task_file(file_id: FileId, runtime: RuntimeDep, who: Signed) -> Response:
    """Delete an uploaded file."""
    await runtime.registry.batch_files.delete(who.project_id, file_id)
    return Response(status_code=204)
