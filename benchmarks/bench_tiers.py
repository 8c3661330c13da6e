"""The tier table: for each tier of one model (and schnell at 1, 2 and 4 steps), the solver
steps, transformer forward passes per image, geneval-mini score and latency per image as a
ratio to `pro`, all measured in this one run.

Latency: every configuration generates the same batch of prompts; the configurations take turns
(round-robin, after one warm-up each) so that machine noise falls on all of them alike; the
median per image is reported with its ratio to `pro`'s.

    python benchmarks/bench_tiers.py --tiers flowfactory/assets/tiers.json --out benchmarks/results/tiers
"""

from __future__ import annotations

import argparse
import datetime
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


def latency(pipes: dict, rows: list[dict], prompts: list[str], rounds: int) -> dict[str, float]:
    """Median seconds per image of each row, the rows timed in turn."""
    size = next(iter(pipes.values())).cfg.resolution
    times: dict[str, list[float]] = {r["label"]: [] for r in rows}
    for rnd in range(rounds + 1):  # round 0 warms up
        for r in rows:
            t0 = time.perf_counter()
            pipes[r["tier"]].generate(prompts, size, size, steps=r["steps"], guidance=r["guidance"], seed=rnd)
            if rnd:
                times[r["label"]].append((time.perf_counter() - t0) / len(prompts))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="flowfactory/assets/tiers.json", help="tier manifest")
    ap.add_argument("--out", default="benchmarks/results/tiers", help="folder for tiers.json / tiers.md")
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--limit", type=int, help="first N geneval prompts only (quick trials)")
    ap.add_argument("--latency-batch", type=int, default=8, help="prompts per timed batch")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from flowfactory.eval import geneval
    from flowfactory.eval.run import score_prompts
    from flowfactory.pipeline import Pipeline
    from flowfactory.tiers import load_tiers

    torch.set_num_threads(args.threads)
    tiers = load_tiers(args.tiers)
    if "pro" not in tiers:
        sys.exit(f"{args.tiers} has no 'pro' tier to compare against")
    pipes = {name: Pipeline.from_checkpoint(t.checkpoint).eval() for name, t in tiers.items()}
    rows = configurations(tiers)
    prompts = geneval.prompt_set()[: args.limit]
    timed = [p.text for p in prompts[: args.latency_batch]]
    per_image = latency(pipes, rows, timed, args.rounds)
    for r in rows:
        pipe = pipes[r["tier"]]
        passed, _ = score_prompts(pipe, prompts, args.images_per_prompt, r["steps"], r["guidance"], progress=False)
        summary = geneval.summarize(prompts, passed)
        held = summary.get("held_out", {}).get("overall")
        r.update(passes=passes_per_image(pipe, r["steps"], r["guidance"]), geneval=summary["in_distribution"]["overall"],
                 geneval_held_out=held, latency_s=per_image[r["label"]],
                 latency_vs_pro=per_image[r["label"]] / per_image["pro"], summary=summary)  # fmt: skip
        print(json.dumps({k: v for k, v in r.items() if k != "summary"}), flush=True)

    pro = next(r for r in rows if r["label"] == "pro")
    lines = ["| tier | steps | passes / image | geneval-mini (in dist.) | held out | Δ vs pro | latency / image | vs pro |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        held = "" if r["geneval_held_out"] is None else f"{r['geneval_held_out']:.3f}"
        lines.append(f"| {r['label']} | {r['steps']} | {r['passes']} | {r['geneval']:.3f} | {held} | "
                     f"{r['geneval'] - pro['geneval']:+.3f} | {1000 * r['latency_s']:.0f} ms | "
                     f"{r['latency_vs_pro']:.3f}x ({1 / r['latency_vs_pro']:.1f}x faster) |")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_tiers.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    record = {"command": command, "date": datetime.date.today().isoformat(), "machine": machine,
              "prompts": len(prompts), "images_per_prompt": args.images_per_prompt,
              "latency_batch": len(timed), "rounds": args.rounds, "rows": rows}  # fmt: skip
    add_record(out / "tiers.json", record)
    header = f"`{command}` ({record['date']}, {machine}; {len(prompts)} prompts x {args.images_per_prompt} images)\n\n"
    (out / "tiers.md").write_text(header + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
