"""Streaming-merge benchmark: vlsafe vs raw safetensors I/O vs mergekit 0.1.5.

Builds three synthetic sharded bf16 checkpoints (base + two fine-tunes) shaped like a ~0.55B
Llama decoder (hidden 1536, 16 layers, intermediate 4096, vocab 32000; ~1.1 GB each) in a temp dir
on /tmp, then measures, each in a fresh subprocess (hot page cache for all):

* raw I/O: read every tensor of the three inputs with ``safetensors.safe_open`` and write one
  checkpoint of the same bytes with ``safetensors.torch.save_file``;
* ``vlsafe.methods.merging.merge``: linear (3 models) and TIES (base + 2, density 0.5): wall time and peak
  RSS above the interpreter's baseline (after imports);
* mergekit 0.1.5 (installed into its own venv under ~/.cache/vlsafe-bench) on the same two merges.

The last line printed is one JSON object with the ratios and raw seconds. Usage:
``.venv/bin/python benchmarks/merge_stream.py [--skip-mergekit] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, LAYERS, INTER, VOCAB, HEADS = 1536, 16, 4096, 32000, 12
CACHE = Path.home() / ".cache" / "vlsafe-bench"
VENV = CACHE / "mergekit-venv"


def shapes() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
        out[p + "mlp.gate_proj.weight"] = (INTER, HIDDEN)
        out[p + "mlp.up_proj.weight"] = (INTER, HIDDEN)
        out[p + "mlp.down_proj.weight"] = (HIDDEN, INTER)
        out[p + "input_layernorm.weight"] = (HIDDEN,)
        out[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    out["model.norm.weight"] = (HIDDEN,)
    out["lm_head.weight"] = (VOCAB, HIDDEN)
    return out


def write_checkpoint(out: Path, seed: int, base_seed: int | None, shard_bytes: int = 500 * 10**6) -> None:
    """Random bf16 weights; a fine-tune is the base plus 1% noise (same base seed)."""
    out.mkdir(parents=True)
    gen_base = torch.Generator().manual_seed(base_seed if base_seed is not None else seed)
    gen_ft = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in shapes().items():
        t = torch.randn(shape, generator=gen_base) * 0.02
        if base_seed is not None:
            t += torch.randn(shape, generator=gen_ft) * 0.002
        t = t.bfloat16()
        if size and size + t.numel() * 2 > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.numel() * 2
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * 2 for s in shards for t in s.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))


RAW = r"""
import sys, time, json
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
inputs, out = [Path(p) for p in sys.argv[1:4]], Path(sys.argv[4])
out.mkdir()
t0 = time.perf_counter()
files = sorted(inputs[0].glob("*.safetensors"))
for k, f0 in enumerate(files):
    keep = {}
    for i, d in enumerate(inputs):
        with safe_open(str(d / f0.name), "pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if i == 2:
                    keep[name] = t
    save_file(keep, str(out / f0.name))
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""

OURS = r"""
import json, sys, time
import vlsafe.methods.merging as m
def status(key):  # VmHWM is this process's own high-water mark (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base_rss = status("VmRSS")
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
m.merge(cfg, sys.argv[2], progress=False)
sec = time.perf_counter() - t0
print(json.dumps({"seconds": sec, "peak_over_baseline": status("VmHWM") - base_rss, "baseline": base_rss}))
"""


def run_json(cmd: list[str]) -> dict:
    os.sync()  # every timed run starts with no dirty pages pending (the build writes 3.3 GB just before)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_timed(cmd: list[str]) -> dict:
    """Wall time and peak RSS of a child command (measured from a wrapper process)."""
    wrapper = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "s = time.perf_counter() - t\n"
        "if p.returncode: sys.stderr.write(p.stderr[-3000:]); sys.exit(p.returncode)\n"
        "print(json.dumps({'seconds': s, 'peak_rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
    )
    return run_json([sys.executable, "-c", wrapper, *cmd])


