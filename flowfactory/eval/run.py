"""Running the benchmarks on a model: generate, analyze, score, and write JSON + markdown + PNG grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flowfactory.data.edits import edit_set
from flowfactory.data.shapes import BACKGROUNDS, _identity, render
from flowfactory.eval import editbench, geneval
from flowfactory.eval.analyzer import analyze
from flowfactory.images import save_grid, to_uint8


def markdown_table(summary: dict, tasks: tuple[str, ...]) -> str:
    splits = list(summary)
    lines = ["| task | " + " | ".join(splits) + " |", "| --- |" + " --- |" * len(splits)]
    for task in (*tasks, "overall"):
        cells = []
        for s in splits:
            v = summary[s]["overall"] if task == "overall" else summary[s]["tasks"].get(task)
            cells.append("" if v is None else f"{v:.3f}")
        if any(cells):
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, name: str, record: dict, table: str, grid: torch.Tensor | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    (out / f"{name}.md").write_text(table)
    if grid is not None:
        save_grid(grid, out / f"{name}.png", cols=8)


@torch.no_grad()
def run_geneval(pipe, out: str | Path, images_per_prompt: int = 4, steps: int = 20, guidance: float = 3.0,
                batch_size: int = 64, limit: int | None = None, autocast=None, progress: bool = True,
                seed: int = 0) -> dict:  # fmt: skip
    """Generate `images_per_prompt` images per prompt and score them; another `seed` draws other
    noise for the same prompts (seed-averaged comparisons)."""
    prompts = geneval.prompt_set()[:limit]
    passed, credit, kept, reasons = score_prompts(pipe, prompts, images_per_prompt, steps, guidance, batch_size,
                                                  autocast, progress, keep=lambda job: job < 32, seed=seed)  # fmt: skip
    shown = [img for _, img in sorted(kept.items())]
    summary, partial = geneval.summarize(prompts, passed), geneval.summarize(prompts, credit)
    failures = geneval.summarize_failures(prompts, reasons)
    record = {"benchmark": "geneval-mini", "images_per_prompt": images_per_prompt, "steps": steps,
              "guidance": guidance, "seed": seed, "resolution": pipe.cfg.resolution, "summary": summary,
              "partial_credit": partial, "failures": failures,
              "per_prompt": [{"prompt": p.text, "task": p.task, "held_out": p.held_out, "passed": v,
                              "credit": cs, "failure": rs}
                             for p, v, cs, rs in zip(prompts, passed, credit, reasons)]}  # fmt: skip
    columns = {**summary, **{f"{split} (partial credit)": v for split, v in partial.items()}}
    table = markdown_table(columns, geneval.TASKS) + "\n" + failure_table(failures)
    write_report(Path(out), "geneval", record, table, torch.stack(shown) if shown else None)
    return record


def failure_table(failures: dict, reasons: tuple[str, ...] = geneval.FAILURES, what: str = "images") -> str:
    """Markdown: per task, the share of its images (or pairs) failing on each requirement
    (`geneval.failure`, `editbench.failure`)."""
    lines = [f"| why {what} fail (share of the task's {what}) | " + " | ".join(reasons) + " |",
             "| --- |" + " --- |" * len(reasons)]  # fmt: skip
    lines += [f"| {task} | " + " | ".join(f"{shares[why]:.3f}" for why in reasons) + " |"
              for task, shares in failures.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def score_prompts(pipe, prompts: list, k: int, steps: int, guidance: float, batch_size: int = 64, autocast=None,
                  progress: bool = True, keep=lambda job: False, seed: int = 0):  # fmt: skip
    """Generate `k` images per geneval prompt (job j uses seed `seed + j`) and score each with the
    analyzer; returns per prompt the pass list and the partial-credit list
    (`geneval.partial_credit`), {job: image} for the jobs `keep` selects, and per prompt each
    image's failure reason (`geneval.failure`, "" when it passes)."""
    from tqdm import tqdm

    jobs = [(i, p.text) for i, p in enumerate(prompts) for _ in range(k)]
    passed: list[list[bool]] = [[] for _ in prompts]
    credit: list[list[float]] = [[] for _ in prompts]
    reasons: list[list[str]] = [[] for _ in prompts]
    kept = {}
    size = pipe.cfg.resolution
    for start in tqdm(range(0, len(jobs), batch_size), disable=not progress, desc="generate+score"):
        batch = jobs[start : start + batch_size]
        images, _ = pipe.generate([t for _, t in batch], size, size, steps=steps, guidance=guidance,
                                  seed=seed + start, autocast=autocast)  # fmt: skip
        for j, ((i, _), img) in enumerate(zip(batch, images), start):
            scene = analyze(img)
            passed[i].append(geneval.score(prompts[i], scene))
            credit[i].append(geneval.partial_credit(prompts[i], scene))
            reasons[i].append(geneval.failure(prompts[i], scene))
            if keep(j):
                kept[j] = img
    return passed, credit, kept, reasons


