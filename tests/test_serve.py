"""The server: FLUX-API flows, batching, bad input as 4xx, guardrails, deletion, feedback export."""

import base64
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from flowfactory.config import model_config
from flowfactory.data.sources import DataOptions, PreferenceSource
from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.pipeline import Pipeline
from flowfactory.serve.app import ServeConfig, create_app
from flowfactory.serve.feedback import export_feedback
from flowfactory.serve.store import SCHEMA, SQLiteJobStore
from flowfactory.serve.worker import ModelSet, generation_size


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    Pipeline.from_config(model_config("tiny")).save(d / "t2i.safetensors")
    Pipeline.from_config(model_config("tiny-latent")).save(d / "edit.safetensors")
    Pipeline.from_config(model_config("tiny-fill")).save(d / "fill.safetensors")
    return {"t2i": {"pro": (str(d / "t2i.safetensors"), 2, 3.0)}, "edit": {"pro": (str(d / "edit.safetensors"), 2, 3.0)},
            "fill": {"pro": (str(d / "fill.safetensors"), 2, 3.0)}}  # fmt: skip


def make(tmp_path, checkpoints, start=True, **kw):
    cfg = ServeConfig(db=str(tmp_path / "jobs.sqlite"), results=str(tmp_path / "results"),
                      tombstones=str(tmp_path / "tombstones.jsonl"), **kw)  # fmt: skip
    app = create_app(cfg, ModelSet(checkpoints), start_workers=start)
    client = TestClient(app)
    keys = [app.state.store.create_key(n)[1] for n in ("alice", "bob")]
    return app, client, keys


