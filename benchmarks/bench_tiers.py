"""The tier table: for each tier of one model (and schnell at 1, 2 and 4 steps), the solver
steps, transformer forward passes per image, the benchmark score and latency per image as a
ratio to `pro`, all measured in this one run. Text-to-image tiers are scored on geneval-mini,
edit tiers (`--edit`) on editbench-mini (with the untouched-region PSNR).

Latency: every configuration generates the same batch of prompts (edits: edits the same
sources one at a time); the configurations take turns (round-robin, after one warm-up each) so
that machine noise falls on all of them alike; the median per image is reported with its ratio
to `pro`'s.

    python benchmarks/bench_tiers.py --tiers flowfactory/assets/tiers.json --out benchmarks/results/tiers
    python benchmarks/bench_tiers.py --edit --tiers flowfactory/assets/tiers-edit.json --out benchmarks/results/tiers

When only some tiers changed, `--reuse-scores benchmarks/results/tiers/tiers.json --reuse-rows pro,dev`
takes those rows' scores from that file's latest record (same benchmark, cases, steps and guidance,
and, where the record has them, the same checkpoint hashes; anything else is refused) and
scores the rest; latency is always timed afresh for every row. The record names what it reused.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from results_file import add_record  # benchmarks/ (scripts run from their folder)


def configurations(tiers: dict) -> list[dict]:
    """(label, tier, steps, guidance) rows: each tier at its defaults, schnell also at 1 and 2 steps."""
    rows = [{"label": name, "tier": name, "steps": t.steps, "guidance": t.guidance} for name, t in tiers.items()]
    if "schnell" in tiers:
        rows += [{"label": f"schnell-{s}", "tier": "schnell", "steps": s, "guidance": tiers["schnell"].guidance}
                 for s in (1, 2, 4) if s != tiers["schnell"].steps]  # fmt: skip
    order = {"pro": 0, "dev": 1, "schnell": 2}
    return sorted(rows, key=lambda r: (order.get(r["tier"], 3), -r["steps"]))


def passes_per_image(pipe, steps: int, guidance: float) -> int:
    """Transformer forward passes: one per step, two with true CFG (no guidance embedding, g != 1)."""
    return steps * (1 if pipe.cfg.flux.guidance_embed or guidance == 1.0 else 2)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def reused_scores(path: str, labels: list[str], rows: list[dict], bench: str, cases: str) -> dict[str, dict]:
    """The rows named in `labels` from the latest record of results file `path`, checked to be
    the same measurement (benchmark, cases, steps, guidance, checkpoint hash where recorded)."""
    try:
        record = json.loads(Path(path).read_text())[-1]
    except (OSError, ValueError, IndexError, KeyError) as e:
        sys.exit(f"--reuse-scores {path}: not a results file ({e})")
    if record.get("benchmark") != bench or record.get("cases") != cases:
        sys.exit(f"--reuse-scores {path}: measured {record.get('benchmark')} on {record.get('cases')}, "
                 f"not {bench} on {cases}")  # fmt: skip
    old, now = {r["label"]: r for r in record["rows"]}, {r["label"]: r for r in rows}
    out = {}
    for label in labels:
        if label not in old or label not in now:
            sys.exit(f"--reuse-rows: '{label}' is not a row of both {path} and this run")
        a, b = old[label], now[label]
        if (a["steps"], a["guidance"]) != (b["steps"], b["guidance"]):
            sys.exit(f"--reuse-rows: '{label}' ran {a['steps']} steps at guidance {a['guidance']} there, "
                     f"{b['steps']} at {b['guidance']} here")  # fmt: skip
        if a.get("checkpoint_sha256") not in (None, b["checkpoint_sha256"]):
            sys.exit(f"--reuse-rows: '{label}' has another checkpoint than in {path}")
        out[label] = {**a, "date": record.get("date")}
    return out


def latency(pipes: dict, rows: list[dict], make, n: int, rounds: int) -> dict[str, float]:
    """Median seconds per image of each row, the rows timed in turn; `make(pipe, row, seed)` makes
    `n` images."""
    times: dict[str, list[float]] = {r["label"]: [] for r in rows}
    for rnd in range(rounds + 1):  # round 0 warms up
        for r in rows:
            t0 = time.perf_counter()
            make(pipes[r["tier"]], r, rnd)
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the GPU's queued work counts
            if rnd:
                times[r["label"]].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def geneval_task(prompts, images_per_prompt: int, latency_batch: int):
    """(make for latency, n, score(pipe, row) -> (in-distribution, held out, summary)) for text to image."""
    from flowfactory.eval import geneval
    from flowfactory.eval.run import score_prompts

    timed = [p.text for p in prompts[:latency_batch]]

    def make(pipe, r, seed):
        size = pipe.cfg.resolution
        pipe.generate(timed, size, size, steps=r["steps"], guidance=r["guidance"], seed=seed)

    def score(pipe, r):
        passed, *_ = score_prompts(pipe, prompts, images_per_prompt, r["steps"], r["guidance"], progress=False)
        summary = geneval.summarize(prompts, passed)
        return summary["in_distribution"]["overall"], summary.get("held_out", {}).get("overall"), summary

    return make, len(timed), score


def editbench_task(n_pairs: int, latency_batch: int):
    """The same for edit models: editbench-mini pairs (seed 0 for every tier), batch-1 edits timed."""
    import tempfile

    from flowfactory.data.edits import edit_set
    from flowfactory.eval.run import kontext_editor, run_editbench

    timed = edit_set(n_pairs)[:latency_batch]

    def make(pipe, r, seed):
        edit = kontext_editor(pipe, r["steps"], r["guidance"], seed)
        for pair in timed:
            edit(pair, pipe.cfg.resolution)

    def score(pipe, r):
        with tempfile.TemporaryDirectory() as tmp:  # the per-tier report files are not kept
            summary = run_editbench(kontext_editor(pipe, r["steps"], r["guidance"]), tmp, n_pairs, name=r["label"])["summary"]
        return summary["overall"], summary["untouched_psnr_db"], summary

    return make, len(timed), score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="flowfactory/assets/tiers.json", help="tier manifest")
    ap.add_argument("--edit", action="store_true", help="edit tiers: editbench-mini instead of geneval-mini")
    ap.add_argument("--pairs", type=int, default=200, help="editbench-mini pairs (--edit)")
    ap.add_argument("--out", default="benchmarks/results/tiers", help="folder for tiers.json / tiers.md")
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--limit", type=int, help="first N geneval prompts only (quick trials)")
    ap.add_argument("--latency-batch", type=int, default=8, help="prompts per timed batch")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (latency then includes the copy of images back)")
    ap.add_argument("--reuse-scores", metavar="FILE", help="a previous tiers JSON to take --reuse-rows' scores from")
    ap.add_argument("--reuse-rows", default="", help="comma-separated rows (pro,dev) whose checkpoints did not change")
    args = ap.parse_args()
    if bool(args.reuse_scores) != bool(args.reuse_rows):
        sys.exit("--reuse-scores and --reuse-rows go together")

    from flowfactory.eval import geneval
    from flowfactory.pipeline import Pipeline
    from flowfactory.tiers import load_tiers

    torch.set_num_threads(args.threads)
    tiers = load_tiers(args.tiers)
    if "pro" not in tiers:
        sys.exit(f"{args.tiers} has no 'pro' tier to compare against")
    pipes = {name: Pipeline.from_checkpoint(t.checkpoint).to(args.device).eval() for name, t in tiers.items()}
    rows = configurations(tiers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.edit:
        bench, second = "editbench", "untouched PSNR (dB)"
        make, n_timed, score = editbench_task(args.pairs, args.latency_batch)
        cases = f"{args.pairs} editbench-mini pairs"
    else:
        bench, second = "geneval", "held out"
        prompts = geneval.prompt_set()[: args.limit]
        make, n_timed, score = geneval_task(prompts, args.images_per_prompt, args.latency_batch)
        cases = f"{len(prompts)} prompts x {args.images_per_prompt} images"
    for r in rows:
        r["checkpoint_sha256"] = file_sha256(tiers[r["tier"]].checkpoint)
    reused = {}
    if args.reuse_scores:
        reused = reused_scores(args.reuse_scores, args.reuse_rows.split(","), rows, bench, cases)
    per_image = latency(pipes, rows, make, n_timed, args.rounds)
    second_key = f"{bench}_{'untouched_psnr_db' if args.edit else 'held_out'}"
    for r in rows:
        pipe = pipes[r["tier"]]
        if r["label"] in reused:
            old = reused[r["label"]]
            main_score, other, summary = old[bench], old[second_key], old["summary"]
            r["score_from"] = f"{args.reuse_scores} ({old.get('date', 'undated')} record)"
        else:
            main_score, other, summary = score(pipe, r)
        r.update(passes=passes_per_image(pipe, r["steps"], r["guidance"]), latency_s=per_image[r["label"]],
                 latency_vs_pro=per_image[r["label"]] / per_image["pro"], summary=summary)  # fmt: skip
        r[bench], r[second_key] = main_score, other
        print(json.dumps({k: v for k, v in r.items() if k != "summary"}), flush=True)

    pro = next(r for r in rows if r["label"] == "pro")
    title = "editbench-mini" if args.edit else "geneval-mini (in dist.)"
    lines = [f"| tier | steps | passes / image | {title} | {second} | Δ vs pro | latency / image | vs pro |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        other = r[f"{bench}_{'untouched_psnr_db' if args.edit else 'held_out'}"]
        other = "" if other is None else f"{other:.1f}" if args.edit else f"{other:.3f}"
        lines.append(f"| {r['label']} | {r['steps']} | {r['passes']} | {r[bench]:.3f} | {other} | "
                     f"{r[bench] - pro[bench]:+.3f} | {1000 * r['latency_s']:.0f} ms | "
                     f"{r['latency_vs_pro']:.3f}x ({1 / r['latency_vs_pro']:.1f}x faster) |")  # fmt: skip
    command = "python benchmarks/bench_tiers.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    record = {"command": command, "date": datetime.date.today().isoformat(), "machine": machine,
              "benchmark": bench, "cases": cases, "latency_batch": n_timed, "rounds": args.rounds, "rows": rows}  # fmt: skip
    name = "tiers-edit" if args.edit else "tiers"
    add_record(out / f"{name}.json", record)
    header = f"`{command}` ({record['date']}, {machine}; {cases})\n\n"
    if reused:
        header += f"Scores of {', '.join(reused)} from {args.reuse_scores}; every latency timed in this run.\n\n"
    (out / f"{name}.md").write_text(header + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
