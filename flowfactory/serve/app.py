"""The HTTP API, compatible with the public FLUX API: existing clients work by changing the base URL.

    flowfactory keys create              # prints a new key
    flowfactory serve --port 8000        # API + workers in one process

POST /v1/{endpoint} -> {id, polling_url}; GET /v1/get_result?id= -> {id, status, result};
GET /v1/results/{file} serves the image; POST /v1/feedback; DELETE /v1/data/{id} and
DELETE /v1/data (everything of the calling key); GET / is the playground; GET /openapi.json.
Every request passes the same guardrails; bad input is a 4xx with a message, never a 500.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.errors import UserError
from flowfactory.serve.guard import Moderator
from flowfactory.serve.store import SQLiteJobStore
from flowfactory.serve.worker import ENDPOINTS, Heartbeat, ModelSet, Worker, decode_input

IMAGE_FIELDS = ("input_image", "input_image_2", "input_image_3", "input_image_4", "image", "mask", "control_image")


@dataclass
class ServeConfig:
    db: str = "flowfactory-serve/jobs.sqlite"
    results: str = "flowfactory-serve/results"
    workers: int = 1
    batch_size: int = 8  # compatible text-to-image requests per forward pass
    max_queue: int = 256  # waiting + running jobs; past it: 429
    rate_limit: int = 120  # requests per key per minute; past it: 429
    ttl_s: float = 24 * 3600  # results expire after this
    max_body_bytes: int = 30 * 1024 * 1024
    tombstones: str = ""  # the deletion list shared with the training data sources
    retry_after_s: int = 5
    extra: dict = field(default_factory=dict)


# ----- request bodies (unknown fields are ignored, as the public API does) ------------------------


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=4000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    safety_tolerance: int = Field(2, ge=0, le=6)
    output_format: Literal["jpeg", "png"] = "jpeg"


class TextToImage(_Base):
    width: int = Field(1024, ge=256, le=1440)
    height: int = Field(768, ge=256, le=1440)
    steps: int | None = Field(None, ge=1, le=50)
    guidance: float | None = Field(None, ge=1.0, le=10.0)
    prompt_upsampling: bool = False


class Kontext(_Base):
    input_image: str = Field(min_length=1)
    input_image_2: str | None = None
    input_image_3: str | None = None
    input_image_4: str | None = None
    aspect_ratio: str | None = Field(None, pattern=r"^\d{1,2}:\d{1,2}$")
    output_format: Literal["jpeg", "png"] = "png"
    steps: int | None = Field(None, ge=1, le=50)
    guidance: float | None = Field(None, ge=1.0, le=10.0)


class Fill(_Base):
    image: str = Field(min_length=1)
    mask: str = Field(min_length=1)
    steps: int | None = Field(None, ge=1, le=50)
    guidance: float | None = Field(None, ge=1.0, le=100.0)


class Control(_Base):
    control_image: str = Field(min_length=1)
    steps: int | None = Field(None, ge=1, le=50)
    guidance: float | None = Field(None, ge=1.0, le=100.0)


BODIES = {"t2i": TextToImage, "edit": Kontext, "fill": Fill, "canny": Control, "depth": Control}


class Submitted(BaseModel):
    id: str
    polling_url: str


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    rating: float | None = Field(None, ge=1, le=5)
    other_id: str | None = None
    preferred: str | None = None


# ----- the app ----------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is answered 413 before it is parsed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return msg

        return await self.app(scope, limited, send)


def create_app(cfg: ServeConfig, models: ModelSet, moderator: Moderator | None = None,
               start_workers: bool = True) -> FastAPI:  # fmt: skip
    store = SQLiteJobStore(cfg.db, cfg.ttl_s)
    results = Path(cfg.results)
    results.mkdir(parents=True, exist_ok=True)
    moderator = moderator or Moderator()
    tombstones = Tombstones(cfg.tombstones or None)
    app = FastAPI(title="flowfactory", version="1", description=__doc__)
    app.state.store, app.state.models, app.state.cfg = store, models, cfg
    app.state.workers = [Worker(store, models, moderator, results, cfg.batch_size, name=f"worker-{i}")
                         for i in range(cfg.workers)]  # fmt: skip
    app.state.recovered = store.recover()
    if start_workers:
        Heartbeat(store, beat=cfg.workers > 0).start()
        for w in app.state.workers:
            w.start()
    header = APIKeyHeader(name="X-Key", auto_error=False)

    def key_id(key: str | None = Depends(header)) -> str:
        if not key:
            raise HTTPException(401, "missing X-Key header (create a key with `flowfactory keys create`)")
        kid = store.key_id(key)
        if kid is None:
            raise HTTPException(403, "invalid X-Key")
        return kid

    def submit(endpoint: str, body: _Base, request: Request, kid: str) -> Submitted:
        kind, tier = ENDPOINTS[endpoint]
        try:
            models.resolve(kind, tier)
        except UserError as e:
            raise HTTPException(404, str(e)) from None
        if store.recent_requests(kid, 60) >= cfg.rate_limit:
            raise HTTPException(429, f"rate limit: {cfg.rate_limit} requests per minute",
                                headers={"Retry-After": str(cfg.retry_after_s)})  # fmt: skip
        req = body.model_dump()
        req["seed"] = req["seed"] if req["seed"] is not None else secrets.randbelow(2**31)
        req["_base_url"] = str(request.base_url)
        images = {}
        try:
            for f in IMAGE_FIELDS:
                if req.get(f):
                    images[f] = decode_input(req[f], f)
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        if kind == "fill" and images["mask"].size != images["image"].size:
            raise HTTPException(422, f"the mask is {images['mask'].size} but the image is {images['image'].size}")
        if kind != "t2i":  # output size: the main input image's (edits keep their size)
            main = images.get("input_image") or images.get("image") or images.get("control_image")
            w, h = main.size
            if req.get("aspect_ratio"):
                a, b = (int(x) for x in req["aspect_ratio"].split(":"))
                if not (a and b and 9 / 21 <= a / b <= 21 / 9):
                    raise HTTPException(422, "aspect_ratio must be between 21:9 and 9:21")
                w, h = round((w * h * a / b) ** 0.5), round((w * h * b / a) ** 0.5)
            scale = min(1.0, 1440 / max(w, h), (1024 * 1024 / (w * h)) ** 0.5)  # at most 1 MP and 1440 px
            scale = max(scale, 256 / min(w, h))  # at least 256 px
            req["width"], req["height"] = (min(1440, max(256, round(d * scale))) for d in (w, h))
        tol = req["safety_tolerance"]
        decisions = [("prompt", moderator.prompt(req["prompt"], tol))]
        decisions += [(f"input {f}", moderator.image(im, tol)) for f, im in images.items() if f != "mask"]
        blocked = next((d for _, d in decisions if not d.allowed), None)
        batch_key = (f"{endpoint}|{req['width']}x{req['height']}|{req.get('steps')}|{req.get('guidance')}"
                     if kind == "t2i" else f"{endpoint}|{secrets.token_hex(8)}")  # fmt: skip
        status, error = ("Request Moderated", blocked.reason) if blocked else ("Pending", None)
        job_id = store.enqueue(kid, endpoint, batch_key, req, cfg.max_queue, status=status, error=error)
        if job_id is None:
            raise HTTPException(429, f"queue full ({cfg.max_queue} jobs)", headers={"Retry-After": str(cfg.retry_after_s)})
        for stage, d in decisions:
            store.log_moderation(job_id, kid, stage, d.allowed, d.reason)
        return Submitted(id=job_id, polling_url=f"{request.base_url}v1/get_result?id={job_id}")

    def route(endpoint: str):
        body_type = BODIES[ENDPOINTS[endpoint][0]]

        def handler(body: body_type, request: Request, kid: str = Depends(key_id)) -> Submitted:  # type: ignore[valid-type]
            return submit(endpoint, body, request, kid)

        handler.__annotations__ = {"body": body_type, "request": Request, "kid": str, "return": Submitted}  # resolved now
        handler.__name__ = "submit_" + endpoint.replace("-", "_").replace(".", "_")
        app.post(f"/v1/{endpoint}", response_model=Submitted, summary=f"Submit a {endpoint} job")(handler)

    for endpoint in ENDPOINTS:
        route(endpoint)

    @app.get("/v1/get_result")
    def get_result(id: str = Query(max_length=100), kid: str = Depends(key_id)) -> dict:
        job = store.get(id)
        if job is None or job.key_id != kid:
            return {"id": id, "status": "Task not found", "result": None}
        status = "Pending" if job.status == "Running" else job.status
        out = {"id": id, "status": status, "result": None}
        if status == "Ready":
            out["result"] = {k: v for k, v in job.result.items() if k != "file"}
        elif job.error:
            out["details"] = job.error
        return out

    @app.get("/v1/results/{name}")
    def result_file(name: str):
        job_id = name.rsplit(".", 1)[0]
        job = store.get(job_id)
        path = results / name
        if job is None or job.status != "Ready" or job.result.get("file") != name or not path.exists():
            raise HTTPException(404, "no such result (expired or deleted)")
        return FileResponse(path, media_type="image/png" if name.endswith(".png") else "image/jpeg")

    @app.post("/v1/feedback")
    def feedback(fb: Feedback, kid: str = Depends(key_id)) -> dict:
        def own(job_id: str):
            job = store.get(job_id)
            if job is None or job.key_id != kid or job.status != "Ready":
                raise HTTPException(404, f"no finished job {job_id} of this key")
            return job

        own(fb.id)
        if fb.other_id is None:
            if fb.rating is None:
                raise HTTPException(422, "give a rating (1-5), or other_id and preferred for a pairwise preference")
            return {"id": store.add_feedback(kid, fb.id, "rating", rating=fb.rating)}
        own(fb.other_id)
        if fb.preferred not in (fb.id, fb.other_id):
            raise HTTPException(422, "preferred must be id or other_id")
        return {"id": store.add_feedback(kid, fb.id, "pairwise", other_job_id=fb.other_id, preferred=fb.preferred)}

    def delete(job) -> None:
        """Remove a job's inputs, output and feedback; tombstone its content for training."""
        hashes = []
        for f in IMAGE_FIELDS:
            if job.request.get(f):
                try:
                    hashes.append(content_hash(base64.b64decode(job.request[f])))
                except ValueError:
                    pass
        if job.result and job.result.get("file"):
            path = results / job.result["file"]
            if path.exists():
                hashes.append(content_hash(path.read_bytes()))
                path.unlink()
        tombstones.add(hashes, [f"job:{job.id}"], "deletion request")
        store.delete_job(job.id)

    @app.delete("/v1/data/{job_id}")
    def delete_one(job_id: str, kid: str = Depends(key_id)) -> dict:
        job = store.get(job_id)
        if job is None or job.key_id != kid:
            raise HTTPException(404, f"no job {job_id} of this key")
        delete(job)
        return {"deleted": [job_id]}

    @app.delete("/v1/data")
    def delete_all(kid: str = Depends(key_id)) -> dict:
        jobs = store.jobs_of_key(kid)
        for job in jobs:
            delete(job)
        return {"deleted": [j.id for j in jobs]}

    @app.post("/v1/{model}", include_in_schema=False)
    def unknown_model(model: str):
        raise HTTPException(404, f"unknown model '{model}' (this server has: {', '.join(ENDPOINTS)})")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> str:
        return (Path(__file__).parent / "playground.html").read_text()

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict:
        return {"ok": True, "queued": store.queued(), "recovered_at_start": app.state.recovered,
                "worker_processes": len(store.live_workers())}  # fmt: skip

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, 422)

    def expire_loop() -> None:
        while True:
            for job in store.expired():
                if job.result and job.result.get("file"):
                    (results / job.result["file"]).unlink(missing_ok=True)
                store.delete_job(job.id)
            time.sleep(60)

    if start_workers:
        import threading

        threading.Thread(target=expire_loop, daemon=True, name="expire").start()
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    return app
