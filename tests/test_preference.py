"""Diffusion-DPO for rectified flow: the loss by hand, training moves the policy toward the chosen images."""

import dataclasses
import json
import math

import numpy as np
import torch

from flowfactory.config import recipe
from flowfactory.data.shapes import render
from flowfactory.eval import geneval
from flowfactory.eval.analyzer import analyze
from flowfactory.images import load_image, save_image
from flowfactory.pipeline import Pipeline
from flowfactory.train.preference import DPOTrainer, dpo_loss, judge_pairs, judge_prompts


def test_dpo_loss_matches_a_hand_computed_example():
    got = dpo_loss(torch.tensor([0.2]), torch.tensor([0.5]), torch.tensor([0.3]), torch.tensor([0.4]), beta=10.0)
    # inside = -0.5 * 10 * ((0.2 - 0.5) - (0.3 - 0.4)) = 1.0; loss = -log sigmoid(1) = log(1 + e^-1)
    assert abs(got.item() - math.log(1 + math.exp(-1))) < 1e-6
    same = dpo_loss(torch.tensor([0.7]), torch.tensor([0.1]), torch.tensor([0.7]), torch.tensor([0.1]), beta=5.0)
    assert abs(same.item() - math.log(2)) < 1e-6  # policy == reference


def make_pairs(root, n=16, size=16):
    """Rendered pairs: the chosen image solves the prompt, the rejected one is another prompt's."""
    rng = np.random.default_rng(0)
    prompts = [p for p in geneval.prompt_set() if p.task == "single_object"][:n]
    lines = []
    for i, p in enumerate(prompts):
        good = render(geneval.solve(p, rng), size)
        bad = render(geneval.solve(prompts[(i + 1) % n], rng), size)
        for name, img in (("w", good), ("l", bad)):
            save_image(torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, root / f"{i}{name}.png")
        lines.append(json.dumps({"prompt": p.text, "chosen": f"{i}w.png", "rejected": f"{i}l.png", "source": "test"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl"


def test_dpo_training_prefers_the_chosen_images(tmp_path):
    pairs = make_pairs(tmp_path)
    cfg = dataclasses.replace(recipe("tiny-shapes"), dataset=f"preferences:{pairs}", steps=30, batch_size=8,
                              val_every=0, lr=1e-3, tombstones=str(tmp_path / "t.jsonl"))  # fmt: skip
    init = Pipeline.from_config(cfg.model)
    trainer = DPOTrainer(cfg, tmp_path / "run", init, beta=2000.0, progress=False)
    first = trainer.train_step()
    assert abs(first["loss"] - math.log(2)) < 1e-4 and abs(first["reward_margin"]) < 1e-6
    ref = {k: v.clone() for k, v in trainer.reference.state_dict().items()}
    metrics = trainer.fit()
    assert metrics["loss"] < math.log(2) and metrics["accuracy"] > 0.5
    assert all(torch.equal(v, trainer.reference.state_dict()[k]) for k, v in ref.items())  # reference frozen


def test_judge_pairs_writes_the_shared_pair_format(tmp_path):
    pipe = Pipeline.from_config(recipe("tiny-shapes").model)
    stats = judge_pairs(pipe, tmp_path, prompts=6, k=2, steps=1, progress=False)
    assert stats["prompts"] == 6 and (tmp_path / "pairs.jsonl").exists()
    assert set(stats["pass_rate_by_task"]) == set(geneval.TASKS)  # six prompts: one of every task
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert {"prompt", "chosen", "rejected", "source"} <= set(rec)
    bench = {p.text for p in geneval.prompt_set()}
    assert json.loads((tmp_path / "judge.json").read_text())["pairs"] == stats["pairs"]
    assert not bench & {json.loads(x)["prompt"] for x in (tmp_path / "pairs.jsonl").read_text().splitlines()}


class RenderingPipe:
    """Stands in for a model: even seeds draw a scene that satisfies the prompt, odd seeds one
    that keeps only its first object (so samples of a prompt differ in partial credit)."""

    cfg = dataclasses.make_dataclass("Cfg", [("resolution", int)])(64)

    def __init__(self, prompts):
        self.prompts = {p.text: p for p in prompts}

    def generate(self, texts, h, w, steps, guidance, seed, autocast=None):
        out = []
        for j, text in enumerate(texts):
            p = self.prompts[text]
            scene = geneval.solve(p, np.random.default_rng(seed + j))
            if (seed + j) % 2:
                scene = type(scene)(scene.background, scene.objects[:1])
            out.append(torch.from_numpy(render(scene, 64)).permute(2, 0, 1).float() / 127.5 - 1)
        return torch.stack(out), {}


def test_graded_judge_pairs_more_and_less_of_the_prompt(tmp_path):
    """Graded: a prompt whose samples differ in partial credit gives a pair, chosen the sample
    with more of the prompt satisfied; only the asked tasks' prompts are drawn."""
    pipe = RenderingPipe(geneval.prompt_set(seed=1001))
    stats = judge_pairs(pipe, tmp_path, prompts=6, k=2, steps=1, progress=False, graded=True,
                        tasks=["position", "color_attr"])  # fmt: skip
    assert set(stats["pass_rate_by_task"]) == {"position", "color_attr"} and stats["graded"]
    assert stats["pairs"] == 6 and stats["pairs_by_task"] == {"position": 3, "color_attr": 3}
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        p = pipe.prompts[rec["prompt"]]
        chosen, rejected = (analyze(load_image(tmp_path / rec[k])) for k in ("chosen", "rejected"))
        assert rec["source"] == "analyzer-graded" and rec["margin"] > 0
        assert geneval.partial_credit(p, chosen) == 1.0 > geneval.partial_credit(p, rejected)


def test_solution_judge_prefers_the_worlds_rendering_over_a_failing_sample(tmp_path):
    """Solutions: every prompt with a failing sample gives a pair whose chosen image is the
    world's rendering of the prompt (it passes) and whose rejected image is the worst sample."""
    pipe = RenderingPipe(geneval.prompt_set(seed=1001))
    stats = judge_pairs(pipe, tmp_path, prompts=6, k=2, steps=1, progress=False, solutions=True,
                        tasks=["two_object", "color_attr"])  # fmt: skip
    assert stats["solutions"] and stats["pairs"] == 6  # odd seeds drop an object: every prompt has a failure
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        p = pipe.prompts[rec["prompt"]]
        chosen, rejected = (analyze(load_image(tmp_path / rec[k])) for k in ("chosen", "rejected"))
        assert rec["source"] == "analyzer-solution" and rec["chosen"].startswith("images/solution-")
        assert geneval.score(p, chosen) and not geneval.score(p, rejected)
        assert rec["margin"] == round(1.0 - geneval.partial_credit(p, rejected), 4) > 0


def test_judge_prompts_draw_further_grammar_seeds_beyond_one_draw():
    """One draw holds about 200 usable prompts; a larger pool keeps those first (same order) and
    appends new texts from further draws, never a benchmark text and never a repeat."""
    one = judge_prompts(10_000, max_draws=1)
    big = judge_prompts(len(one) + 300)
    assert len(big) == len(one) + 300 and [p.text for p in big[: len(one)]] == [p.text for p in one]
    texts = [p.text for p in big]
    assert len(set(texts)) == len(texts) and not set(texts) & {p.text for p in geneval.prompt_set()}
    assert not any(p.held_out for p in big)
    only = judge_prompts(300, tasks=["position"])
    assert len(only) == 300 and {p.task for p in only} == {"position"}
