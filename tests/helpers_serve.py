"""The server as a separate process, with tiny models, for the process-level and browser tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from flowfactory.config import model_config
from flowfactory.pipeline import Pipeline
from flowfactory.serve.store import SQLiteJobStore


def tiny_models(d: Path) -> Path:
    """A models.json naming a tiny text-to-image model (pro only) and a tiny Kontext edit model."""
    Pipeline.from_config(model_config("tiny")).save(d / "t2i.safetensors")
    Pipeline.from_config(model_config("tiny-latent")).save(d / "edit.safetensors")
    spec = {"t2i": {"pro": [str(d / "t2i.safetensors"), 20, 3.0]}, "edit": {"pro": [str(d / "edit.safetensors"), 4, 3.0]}}
    (d / "models.json").write_text(json.dumps(spec))
    return d / "models.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir, models, port, *extra):
    cmd = [sys.executable, "-m", "flowfactory", "serve", "--port", str(port), "--dir", str(data_dir), "--models",
           str(models), "--tombstones", str(data_dir / "tombstones.jsonl"), *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode()[-2000:])


def new_key(data_dir) -> str:
    return SQLiteJobStore(data_dir / "jobs.sqlite").create_key("test")[1]


def start_worker(data_dir, models, *extra):
    """A `flowfactory worker` process on the server's data directory; returns once it has said it runs."""
    cmd = [sys.executable, "-m", "flowfactory", "worker", "--dir", str(data_dir), "--models", str(models), *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()
    if "worker(s)" not in line:
        proc.kill()
        raise AssertionError(line + proc.stderr.read()[-2000:])
    return proc
