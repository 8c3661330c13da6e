"""Load test of the server: N concurrent clients on localhost, with and without batching.

Each configuration starts `flowfactory serve` (the shipped demo model unless --models), lets
`--clients` threads each submit `--jobs` text-to-image requests (same size, so they can share a
forward pass) and poll until done; it reports throughput (jobs/s), p50 / p99 latency (submit to
Ready) and checks that every accepted job finished.

    python benchmarks/bench_serve.py --json benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from flowfactory.serve.store import SQLiteJobStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(batch_size: int, args) -> dict:
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        cmd = [sys.executable, "-m", "flowfactory", "serve", "--port", str(port), "--dir", d, "--batch-size",
               str(batch_size), "--tombstones", str(Path(d) / "t.jsonl"), "--max-queue", "10000", "--rate-limit", "100000"]
        if args.models:
            cmd += ["--models", args.models]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        key = SQLiteJobStore(Path(d) / "jobs.sqlite").create_key("load")[1]
        latencies, statuses, lock = [], [], threading.Lock()

        def client(c: int) -> None:
            for j in range(args.jobs):
                t0 = time.perf_counter()
                r = requests.post(f"{url}/v1/flux-pro-1.1", json={"prompt": f"a red circle {c} {j}", "width": 256,
                                  "height": 256, "steps": args.steps, "seed": c * 1000 + j}, headers={"X-Key": key},
                                  timeout=60).json()  # fmt: skip
                while True:
                    s = requests.get(r["polling_url"], headers={"X-Key": key}, timeout=60).json()["status"]
                    if s != "Pending":
                        break
                    time.sleep(0.02)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    statuses.append(s)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        proc.kill()
        proc.wait()
    lat = sorted(latencies)
    return {"batch_size": batch_size, "jobs": len(lat), "ready": statuses.count("Ready"), "wall_s": wall,
            "throughput_jobs_per_s": len(lat) / wall, "p50_s": statistics.median(lat),
            "p99_s": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=4, help="requests per client")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--models", help="model map JSON (default: the shipped demo model)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    runs = [run(1, args), run(8, args)]
    rec = {"benchmark": "server load test: concurrent clients, text to image at 256x256 (demo model)",
           "command": "python benchmarks/bench_serve.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                    if k != "json" and v is not None),
           "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
           "date": datetime.date.today().isoformat(), "runs": runs,
           "throughput_ratio_batched": runs[1]["throughput_jobs_per_s"] / runs[0]["throughput_jobs_per_s"]}  # fmt: skip
    print(json.dumps(rec, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")


if __name__ == "__main__":
    main()
