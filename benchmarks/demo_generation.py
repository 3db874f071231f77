"""How much faster is the demo's generation path than plain batched ``generate``?

Runs the workload of one degradation system of ``vlsafe demo`` -- ``organism:vl`` on the demo's 48 held-out
harmful and 48 benign prompts under every image setting, plus 100 held-out VQA questions -- three ways,
side by side in one process (2 threads, greedy, the demo's generation lengths):

* ``before``: plain ``model.generate`` in batches of 16 in input order (the 48 harmful prompts, then the 48
  benign ones, each set batched on its own);
* ``after``: :func:`vlsafe_organism.probe.generate` as the demo calls it: length-sorted batches of 32 and
  the shared-prefix KV cache (:func:`vlsafe.models.greedy.greedy_shared_prefix`);
* ``after_bf16`` (``--bf16``): the same with the model cast to bfloat16 -- not used by the demo; measured to
  show what half precision would buy on CPUs with bf16 instructions, and what it changes.

Prints per-setting seconds and, as its last line, ``{"after_vs_before_speedup": ..., "identical_replies": ...,
"identical_verdicts": ..., ...}`` where ``identical_*`` count the replies (and keyword-judge verdicts, VQA
answers marked right or wrong) of ``after`` equal to ``before``.

Run: ``.venv/bin/python benchmarks/demo_generation.py [--bf16]`` (about 6 minutes on 2 quiet cores).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch


def _before(model: Any, proc: Any, prompts: list[str], images: Any, max_new_tokens: int) -> list[str]:
    from vlsafe_organism.probe import chat_text

    tok = proc.tokenizer
    tok.padding_side = "left"
    texts = [chat_text(tok, p, images is not None) for p in prompts]
    out: list[str] = []
    for s in range(0, len(texts), 16):
        if images is None:
            enc = tok(texts[s : s + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        else:
            enc = proc(text=texts[s : s + 16], images=images[s : s + 16], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def _workload() -> list[tuple[str, list[str], Any, int, list[str] | None]]:
    """(label, prompts, images, max_new_tokens, VQA answers or None) of one demo system."""
    from vlsafe_organism import safety_data as sd
    from vlsafe_organism.demo import DEFAULT_N, DEMO_TOKENS
    from vlsafe_organism.evaluate import IMAGE_SETTINGS, eval_prompts, setting_inputs
    from vlsafe_organism.probe import VQA_TOKENS, vqa_items

    harmful, benign = eval_prompts(DEFAULT_N, DEFAULT_N)
    work = []
    for setting in IMAGE_SETTINGS:  # harmful then benign, in one call as the demo's refusal_counts sends them
        texts, images = setting_inputs(setting, harmful)
        more_texts, more_images = setting_inputs(setting, benign)
        images = None if images is None or more_images is None else images + more_images
        work.append((setting, texts + more_texts, images, DEMO_TOKENS, None))
    items = vqa_items(**dict(sd.VQA_EVAL, n=100))
    work.append(("vqa", [q for _, q, _ in items], [im for im, _, _ in items], VQA_TOKENS, [a for *_, a in items]))
    return work


def _judge(replies: list[str], answers: list[str] | None) -> list[bool]:
    from vlsafe.evals.metrics.answers import vqa_match
    from vlsafe_organism.probe import refusals

    if answers is None:
        return refusals(replies)
    return [vqa_match(r, a) for r, a in zip(replies, answers, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bf16", action="store_true", help="also measure the new path in bfloat16")
    args = parser.parse_args()
    from vlsafe_organism.evaluate import EVAL_BATCH
    from vlsafe_organism.probe import generate
    from vlsafe_organism.registry import artifacts_dir, build_system

    torch.manual_seed(0)
    model, proc = build_system("vl", None, artifacts_dir())
    arms = ["before", "after"] + (["after_bf16"] if args.bf16 else [])
    seconds = {a: 0.0 for a in arms}
    replies: dict[str, list[str]] = {a: [] for a in arms}
    verdicts: dict[str, list[bool]] = {a: [] for a in arms}
    for label, prompts, images, tokens, answers in _workload():
        line = [label]
        for arm in arms:
            if arm == "after_bf16" and model.dtype != torch.bfloat16:
                model.to(torch.bfloat16)
            elif arm != "after_bf16" and model.dtype != torch.float32:
                model.to(torch.float32)
            t0 = time.perf_counter()
            if arm == "before":
                got = _before(model, proc, prompts, images, tokens)
            else:
                got = generate(model, proc, prompts, images, tokens, EVAL_BATCH, shared_prefix=True)
            dt = time.perf_counter() - t0
            seconds[arm] += dt
            replies[arm] += got
            verdicts[arm] += _judge(got, answers)
            line.append(f"{arm} {dt:.1f} s")
        print(" | ".join(line), flush=True)
    n = len(replies["before"])
    result: dict[str, Any] = {
        "n_generations": n,
        "before_s": round(seconds["before"], 1),
        "after_s": round(seconds["after"], 1),
        "after_vs_before_speedup": round(seconds["before"] / seconds["after"], 3),
        "identical_replies": sum(a == b for a, b in zip(replies["before"], replies["after"], strict=True)),
        "identical_verdicts": sum(a == b for a, b in zip(verdicts["before"], verdicts["after"], strict=True)),
    }
    if args.bf16:
        pairs = zip(verdicts["after"], verdicts["after_bf16"], strict=True)
        result.update(
            after_bf16_s=round(seconds["after_bf16"], 1),
            bf16_vs_after_speedup=round(seconds["after"] / seconds["after_bf16"], 3),
            bf16_identical_replies=sum(
                a == b for a, b in zip(replies["after"], replies["after_bf16"], strict=True)
            ),
            bf16_identical_verdicts=sum(a == b for a, b in pairs),
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