def ensure_mergekit() -> Path:
    exe = VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = str(VENV / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([pip, "install", "-q", "mergekit==0.1.5"], check=True)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vlsafe-merge-bench-", dir="/tmp"))
    results: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        base, ft1, ft2 = tmp / "base", tmp / "ft1", tmp / "ft2"
        write_checkpoint(base, 0, None)
        write_checkpoint(ft1, 1, 0)
        write_checkpoint(ft2, 2, 0)
        size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
        largest = VOCAB * HIDDEN * 2
        print(
            f"built 3 checkpoints of {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s ({tmp})",
            flush=True,
        )
        inputs = [str(base), str(ft1), str(ft2)]

        raw = run_json([sys.executable, "-c", RAW, *inputs, str(tmp / "raw")])
        shutil.rmtree(tmp / "raw")
        results["raw_io_s"] = raw["seconds"]
        print(f"raw read 3 + write 1: {raw['seconds']:.2f} s", flush=True)

        linear = {"method": "linear", "models": [{"model": p} for p in inputs], "shard_size": "500MB"}
        ties = {
            "method": "ties",
            "base_model": str(base),
            "models": [{"model": str(ft1)}, {"model": str(ft2)}],
            "parameters": {"density": 0.5},
            "shard_size": "500MB",
        }
        for name, cfg in (("linear", linear), ("ties", ties)):
            r = run_json([sys.executable, "-c", OURS, json.dumps(cfg), str(tmp / f"ours-{name}")])
            results[f"vlsafe_{name}_s"] = r["seconds"]
            results[f"vlsafe_{name}_peak_mb"] = r["peak_over_baseline"] / 2**20
            print(
                f"vlsafe {name}: {r['seconds']:.2f} s, peak RSS over baseline {r['peak_over_baseline'] / 2**20:.0f} MiB",
                flush=True,
            )
            if name == "linear":
                shutil.rmtree(tmp / f"ours-{name}")
        results["peak_rss_over_largest_tensor"] = (
            max(results["vlsafe_linear_peak_mb"], results["vlsafe_ties_peak_mb"]) * 2**20 / largest
        )
        results["linear_vs_raw_io_time"] = results["vlsafe_linear_s"] / results["raw_io_s"]

        if not args.skip_mergekit:
            exe = ensure_mergekit()
            mk_linear = {
                "merge_method": "linear",
                "models": [{"model": p, "parameters": {"weight": 1.0}} for p in inputs],
                "dtype": "bfloat16",
            }
            mk_ties = {
                "merge_method": "ties",
                "base_model": str(base),
                "models": [
                    {"model": str(p), "parameters": {"weight": 1.0, "density": 0.5}} for p in (ft1, ft2)
                ],
                "parameters": {"normalize": True},
                "dtype": "bfloat16",
            }
            for name, cfg in (("linear", mk_linear), ("ties", mk_ties)):
                path = tmp / f"mk-{name}.yaml"
                path.write_text(json.dumps(cfg))  # JSON is YAML
                out = tmp / f"mk-{name}"
                r = run_timed(
                    [str(exe), str(path), str(out), "--no-copy-tokenizer", "--out-shard-size", "500M"]
                )
                results[f"mergekit_{name}_s"] = r["seconds"]
                results[f"mergekit_{name}_peak_rss_mb"] = r["peak_rss"] / 2**20
                print(
                    f"mergekit {name}: {r['seconds']:.2f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB",
                    flush=True,
                )
                if name == "ties":
                    results["ties_max_abs_diff_vs_mergekit"] = compare(tmp / "ours-ties", out)
                shutil.rmtree(out)
            results["ties_vs_mergekit_time"] = results["vlsafe_ties_s"] / results["mergekit_ties_s"]
            results["linear_vs_mergekit_time"] = results["vlsafe_linear_s"] / results["mergekit_linear_s"]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))


def compare(ours: Path, theirs: Path, name: str = "model.layers.7.mlp.up_proj.weight") -> float:
    """Max |ours - mergekit| on one tensor (threshold ties may keep a few extra entries in ours)."""
    from vlsafe.methods.merging import CheckpointReader

    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    diff = (a.read(name).float() - b.read(name).float()).abs().max().item()
    a.close()
    b.close()
    return float(diff)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
