"""The server as a process: the official `blackforest` client against it, a SIGKILL crash test (of the
server, and of a separate worker process), and a schema-driven fuzz run (schemathesis) that must find
no 500."""

import base64
import io
import json
import signal
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image

from flowfactory.serve.store import SQLiteJobStore
from helpers_serve import free_port, new_key, start, start_worker, tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("models"))


def png_b64(size=256):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (40, 90, 230)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_official_blackforest_client_generates_and_edits(tmp_path, models):
    from blackforest import BFLClient
    from blackforest.types.general.client_config import ClientConfig

    port = free_port()
    proc = start(tmp_path, models, port)
    try:
        client = BFLClient(api_key=new_key(tmp_path), base_url=f"http://127.0.0.1:{port}")
        cfg = ClientConfig(sync=True, polling_interval=0.1, max_retries=600)
        for model, inputs in (("flux-dev", {"prompt": "a red circle", "width": 512, "height": 256}),
                              ("flux-kontext-pro", {"prompt": "make it red", "input_image": png_b64()})):  # fmt: skip
            res = client.generate(model, inputs, config=cfg)
            img = Image.open(io.BytesIO(requests.get(res.result["sample"], timeout=10).content))
            assert img.size == ((512, 256) if model == "flux-dev" else (256, 256))
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_loses_no_accepted_job(tmp_path, models):
    port = free_port()
    proc = start(tmp_path, models, port, "--batch-size", "1")
    key = new_key(tmp_path)
    url = f"http://127.0.0.1:{port}"
    ids = [requests.post(f"{url}/v1/flux-pro", json={"prompt": f"a square {i}", "steps": 50, "width": 1440,
                                                      "height": 1440}, headers={"X-Key": key}, timeout=10).json()["id"]
           for i in range(24)]  # fmt: skip
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    states = [store.get(i).status for i in ids]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "Pending" in states or "Running" in states  # the kill interrupted work in progress
    proc = start(tmp_path, models, port)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            final = [requests.get(f"{url}/v1/get_result", params={"id": i}, headers={"X-Key": key}, timeout=10).json()
                     for i in ids]  # fmt: skip
            if all(r["status"] in ("Ready", "Error") for r in final):
                break
            time.sleep(0.2)
        assert [r["status"] for r in final] == ["Ready"] * len(ids)
    finally:
        proc.kill()
        proc.wait()


def wait_for(check, what: str, limit_s: float = 120):
    """Polls `check()` until it is truthy; fails with `what` after `limit_s` (an upper bound, not a timing test)."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_separate_worker_processes_and_a_killed_worker_loses_no_job(tmp_path, models):
    """`serve --workers 0` is the API alone; `flowfactory worker` processes run the jobs. SIGKILL one
    while it runs a job: its jobs go back to the queue (its process is gone) and another finishes them."""
    port = free_port()
    server = start(tmp_path, models, port, "--workers", "0")
    url, key = f"http://127.0.0.1:{port}", new_key(tmp_path)
    store = SQLiteJobStore(tmp_path / "jobs.sqlite")
    procs = [server]
    try:
        assert requests.get(f"{url}/healthz", timeout=10).json()["worker_processes"] == 0
        ids = [requests.post(f"{url}/v1/flux-pro", json={"prompt": f"a circle {i}", "steps": 50, "width": 1440,
                                                          "height": 1440}, headers={"X-Key": key}, timeout=10).json()["id"]
               for i in range(8)]  # fmt: skip
        assert {store.get(i).status for i in ids} == {"Pending"}  # no worker yet: nothing runs
        first = start_worker(tmp_path, models, "--batch-size", "1")
        procs.append(first)
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=10).json()["worker_processes"] == 1, "the worker")
        wait_for(lambda: any(store.get(i).status == "Running" for i in ids), "a running job")
        first.send_signal(signal.SIGKILL)
        first.wait()
        orphans = [i for i in ids if store.get(i).status == "Running"]  # the kill caught them mid-generation
        assert orphans
        second = start_worker(tmp_path, models, "--batch-size", "1")
        procs.append(second)
        wait_for(lambda: all(store.get(i).status in ("Ready", "Error") for i in ids), "every job to finish")
        assert [store.get(i).status for i in ids] == ["Ready"] * len(ids)
        assert all(store.get(i).attempts == 2 for i in orphans)  # claimed by the killed worker, then again
        img = requests.get(requests.get(f"{url}/v1/get_result", params={"id": ids[-1]}, headers={"X-Key": key},
                                        timeout=10).json()["result"]["sample"], timeout=10)  # fmt: skip
        assert img.ok and Image.open(io.BytesIO(img.content)).size == (1440, 1440)
        second.send_signal(signal.SIGTERM)  # a clean stop: the process exits, nothing is left running
        assert second.wait(timeout=60) == 0
        assert not any(store.get(i).status == "Running" for i in ids)
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, models):
    from flowfactory.serve.app import ServeConfig, create_app
    from flowfactory.serve.worker import ModelSet

    d = tmp_path_factory.mktemp("fuzz")
    spec = json.loads(models.read_text())
    app = create_app(ServeConfig(db=str(d / "jobs.sqlite"), results=str(d / "results"), rate_limit=10**6,
                                 max_queue=10**6, tombstones=str(d / "t.jsonl")),
                     ModelSet({k: {t: tuple(v) for t, v in tiers.items()} for k, tiers in spec.items()}),
                     start_workers=False)  # fmt: skip
    app.state.fuzz_key = app.state.store.create_key("fuzz")[1]
    return app


def test_fuzz_finds_no_server_error(fuzz_app):
    """Every operation of the app's own OpenAPI schema, 25 generated requests each, with and without a key."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = 0
    for result in schema.get_all_operations():
        op = result.ok()

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            for headers in ({"X-Key": fuzz_app.state.fuzz_key}, {}):
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        check()
        operations += 1
    assert operations >= 10
