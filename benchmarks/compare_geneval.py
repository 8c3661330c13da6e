"""Seed-averaged geneval-mini or editbench-mini comparison of a model against a base, per task, with paired error bars.

    python benchmarks/compare_geneval.py --base runs/base-s0/geneval.json runs/base-s1/geneval.json \\
        --variant dpo=runs/dpo-s0/geneval.json,runs/dpo-s1/geneval.json --out benchmarks/results/shapes-dpo-graded

Each geneval.json is one `flowfactory eval geneval --seed N` run; runs of one model are pooled
(same prompts, other noise). A task's change is the mean over its prompts of (variant - base),
each prompt's value averaged over all its images; its error bar is 2 standard errors of that
paired mean, so prompt difficulty cancels. Exact passes and partial credit are both reported.

editbench.json files (`flowfactory eval editbench --seed N`) compare the same way, pair by pair: a
task is an edit category, there is no partial credit, and overall is the pass rate over all pairs
(as editbench-mini reports it), its error bar that of the paired mean over every pair.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from flowfactory.data.edits import CATEGORIES
from flowfactory.eval.geneval import TASKS


def _cases(record: dict) -> list[tuple[tuple, str, list[float], list[float]]]:
    """One run's cases as (key, task, exact passes, partial credits); the key ends with the split (held out)."""
    if record.get("benchmark") == "editbench-mini":
        return [((i, p["instruction"], False), p["category"], [float(p["passed"])], [float(p["passed"])])
                for i, p in enumerate(record["per_pair"])]  # fmt: skip
    return [((p["prompt"], p["held_out"]), p["task"], [float(v) for v in p["passed"]], p["credit"])
            for p in record["per_prompt"]]  # fmt: skip


def pooled(paths: list[str]) -> dict[tuple, dict[str, list[float]]]:
    """{(prompt, held_out) or (pair index, instruction, False): {"passed": [...], "credit": [...], "task": ...}}
    over every run; every run must be of the same benchmark."""
    out: dict = {}
    kinds = set()
    for path in paths:
        record = json.loads(Path(path).read_text())
        kinds.add(record.get("benchmark", "geneval-mini"))
        for key, task, passed, credit in _cases(record):
            row = out.setdefault(key, {"task": task, "passed": [], "credit": []})
            row["passed"] += passed
            row["credit"] += credit
    if len(kinds) > 1:
        raise SystemExit(f"the runs are of different benchmarks ({', '.join(sorted(kinds))}): compare like with like")
    return out


def compare(base: dict, variant: dict, metric: str) -> list[dict]:
    """Per split and task: base mean, variant mean, paired change and 2 s.e. of the change."""
    if set(base) != set(variant):
        raise SystemExit("the runs score different prompt sets: compare runs of the same benchmark")
    edits = len(next(iter(base))) == 3
    tasks = CATEGORIES if edits else TASKS
    rows = []
    for split, held in (("in_distribution", False), ("held_out", True)):
        deltas_by_task = {}
        for task in tasks:
            keys = [k for k in base if k[-1] == held and base[k]["task"] == task]
            if not keys:
                continue
            b = np.array([np.mean(base[k][metric]) for k in keys])
            v = np.array([np.mean(variant[k][metric]) for k in keys])
            d = v - b
            deltas_by_task[task] = d
            se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            rows.append({"split": split, "task": task, "base": b.mean(), "variant": v.mean(), "change": d.mean(),
                         "two_se": 2 * se, "prompts": len(keys)})  # fmt: skip
        if deltas_by_task and edits:  # editbench-mini's overall: the pass rate over all pairs
            d = np.concatenate(list(deltas_by_task.values()))
            keys = [k for k in base if k[-1] == held]
            rows.append({"split": "all", "task": "overall", "base": np.mean([np.mean(base[k][metric]) for k in keys]),
                         "variant": np.mean([np.mean(variant[k][metric]) for k in keys]), "change": d.mean(),
                         "two_se": 2 * d.std(ddof=1) / math.sqrt(len(d)), "prompts": len(d)})  # fmt: skip
            for r in rows:
                r["split"] = "all"
        elif deltas_by_task:  # overall = mean of task accuracies; its s.e. combines the tasks' independently
            tasks = [r for r in rows if r["split"] == split]
            se2 = sum((r["two_se"] / 2) ** 2 for r in tasks) / len(tasks) ** 2
            rows.append({"split": split, "task": "overall", "base": np.mean([r["base"] for r in tasks]),
                         "variant": np.mean([r["variant"] for r in tasks]),
                         "change": np.mean([r["change"] for r in tasks]), "two_se": 2 * math.sqrt(se2),
                         "prompts": sum(r["prompts"] for r in tasks)})  # fmt: skip
    return [{k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()} for r in rows]


def markdown(name: str, table: dict[str, list[dict]]) -> str:
    if table["exact"][0]["split"] == "all":  # editbench-mini: exact passes only
        lines = [f"| task | pairs | base | {name} | change ± 2 s.e. |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {e['task']} | {e['prompts']} | {e['base']:.3f} | {e['variant']:.3f} | "
                  f"{e['change']:+.3f} ± {e['two_se']:.3f} |" for e in table["exact"]]  # fmt: skip
        return "\n".join(lines) + "\n"
    lines = [f"| split | task | base exact | {name} exact | change ± 2 s.e. | base credit | {name} credit | "
             "change ± 2 s.e. |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for e, c in zip(table["exact"], table["credit"]):
        lines.append(f"| {e['split']} | {e['task']} | {e['base']:.3f} | {e['variant']:.3f} | "
                     f"{e['change']:+.3f} ± {e['two_se']:.3f} | {c['base']:.3f} | {c['variant']:.3f} | "
                     f"{c['change']:+.3f} ± {c['two_se']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", nargs="+", required=True, help="the base model's geneval.json files (one per seed)")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=A.json,B.json: a model to compare, its geneval.json files (one per seed)")  # fmt: skip
    ap.add_argument("--out", help="directory for compare-NAME.{json,md}")
    args = ap.parse_args()
    base = pooled(args.base)
    for spec in args.variant:
        name, _, files = spec.partition("=")
        if not files:
            raise SystemExit(f"--variant takes NAME=A.json[,B.json...], got '{spec}'")
        variant = pooled(files.split(","))
        table = {m: compare(base, variant, m) for m in ("passed", "credit")}
        table = {"exact": table["passed"], "credit": table["credit"]}
        text = markdown(name, table)
        print(f"{name} vs base ({len(args.base)} base runs, {len(files.split(','))} {name} runs)\n{text}")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            record = {"base": args.base, "variant": files.split(","), **table}
            (out / f"compare-{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            (out / f"compare-{name}.md").write_text(text)


if __name__ == "__main__":
    main()