def ground_truth_geneval(seed: int = 0, pipe=None, batch_size: int = 64) -> dict:
    """Score rendered solutions of every prompt (must be 1.0) and pure noise (must be ~0). With a
    pipeline, also the solutions round-tripped through its autoencoder ("autoencoder"): the best
    geneval-mini any transformer on that autoencoder can reach."""
    rng = np.random.default_rng(seed)
    prompts = geneval.prompt_set()
    size = pipe.cfg.resolution if pipe is not None else 64
    solutions = [render(geneval.solve(p, rng), size) for p in prompts]
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in prompts]

    def summary(images) -> dict:
        return geneval.summarize(prompts, [[geneval.score(p, analyze(img))] for p, img in zip(prompts, images)])

    out = {"ground_truth": summary(solutions), "noise": summary(noise)}
    if pipe is not None:
        out["autoencoder"] = summary(round_trip(pipe, solutions, batch_size))
    return out


def round_trip(pipe, images: list[np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """uint8 images encoded and decoded by the pipeline's autoencoder (what its latents can hold)."""
    device = next(pipe.transformer.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.cat([_tensor(img) for img in images[start : start + batch_size]]).to(device)
            y = pipe.decode_latents(pipe.encode_images(x)).float().clamp(-1, 1)
            out += list(to_uint8(y))
    return out


EDITORS = {
    # baselines: the scorer must give the target 1.0 and the unedited source 0.0
    "ground-truth": lambda pair, size: render(pair.target, size),
    "identity": lambda pair, size: render(pair.source, size),
}


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


def autoencoder_editor(pipe):
    """The target scene round-tripped through a model's autoencoder: the editbench-mini ceiling of
    any transformer on it."""

    def edit(pair, size: int) -> np.ndarray:
        return round_trip(pipe, [render(pair.target, size)])[0]

    return edit


def kontext_editor(pipe, steps: int = 20, guidance: float = 3.0, seed: int = 0):
    """A Kontext model as an editbench editor: the rendered source (and reference) as context, every
    pair sampled from the noise of `seed` (another seed: other noise for the same pairs)."""

    def edit(pair, size: int) -> np.ndarray:
        images = [render(pair.source, size)] + ([render(pair.reference, size)] if pair.reference is not None else [])
        return edit_image(pipe, images, pair.instruction, size, steps, guidance, seed)

    return edit


@torch.no_grad()
def edit_image(pipe, images: list[np.ndarray], instruction: str, size: int, steps: int, guidance: float,
               seed: int) -> np.ndarray:  # fmt: skip
    cond = pipe.context([_tensor(im) for im in images])
    out, _ = pipe.generate([instruction], size, size, steps=steps, guidance=guidance, seed=seed, cond=cond)
    return to_uint8(out[:1])[0]


def character_identity(pipe, chains: int = 20, turns: int = 5, size: int = 64, steps: int = 20,
                       guidance: float = 3.0) -> dict:  # fmt: skip
    """Multi-turn identity: put a reference character into a scene, then edit the result again
    `turns - 1` times (background changes); after each turn, is the character still recognised?"""
    pairs = [p for p in edit_set(400, seed=7) if p.category == "character"][:chains]
    kept = np.zeros((len(pairs), turns), dtype=bool)
    for i, pair in enumerate(pairs):
        img = edit_image(pipe, [render(pair.source, size), render(pair.reference, size)], pair.instruction, size,
                         steps, guidance, seed=i)  # fmt: skip
        backgrounds = [b for b in BACKGROUNDS if b != pair.source.background]
        for turn in range(turns):
            if turn:
                bg = backgrounds[turn % len(backgrounds)]
                img = edit_image(pipe, [img], f"change the background to {bg}", size, steps, guidance, seed=i + turn)
            kept[i, turn] = any(o.character == pair.op for o in analyze(img).objects)
    return {"chains": len(pairs), "turns": turns, "identity_rate_per_turn": kept.mean(0).round(4).tolist(),
            "identity_rate_all_turns": float(kept.all(1).mean())}  # fmt: skip


def run_editbench(editor, out: str | Path, n: int = 200, size: int = 64, name: str = "editbench",
                  settings: dict | None = None) -> dict:  # fmt: skip
    """Score `editor(pair, size) -> uint8 [H, W, 3]` on the fixed editbench-mini pairs; `settings`
    (the editor's steps, guidance, seed) are recorded with the result."""
    pairs = edit_set(n)
    passed, reasons, psnr, shown = [], [], [], []
    for pair in pairs:
        img = np.asarray(editor(pair, size))
        reasons.append(editbench.failure(analyze(img), pair))
        passed.append(reasons[-1] == "")
        psnr.append(editbench.untouched_psnr(img, pair, size))
        if len(shown) < 16:
            shown += [render(pair.source, size), img]
    summary = editbench.summarize(pairs, passed, psnr, reasons)
    record = {"benchmark": "editbench-mini", "editor": name, **(settings or {}), "summary": summary,
              "per_pair": [{"category": p.category, "op": p.op, "instruction": p.instruction, "passed": v,
                            "failure": why} for p, v, why in zip(pairs, passed, reasons)]}  # fmt: skip
    table = markdown_table({name: summary}, tuple(editbench.CATEGORIES))
    table += f"\nuntouched-region PSNR: {summary['untouched_psnr_db']:.2f} dB\n\n"
    table += failure_table(summary["failures"], editbench.FAILURES, "pairs")
    grid = torch.from_numpy(np.stack(shown)).permute(0, 3, 1, 2).float() / 127.5 - 1
    write_report(Path(out), f"editbench-{name}", record, table, grid)
    return record


# ---------------------------------------------------------------------------------------------
# Fill and control benchmarks


def _cases(n: int, seed: int):
    """n scenes with at least one object, their captions, from a seed of their own."""
    from flowfactory.data.shapes import caption, sample_scene

    rng = np.random.default_rng([seed, 41])
    out = []
    while len(out) < n:
        scene = sample_scene(rng)
        if scene.objects:
            out.append((scene, caption(scene, rng), int(rng.integers(len(scene.objects)))))
    return out


def _found(obj, scene, tol: float = editbench.POS_TOL, identity: bool = True) -> bool:
    """Is an object (of `obj`'s identity, unless `identity` is off) within `tol` (canvas fraction)
    of its place in `scene`?"""
    return any((not identity or _identity(o) == _identity(obj)) and abs(o.cx - obj.cx) <= tol
               and abs(o.cy - obj.cy) <= tol for o in scene.objects)  # fmt: skip


def fill_passes(scene, index: int, image: np.ndarray) -> bool:
    """Inpainting: the masked object is back in place in `image` (uint8 [H, W, 3])."""
    return _found(scene.objects[index], analyze(image))


def control_passes(scene, image: np.ndarray, identity: bool = True) -> bool:
    """Control: as many objects as the scene's, each where the control image put it; with
    `identity` each also of the right colour, shape, size and pattern (what the prompt asks)."""
    found = analyze(image)
    return len(found.objects) == len(scene.objects) and all(_found(o, found, identity=identity) for o in scene.objects)


@torch.no_grad()
def run_fill(pipe, out: str | Path, n: int = 100, steps: int = 20, guidance: float = 3.0, batch_size: int = 25,
             seed: int = 0) -> dict:  # fmt: skip
    """Inpainting: mask the box of one object, prompt with the whole scene's caption; a case passes
    when the analyzer finds that object back in place. PSNR over the unmasked pixels."""
    from flowfactory.data.structure import object_mask

    size = pipe.cfg.resolution
    cases = _cases(n, seed)
    passed, psnr, shown = [], [], []
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        src = np.stack([render(s, size) for s, _, _ in chunk])
        masks = np.stack([object_mask(s, i, size) for s, _, i in chunk])
        images = torch.from_numpy(src).permute(0, 3, 1, 2).float() / 127.5 - 1
        cond = pipe.fill_condition(images, torch.from_numpy(masks)[:, None])
        out_imgs, _ = pipe.generate([c for _, c, _ in chunk], size, size, steps=steps, guidance=guidance,
                                    seed=seed + start, cond=cond)  # fmt: skip
        for (scene, _, i), img, m, s in zip(chunk, out_imgs, masks, src):
            arr = to_uint8(img[None])[0]
            passed.append(fill_passes(scene, i, arr))
            keep = m == 0
            mse = ((arr[keep].astype(np.float64) - s[keep]) ** 2).mean()
            psnr.append(float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse)))
            if len(shown) < 16:
                shown += [torch.from_numpy(s * (1 - m[..., None]).astype(np.uint8)).permute(2, 0, 1), img.cpu()]
    finite = [p for p in psnr if np.isfinite(p)]
    summary = {"cases": n, "masked_object_accuracy": float(np.mean(passed)),
               "unmasked_psnr_db": float(np.mean(finite)) if finite else float("inf")}  # fmt: skip
    grid = torch.stack([x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x for x in shown])
    write_report(Path(out), "fill", {"benchmark": "fill-mini", "steps": steps, "guidance": guidance, "summary": summary},
                 "\n".join(f"| {k} | {v:.3f} |" for k, v in summary.items() if k != "cases"), grid)  # fmt: skip
    return summary


@torch.no_grad()
def run_control(pipe, out: str | Path, n: int = 100, encoder: str = "edges", steps: int = 20, guidance: float = 3.0,
                batch_size: int = 25, seed: int = 0) -> dict:  # fmt: skip
    """Control: a scene's edge (or depth) map and caption; a case passes when every object of the
    scene is found by the analyzer within the position tolerance. `count_followed` (as many objects
    as the control image, wherever they are) tells a wrong count from a misplaced object."""
    from flowfactory.data.structure import CONTROL_ENCODERS

    size = pipe.cfg.resolution
    cases = _cases(n, seed)
    placed, exact, counted, shown = [], [], [], []
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        ctl = np.stack([CONTROL_ENCODERS[encoder](s, size) for s, _, _ in chunk])
        cond = pipe.control_condition(torch.from_numpy(ctl).permute(0, 3, 1, 2).float() / 127.5 - 1)
        out_imgs, _ = pipe.generate([c for _, c, _ in chunk], size, size, steps=steps, guidance=guidance,
                                    seed=seed + start, cond=cond)  # fmt: skip
        for (scene, _, _), img, c in zip(chunk, out_imgs, ctl):
            arr = to_uint8(img[None])[0]
            counted.append(len(analyze(arr).objects) == len(scene.objects))
            placed.append(control_passes(scene, arr, identity=False))
            exact.append(placed[-1] and control_passes(scene, arr))
            if len(shown) < 16:
                shown += [torch.from_numpy(c).permute(2, 0, 1).float() / 127.5 - 1, img.cpu()]
    summary = {"cases": n, "encoder": encoder, "count_followed": float(np.mean(counted)),
               "positions_followed": float(np.mean(placed)), "positions_and_identity": float(np.mean(exact))}
    write_report(Path(out), f"control-{encoder}", {"benchmark": "control-mini", "steps": steps, "guidance": guidance,
                                                  "summary": summary},
                 f"| count followed | {summary['count_followed']:.3f} |\n"
                 f"| positions followed | {summary['positions_followed']:.3f} |\n"
                 f"| positions and identity | {summary['positions_and_identity']:.3f} |", torch.stack(shown))  # fmt: skip
    return summary


def variation_kept(scene, image: np.ndarray) -> dict[str, bool]:
    """Image variation: which of the reference scene's contents `image` (uint8 [H, W, 3]) shows again,
    wherever they are placed."""
    found = analyze(image)
    return {"objects_kept": found.canonical() == scene.canonical(),
            "colours_kept": sorted(o.color for o in found.objects) == sorted(o.color for o in scene.objects),
            "count_kept": len(found.objects) == len(scene.objects),
            "background_kept": found.background == scene.background}  # fmt: skip


@torch.no_grad()
def run_variation(pipe, out: str | Path, n: int = 100, steps: int = 20, guidance: float = 3.0, batch_size: int = 25,
                  seed: int = 0, captions: bool = False) -> dict:  # fmt: skip
    """Image variation (Redux): generate from a reference scene's image tokens alone (no text); a case
    passes when the analyzer finds the reference's content again, layout free: `objects_kept` (the
    same background and multiset of objects: colour, shape, size, pattern), `colours_kept` (the same
    multiset of object colours), `count_kept`, `background_kept`. `captions` instead prompts a text
    model with the reference's caption and no image (the reference point a caption reaches)."""
    size = pipe.cfg.resolution
    cases = _cases(n, seed)
    kept: dict[str, list[bool]] = {"objects_kept": [], "colours_kept": [], "count_kept": [], "background_kept": []}
    shown = []
    for start in range(0, n, batch_size):
        chunk = cases[start : start + batch_size]
        refs = np.stack([render(s, size) for s, _, _ in chunk])
        images = torch.from_numpy(refs).permute(0, 3, 1, 2).float() / 127.5 - 1
        cond = None if captions else pipe.variation_condition(images)
        prompts = [c if captions else "" for _, c, _ in chunk]
        out_imgs, _ = pipe.generate(prompts, size, size, steps=steps, guidance=guidance, seed=seed + start, cond=cond)
        for (scene, _, _), img, ref in zip(chunk, out_imgs, images):
            arr = to_uint8(img[None])[0]
            for k, v in variation_kept(scene, arr).items():
                kept[k].append(v)
            if len(shown) < 16:
                shown += [ref, img.cpu()]
    summary = {"cases": n, "conditioning": "caption" if captions else "image",
               **{k: float(np.mean(v)) for k, v in kept.items()}}  # fmt: skip
    write_report(Path(out), "variation", {"benchmark": "variation-mini", "steps": steps, "guidance": guidance,
                                          "summary": summary},
                 "\n".join(f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in summary.items() if k.endswith("kept")),
                 torch.stack([x.float().cpu() for x in shown]))  # fmt: skip
    return summary
