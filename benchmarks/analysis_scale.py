"""Scale of the analyses: memory and time of the shift analysis in N, and the weight diff vs a raw read.

1. Shift analysis (text vs caption variant, last token + query-text mean, all 30 layers, running
   statistics) over N = 100, 1,000, 10,000 queries on a random-weight Llama with SmolLM2-135M's shapes
   (hidden 576, 30 layers, vocab 49152) and a small byte-level BPE tokenizer (the tiny causal_lm one;
   no chat template, so prompts are short: a few tokens, ~10 for the caption variant). Every query really goes
   through the model, once per variant; each N runs in its own subprocess, whose peak RSS is reset after the
   model load so that the figure is the analysis' own peak (model included). Every N uses the same batch
   size (100) and the same 100 queries repeated, so every batch has the same padded shape whatever N:
   memory flatness in N is what is measured. Short prompts are what make 10,000 x 2 forward passes fit
   in minutes on 2 cores.
2. Weight diff of two sharded bf16 checkpoints of ~1.07 GB each (32 tensors of 4096x4096, 3 shards, B =
   A with every other tensor perturbed) against reading the same bytes of both with plain ``readinto``
   (both from the page cache; interleaved repeats, medians).

Figures (last line, JSON): shift_seconds_{N}, shift_peak_rss_mb_{N}, shift_loaded_rss_mb_{N} (RSS after
the model load), peak_rss_ratio_10k_vs_100 (target
<= 1.2), shift_queries_per_s_10k, weight_diff_seconds, raw_read_seconds, weight_diff_vs_raw_read (target
<= 1.5), checkpoint_gb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, environment, interleaved, median, smollm2_shaped_llama  # noqa: E402


def shift_worker(n: int, tokenizer_dir: str, batch: int, threads: int = 1, layers: int = 30) -> None:
    """Run the shift analysis over ``n`` queries; print one JSON line with time and peak RSS."""
    from transformers import AutoTokenizer

    from vlsafe.analysis import compute_shift
    from vlsafe.models.bundle import ModelBundle

    torch.set_num_threads(threads)
    model = smollm2_shaped_llama(layers=layers)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    bundle = ModelBundle(
        model, tok, None, "causal_lm", model.get_decoder().layers, name="smollm2-shaped-random"
    )
    # The same 100 queries repeated: every N sees the same length distribution, and with the default batch of
    # 100 every batch of every N has the same padded shape ("q{i}" for i < n would give longer prompts to larger N).
    items = [{"text": f"q{i % 100}", "caption": f"c{i % 100}"} for i in range(n)]
    loaded_mb = _vm_kb("VmRSS") / 1024
    # Reset the high-water mark (VmHWM, which ru_maxrss reads too) after the model load: the load's own
    # transient peak is ~100 MB above its resident size and would otherwise hide the analysis' peak.
    _reset_hwm()
    start = time.perf_counter()
    res = compute_shift(
        bundle, items, ["text", "caption"], positions=("last", "text_mean"), batch_size=batch, progress=False
    )
    seconds = time.perf_counter() - start
    assert res.count == n
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "seconds": seconds, "peak_rss_mb": peak_mb, "loaded_rss_mb": loaded_mb}))


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _vm_kb(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure of this process in kB (Linux ``/proc/self/status``; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run_shift(n: int, tokenizer_dir: str, batch: int, threads: int, layers: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--shift-worker",
        str(n),
        "--tokenizer",
        tokenizer_dir,
        "--batch",
        str(batch),
        "--threads",
        str(threads),
        "--layers",
        str(layers),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    names = sorted(tensors)
    per = -(-len(names) // shards)
    for s in range(shards):
        part = {k: tensors[k] for k in names[s * per : (s + 1) * per]}
        save_file(part, str(folder / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))


def weight_bench(root: Path, repeats: int) -> dict[str, float]:
    from vlsafe.analysis import weight_diff

    gen = torch.Generator().manual_seed(0)
    a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    for layer in range(16):
        for mod in ("mlp.up_proj", "mlp.down_proj"):
            name = f"model.layers.{layer}.{mod}.weight"
            t = torch.randn(4096, 4096, generator=gen).to(torch.bfloat16)
            a[name] = t
            b[name] = (t.float() + 0.01 * (layer % 2)).to(torch.bfloat16)
    _write_checkpoint(root / "a", a, 3)
    _write_checkpoint(root / "b", b, 3)
    del a, b
    files = sorted((root / "a").glob("*.safetensors")) + sorted((root / "b").glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    buf = bytearray(64 << 20)

    def raw() -> None:
        view = memoryview(buf)
        for f in files:
            with f.open("rb", buffering=0) as fh:
                while fh.readinto(view):
                    pass

    def diff() -> None:
        res = weight_diff(root / "a", root / "b", progress=False)
        assert len(res.rows) == 32

    raw()  # warm the page cache
    times = interleaved({"raw": raw, "diff": diff}, repeats)
    return {
        "checkpoint_gb": total / 2 / 1e9,
        "raw_read_seconds": median(times["raw"]),
        "weight_diff_seconds": median(times["diff"]),
        "weight_diff_vs_raw_read": median(times["diff"]) / median(times["raw"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shift-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=100, help="queries per batch, the same for every N")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeats", type=int, default=3, help="weight-diff repeats (0: skip that half)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the shift workers")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers of the random model")
    args = parser.parse_args()
    if args.shift_worker:
        shift_worker(args.shift_worker, args.tokenizer, args.batch, args.threads, args.layers)
        return
    from vlsafe.models import build_tiny

    figures: dict[str, object] = {"environment": environment()}
    root = Path(tempfile.mkdtemp(prefix="vlsafe-analysis-bench-"))
    try:
        tiny = build_tiny("causal_lm", root / "tiny")
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
        for n in sizes:
            r = _run_shift(n, str(tiny), args.batch, args.threads, args.layers)
            figures[f"shift_seconds_{n}"] = round(r["seconds"], 2)
            figures[f"shift_peak_rss_mb_{n}"] = round(r["peak_rss_mb"], 1)
            figures[f"shift_loaded_rss_mb_{n}"] = round(r["loaded_rss_mb"], 1)
            print(
                f"shift N={n}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(after model load {r['loaded_rss_mb']:.0f} MB)",
                file=sys.stderr,
            )
        if 100 in sizes and 10000 in sizes:
            figures["peak_rss_ratio_10k_vs_100"] = round(
                figures["shift_peak_rss_mb_10000"] / figures["shift_peak_rss_mb_100"],
                3,  # type: ignore[operator]
            )
            figures["shift_queries_per_s_10k"] = round(10000 / figures["shift_seconds_10000"], 1)  # type: ignore[operator]
        if args.repeats > 0:
            wb = weight_bench(root / "ckpt", args.repeats)
            figures.update({k: round(v, 3) for k, v in wb.items()})
            print(f"weight diff: {wb}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["cpu_count"] = os.cpu_count()
    figures["shift_threads"] = args.threads
    figures["shift_batch"] = args.batch
    figures["shift_model_layers"] = args.layers
    emit(figures)


if __name__ == "__main__":
    main()
