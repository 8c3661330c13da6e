"""Feedback export: the users' preferences as the pair JSONL that `flowfactory align dpo` reads.

    flowfactory feedback export --out feedback/

Pairs: every pairwise preference (preferred vs the other), and, for results of the same prompt
with different ratings, the best-rated vs the worst-rated. Images are copied next to the file;
content with a tombstone (a deletion request) is never exported. `usage.jsonl` holds the
telemetry: endpoint, tier, latency, queue wait, sizes, prompt length, status.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flowfactory.data.tombstones import Tombstones, content_hash
from flowfactory.serve.store import SQLiteJobStore


def export_feedback(store: SQLiteJobStore, results: str | Path, out: str | Path, tombstones: Tombstones) -> dict:
    results, out = Path(results), Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def image(job_id: str) -> str | None:
        """The job's result copied into the export; None if gone or deleted."""
        job = store.get(job_id)
        if job is None or job.status != "Ready" or tombstones.is_deleted(id=f"job:{job_id}"):
            return None
        src = results / job.result["file"]
        if not src.exists() or tombstones.is_deleted(hash=content_hash(src.read_bytes())):
            return None
        dst = out / "images" / src.name
        shutil.copyfile(src, dst)
        return f"images/{src.name}"

    pairs, ratings = [], {}
    for fb in store.feedback():
        if fb["kind"] == "pairwise":
            loser = fb["other_job_id"] if fb["preferred"] == fb["job_id"] else fb["job_id"]
            w, l = image(fb["preferred"]), image(loser)
            job = store.get(fb["preferred"])
            if w and l and job:
                pairs.append({"prompt": job.request["prompt"], "chosen": w, "rejected": l, "source": "pairwise",
                              "feedback_id": fb["id"]})  # fmt: skip
        else:
            job = store.get(fb["job_id"])
            if job is not None:
                ratings.setdefault(job.request["prompt"], {})[fb["job_id"]] = fb["rating"]
    for prompt, rated in ratings.items():
        if len(set(rated.values())) > 1:
            best, worst = max(rated, key=rated.get), min(rated, key=rated.get)
            w, l = image(best), image(worst)
            if w and l:
                pairs.append({"prompt": prompt, "chosen": w, "rejected": l, "source": "ratings",
                              "ratings": [rated[best], rated[worst]]})  # fmt: skip
    (out / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    usage = []
    for row in store._conn().execute("SELECT * FROM jobs ORDER BY created"):
        req = json.loads(row["request"])
        res = json.loads(row["result"]) if row["result"] else {}
        usage.append({"endpoint": row["endpoint"], "tier": res.get("tier"), "status": row["status"],
                      "latency_s": (row["finished"] - row["created"]) if row["finished"] else None,
                      "queue_wait_s": (row["started"] - row["created"]) if row["started"] else None,
                      "width": req.get("width"), "height": req.get("height"), "prompt_length": len(req.get("prompt", "")),
                      "batch_size": res.get("batch_size")})  # fmt: skip
    (out / "usage.jsonl").write_text("".join(json.dumps(u) + "\n" for u in usage))
    return {"pairs": len(pairs), "jobs": len(usage), "out": str(out)}