def b64png(w=64, h=48, color=(230, 40, 40), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), color if mode == "RGB" else 0).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait(client, key, job_id, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = client.get("/v1/get_result", params={"id": job_id}, headers={"X-Key": key}).json()
        if r["status"] != "Pending":
            return r
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_text_to_image_flow_returns_the_requested_size(tmp_path, checkpoints):
    app, client, (key, _) = make(tmp_path, checkpoints)
    r = client.post("/v1/flux-dev", json={"prompt": "a red circle", "width": 300, "height": 260, "seed": 3},
                    headers={"X-Key": key})  # fmt: skip
    assert r.status_code == 200, r.text
    sub = r.json()
    assert sub["polling_url"].endswith(f"/v1/get_result?id={sub['id']}")
    done = wait(client, key, sub["id"])
    assert done["status"] == "Ready"
    res = done["result"]
    assert res["tier"] == "pro" and res["seed"] == 3 and res["prompt"] == "a red circle"  # dev falls back to pro
    img = Image.open(io.BytesIO(client.get(res["sample"]).content))
    assert img.size == (300, 260)
    assert client.get("/v1/get_result", params={"id": "nope"}, headers={"X-Key": key}).json()["status"] == "Task not found"
    assert "paths" in client.get("/openapi.json").json()
    assert "<title>flowfactory playground</title>" in client.get("/").text


def test_size_rule_keeps_aspect_at_the_model_area():
    assert generation_size(1024, 768, 64, 8) == (56, 72)
    assert generation_size(256, 1440, 64, 8) == (152, 24)


def test_compatible_requests_share_one_forward_pass(tmp_path, checkpoints):
    app, client, (key, _) = make(tmp_path, checkpoints, start=False)
    ids = [client.post("/v1/flux-pro-1.1", json={"prompt": f"a blue square {i}", "width": 256, "height": 256},
                       headers={"X-Key": key}).json()["id"] for i in range(4)]  # fmt: skip
    other = client.post("/v1/flux-pro-1.1", json={"prompt": "x", "width": 512, "height": 256}, headers={"X-Key": key})
    worker = app.state.workers[0]
    worker.start()
    for i in [*ids, other.json()["id"]]:
        assert wait(client, key, i)["status"] == "Ready"
    worker.stop.set()
    assert sorted(worker.batches) == [1, 4]


def test_kontext_and_fill_jobs(tmp_path, checkpoints):
    app, client, (key, _) = make(tmp_path, checkpoints)
    r = client.post("/v1/flux-kontext-pro", json={"prompt": "make it blue", "input_image": b64png(), "seed": 1},
                    headers={"X-Key": key})  # fmt: skip
    done = wait(client, key, r.json()["id"])
    assert done["status"] == "Ready"
    assert Image.open(io.BytesIO(client.get(done["result"]["sample"]).content)).size == (341, 256)  # the input's aspect, sides in [256, 1440]
    r = client.post("/v1/flux-kontext-schnell", json={"prompt": "make it blue", "input_image": b64png()},
                    headers={"X-Key": key})  # fmt: skip
    assert wait(client, key, r.json()["id"])["result"]["tier"] == "pro"  # the edit tier this server has
    r = client.post("/v1/flux-pro-1.0-fill", json={"prompt": "a cross", "image": b64png(), "mask": b64png(32, 32)},
                    headers={"X-Key": key})  # fmt: skip
    assert r.status_code == 422 and "mask" in r.json()["detail"]


def test_bad_input_is_a_4xx_with_a_message(tmp_path, checkpoints):
    app, client, (key, _) = make(tmp_path, checkpoints, start=False, max_body_bytes=200_000)
    h = {"X-Key": key}
    cases = {
        "malformed json": client.post("/v1/flux-dev", content=b"{not json", headers={**h, "Content-Type": "application/json"}),
        "wrong type": client.post("/v1/flux-dev", json={"prompt": "x", "width": "wide"}, headers=h),
        "out of range": client.post("/v1/flux-dev", json={"prompt": "x", "width": 4000}, headers=h),
        "bare data url": client.post("/v1/flux-kontext-pro", json={"prompt": "a", "input_image": "data:"}, headers=h),
        "invalid base64": client.post("/v1/flux-kontext-pro", json={"prompt": "x", "input_image": "%%%"}, headers=h),
        "not an image": client.post("/v1/flux-kontext-pro", json={"prompt": "x", "input_image":
                                    base64.b64encode(b"hello world").decode()}, headers=h),
        "bomb": client.post("/v1/flux-kontext-pro", json={"prompt": "x", "input_image": b64png(6000, 5000, mode="1")},
                            headers=h),
        "oversize body": client.post("/v1/flux-dev", json={"prompt": "x" * 300_000}, headers=h),
        "unknown model": client.post("/v1/flux-ultra-9000", json={"prompt": "x"}, headers=h),
        "missing key": client.post("/v1/flux-dev", json={"prompt": "x"}),
        "wrong key": client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"X-Key": "ff-wrong"}),
        "empty prompt": client.post("/v1/flux-dev", json={"prompt": ""}, headers=h),
        "bad feedback": client.post("/v1/feedback", json={"id": "nope", "rating": 9}, headers=h),
    }
    expected = {"oversize body": 413, "unknown model": 404, "missing key": 401, "wrong key": 403}
    for name, r in cases.items():
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.status_code == expected.get(name, r.status_code), (name, r.status_code)
        assert r.json().get("detail"), name
    assert "pixel" in cases["bomb"].json()["detail"]


def test_guardrails_are_the_same_for_every_key(tmp_path, checkpoints):
    app, client, keys = make(tmp_path, checkpoints)
    for key in keys:
        r = client.post("/v1/flux-dev", json={"prompt": "nsfw picture", "safety_tolerance": 2}, headers={"X-Key": key})
        done = wait(client, key, r.json()["id"])
        assert done["status"] == "Request Moderated" and "nsfw" in done["details"]
    r = client.post("/v1/flux-dev", json={"prompt": "nsfw picture", "safety_tolerance": 6}, headers={"X-Key": keys[0]})
    assert wait(client, keys[0], r.json()["id"])["status"] == "Ready"  # the tolerance decides, not the key
    log = app.state.store.moderation_log()
    assert sum(not e["allowed"] for e in log) == 2 and all(e["reason"] for e in log)


def test_queue_bound_and_rate_limit_answer_429(tmp_path, checkpoints):
    app, client, (key, other) = make(tmp_path, checkpoints, start=False, max_queue=2, rate_limit=3)
    h = {"X-Key": key}
    codes = [client.post("/v1/flux-dev", json={"prompt": "a"}, headers=h).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = client.post("/v1/flux-dev", json={"prompt": "a"}, headers={"X-Key": other})
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert client.post("/v1/flux-dev", json={"prompt": "a"}, headers=h).status_code == 429  # rate limit (3/min)


def test_feedback_export_trains_and_deletion_removes_everything(tmp_path, checkpoints):
    app, client, (key, _) = make(tmp_path, checkpoints)
    h = {"X-Key": key}
    ids = []
    for seed in (1, 2, 3):
        r = client.post("/v1/flux-pro", json={"prompt": "a green triangle", "seed": seed, "output_format": "png",
                                              "width": 256, "height": 256}, headers=h)  # fmt: skip
        ids.append(r.json()["id"])
    results = [wait(client, key, i) for i in ids]
    assert client.post("/v1/feedback", json={"id": ids[0], "other_id": ids[1], "preferred": ids[1]}, headers=h).status_code == 200
    assert client.post("/v1/feedback", json={"id": ids[2], "rating": 5}, headers=h).status_code == 200
    assert client.post("/v1/feedback", json={"id": ids[0], "rating": 1}, headers=h).status_code == 200
    tomb = Tombstones(tmp_path / "tombstones.jsonl")
    stats = export_feedback(app.state.store, tmp_path / "results", tmp_path / "export", tomb)
    assert stats["pairs"] == 2
    src = PreferenceSource(tmp_path / "export" / "pairs.jsonl", DataOptions(16, 2, tombstones=str(tomb.path)))
    assert len(src) == 2 and src.sample(0).rejected is not None  # what align dpo reads

    victim = ids[1]
    file_hash = content_hash(client.get(results[1]["result"]["sample"]).content)
    assert client.delete(f"/v1/data/{victim}", headers=h).json() == {"deleted": [victim]}
    assert client.get("/v1/get_result", params={"id": victim}, headers=h).json()["status"] == "Task not found"
    assert client.get(results[1]["result"]["sample"]).status_code == 404
    assert tomb.is_deleted(hash=file_hash) and tomb.is_deleted(id=f"job:{victim}")
    stats = export_feedback(app.state.store, tmp_path / "results", tmp_path / "export2", tomb)
    exported = (tmp_path / "export2" / "pairs.jsonl").read_text()
    assert stats["pairs"] == 1 and victim not in exported
    assert client.delete(f"/v1/data/{victim}", headers=h).status_code == 404
    assert len(client.delete("/v1/data", headers=h).json()["deleted"]) == 2
    usage = [json.loads(x) for x in (tmp_path / "export" / "usage.jsonl").read_text().splitlines()]
    assert all(u["latency_s"] is not None and u["prompt_length"] == 16 for u in usage)


def test_store_requeues_only_jobs_whose_worker_is_gone(tmp_path):
    import socket
    import sqlite3
    import subprocess
    import sys

    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    kid, _ = store.create_key()
    ids = [store.enqueue(kid, "flux-dev", "b", {"i": i}, 100) for i in range(4)]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    store.heartbeat()  # this process: alive
    store.heartbeat(f"{host}:{dead.stdout.strip()}")  # fresh heartbeat, but the process has exited
    store.heartbeat("elsewhere:7")  # another host, fresh: trusted
    for worker in ("", f"{host}:{dead.stdout.strip()}", "elsewhere:7", "elsewhere:8"):  # elsewhere:8 never beat
        assert len(store.claim(1, worker=worker)) == 1
    assert store.recover(stale_s=60) == 2
    assert [store.get(i).status for i in ids] == ["Running", "Pending", "Running", "Pending"]
    with sqlite3.connect(tmp_path / "jobs.sqlite") as c:  # elsewhere:7 stops beating (its last beat long ago)
        c.execute("UPDATE workers SET heartbeat = 0 WHERE id = 'elsewhere:7'")
    assert store.recover(stale_s=60) == 1  # its job goes back; this process's stays
    assert [store.get(i).status for i in ids] == ["Running", "Pending", "Pending", "Pending"]

    legacy = tmp_path / "old.sqlite"  # a database written before jobs had a worker column
    with sqlite3.connect(legacy) as c:
        c.executescript(SCHEMA)  # its jobs table has no worker column: the store adds it on opening
        c.execute("INSERT INTO jobs (id, key_id, endpoint, batch_key, status, request, created) VALUES "
                  "('j', 'k', 'flux-dev', 'b', 'Running', '{}', 0)")  # fmt: skip
    old = SQLiteJobStore(legacy)
    assert old.recover() == 1 and old.get("j").status == "Pending"
