"""Merge methods against hand-computed values, through one tensor's kernel in memory and the streaming merge."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.methods.merging import METHODS, magnitude_threshold, merge
from vlsafe.methods.merging.kernels import TensorMerge
from vlsafe.methods.merging.methods import CHUNK, dare_keep_mask

T = torch.tensor
KEY = "model.layers.0.mlp.up_proj.weight"


def _ckpt(root: Path, name: str, tensors: dict[str, torch.Tensor]) -> str:
    out = root / name
    out.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text('{"model_type": "llama"}')
    return str(out)


def _merged(out: Path, name: str = KEY) -> torch.Tensor:
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return f.get_tensor(name)


def merge_tensors(
    method: str,
    tensors: list[torch.Tensor],
    *,
    base: torch.Tensor | None = None,
    weights: list[float] | None = None,
    seed: int = 0,
    key: str = "",
    **params,
) -> torch.Tensor:
    """In-memory tensors merged by :class:`TensorMerge`, the kernel the streaming merge runs per tensor."""
    spec = METHODS.get(method)
    sources = ([base.reshape(-1)] if base is not None else []) + [t.reshape(-1) for t in tensors]
    op = TensorMerge(
        spec,
        lambda i, start, stop: sources[i][start:stop],
        numel=tensors[0].numel(),
        has_base=base is not None,
        weights=list(weights) if weights is not None else [1.0] * len(tensors),
        params={**spec.defaults, **params},
        seed=seed,
        key=key,
    )
    return torch.cat([chunk for _, chunk in op.chunks()]).reshape(tensors[0].shape)


def _stream(
    tmp_path: Path, method: str, base: torch.Tensor | None, models: list[torch.Tensor], **cfg
) -> torch.Tensor:
    refs = [_ckpt(tmp_path, f"m{i}", {KEY: m}) for i, m in enumerate(models)]
    config = {"method": method, "models": [{"model": r} for r in refs], **cfg}
    if base is not None:
        config["base_model"] = _ckpt(tmp_path, "base", {KEY: base})
    merge(config, tmp_path / "out", progress=False)
    return _merged(tmp_path / "out")


# τ1 and τ2 (against a zero base) chosen without magnitude ties.
TAU1 = T([1.0, -2.0, 3.0, 0.5, 2.5, 0.1])
TAU2 = T([-1.5, 4.0, 1.0, 0.5, 3.5, 0.2])


def test_registry_lists_methods_with_reference_urls():
    assert METHODS.names() == ["dare_linear", "dare_ties", "linear", "slerp", "task_arithmetic", "ties"]
    assert "2306.01708" in METHODS.get("ties").url
    assert "2311.03099" in METHODS.get("dare_ties").url and "2311.03099" in METHODS.get("dare_linear").url
    assert "2212.04089" in METHODS.get("task_arithmetic").url
    with pytest.raises(ConfigError, match="unknown merge method 'nope'"):
        METHODS.get("nope")


def test_linear_weighted_average(tmp_path):
    m1, m2 = T([[1.0, -2.0], [3.0, 0.5]]), T([[-1.0, 4.0], [1.0, 0.5]])
    expected = T([[-0.5, 2.5], [1.5, 0.5]])  # (1*m1 + 3*m2) / 4
    assert torch.equal(merge_tensors("linear", [m1, m2], weights=[1, 3]), expected)
    assert torch.equal(merge_tensors("linear", [m1, m2], weights=[1, 3], normalize=False), 4 * expected)
    assert torch.equal(_stream(tmp_path, "linear", None, [m1, m2], weights=[1, 3]), expected)
    assert m1[0, 0] == 1.0  # inputs untouched


def test_task_arithmetic(tmp_path):
    base = torch.ones(4)
    m1, m2 = base + T([1.0, -2.0, 3.0, 0.5]), base + T([-1.0, 4.0, 1.0, 0.5])
    expected = T([0.0, 7.0, 6.0, 2.5])  # 1 + 2 * (0.5*τ1 + τ2)
    got = merge_tensors("task_arithmetic", [m1, m2], base=base, weights=[0.5, 1.0], **{"lambda": 2.0})
    assert torch.equal(got, expected)
    streamed = _stream(
        tmp_path, "task_arithmetic", base, [m1, m2], weights=[0.5, 1.0], parameters={"lambda": 2.0}
    )
    assert torch.equal(streamed, expected)


def test_ties_trim_elect_disjoint_mean(tmp_path):
    base = torch.zeros(6)
    # trimmed (k=3): τ1 -> [0,-2,3,0,2.5,0], τ2 -> [-1.5,4,0,0,3.5,0]; weighted sum [-3,6,3,0,9.5,0]
    expected = T([-1.5, 4.0, 3.0, 0.0, 9.5 / 3, 0.0])
    got = merge_tensors("ties", [TAU1, TAU2], base=base, weights=[1, 2], density=0.5)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    unnormalized = merge_tensors(
        "ties", [TAU1, TAU2], base=base, weights=[1, 2], density=0.5, normalize=False
    )
    assert torch.allclose(unnormalized, T([-3.0, 8.0, 3.0, 0.0, 9.5, 0.0]), atol=1e-6, rtol=0)
    streamed = _stream(
        tmp_path, "ties", base + 1, [TAU1 + 1, TAU2 + 1], weights=[1, 2], parameters={"density": 0.5}
    )
    assert torch.allclose(streamed, expected + 1, atol=1e-6, rtol=0)


def test_ties_per_model_density(tmp_path):
    # model 0 keeps only its largest entry (3.0), model 1 keeps everything
    base = _ckpt(tmp_path, "b", {KEY: torch.zeros(6)})
    r1, r2 = _ckpt(tmp_path, "a1", {KEY: TAU1}), _ckpt(tmp_path, "a2", {KEY: TAU2})
    cfg = {
        "method": "ties",
        "base_model": base,
        "models": [{"model": r1, "density": 1 / 6}, {"model": r2, "density": 1.0}],
    }
    merge(cfg, tmp_path / "o", progress=False)
    streamed = _merged(tmp_path / "o")
    # τ1 -> [0,0,3,0,0,0]; τ2 all; sum [-1.5,4,4,.5,3.5,.2] all positive except elem 0
    expected = T([-1.5, 4.0, 2.0, 0.5, 3.5, 0.2])
    assert torch.allclose(streamed, expected, atol=1e-6, rtol=0)


def test_magnitude_threshold_matches_kthvalue_across_chunks():
    x = torch.randn(CHUNK + 12345, generator=torch.Generator().manual_seed(0))
    for density in (0.5, 0.01, 0.999):
        k = round(density * x.numel())
        thr = magnitude_threshold(lambda: iter([x[:CHUNK], x[CHUNK:]]), x.numel(), density)
        assert thr == x.abs().kthvalue(x.numel() - k + 1).values.item()
        assert int((x.abs() >= thr).sum()) == k
    assert magnitude_threshold(lambda: iter([x]), x.numel(), 1.0) == 0.0
    assert magnitude_threshold(lambda: iter([x]), x.numel(), 0.0) == math.inf


def test_dare_linear_formula_and_reproducibility(tmp_path):
    base = torch.linspace(-1, 1, 1000)
    tau = torch.linspace(0.5, 2.0, 1000)
    got = merge_tensors("dare_linear", [base + tau], base=base, density=0.3, seed=7, key=KEY)
    mask = dare_keep_mask(1000, 0.3, seed=7, key=KEY, model=0, chunk_index=0)
    assert torch.allclose(got, base + tau * mask / 0.3, atol=1e-5)
    assert 0.2 < mask.float().mean() < 0.4
    again = merge_tensors("dare_linear", [base + tau], base=base, density=0.3, seed=7, key=KEY)
    other = merge_tensors("dare_linear", [base + tau], base=base, density=0.3, seed=8, key=KEY)
    assert torch.equal(got, again) and not torch.equal(got, other)
    streamed = _stream(tmp_path, "dare_linear", base, [base + tau], parameters={"density": 0.3}, seed=7)
    assert torch.equal(streamed, got)
    # density 1 is task arithmetic; density 0 leaves the base
    assert torch.allclose(merge_tensors("dare_linear", [base + tau], base=base, density=1.0), base + tau)
    assert torch.equal(merge_tensors("dare_linear", [base + tau], base=base, density=0.0), base)


def test_dare_unbiased_in_expectation():
    tau = torch.linspace(-2.0, 2.0, 500)
    base = torch.zeros(500)
    runs = torch.stack(
        [merge_tensors("dare_linear", [tau], base=base, density=0.3, seed=s, key=KEY) for s in range(400)]
    )
    mean = runs.mean(0)
    # per-element standard error: |τ| * sqrt((1/d - 1) / n) ≈ 0.076 |τ|
    se = tau.abs() * math.sqrt((1 / 0.3 - 1) / 400)
    assert ((mean - tau).abs() <= 5 * se + 1e-6).all()
    assert abs(float((mean - tau).mean())) < 0.01


def test_dare_ties_consensus_on_rescaled_masked_deltas():
    base = torch.zeros(6)
    got = merge_tensors("dare_ties", [TAU1, TAU2], base=base, weights=[1, 2], density=0.5, seed=3, key=KEY)
    m = [dare_keep_mask(6, 0.5, seed=3, key=KEY, model=i, chunk_index=0) for i in range(2)]
    d = [TAU1 * m[0] / 0.5 * 1, TAU2 * m[1] / 0.5 * 2]
    sign = torch.where(d[0] + d[1] >= 0, 1.0, -1.0)
    agree = [torch.sign(x) == sign for x in d]
    num = sum(torch.where(a, x, 0.0) for a, x in zip(agree, d, strict=True))
    den = agree[0].float() * 1 + agree[1].float() * 2
    assert torch.allclose(got, num / torch.where(den == 0, 1.0, den), atol=1e-6)
    # density 1: plain sign consensus: τ1=[1,-2], τ2=[-3,4] -> sums [-2,2] -> [-3, 4]
    full = merge_tensors("dare_ties", [T([1.0, -2.0]), T([-3.0, 4.0])], base=torch.zeros(2), density=1.0)
    assert torch.equal(full, T([-3.0, 4.0]))


def test_slerp_hand_values(tmp_path):
    v0, v1 = T([1.0, 0.0]), T([0.0, 2.0])
    half = math.sin(math.pi / 4)  # Ω = π/2: c0 = c1 = sin(π/4) / sin(π/2)
    assert torch.allclose(merge_tensors("slerp", [v1], base=v0, t=0.5), T([half, 2 * half]), atol=1e-6)
    assert torch.allclose(merge_tensors("slerp", [v1], base=v0, t=0.0), v0)
    assert torch.allclose(merge_tensors("slerp", [v1], base=v0, t=1.0), v1, atol=1e-6)
    # parallel vectors fall back to linear interpolation
    assert torch.allclose(
        merge_tensors("slerp", [T([2.0, 2.0])], base=T([1.0, 1.0]), t=0.25), T([1.25, 1.25])
    )
    streamed = _stream(tmp_path, "slerp", v0, [v1], parameters={"t": 0.5})
    assert torch.allclose(streamed, T([half, 2 * half]), atol=1e-6)


def test_bf16_inputs_computed_in_float32_and_cast(tmp_path):
    m1 = T([1.0, 2.0, 3.0]).bfloat16()
    m2 = T([2.0, 2.0, 6.0]).bfloat16()
    streamed = _stream(tmp_path, "linear", None, [m1, m2])
    assert streamed.dtype == torch.bfloat16 and torch.equal(streamed.float(), T([1.5, 2.0, 4.5]))


def test_error_paths(tmp_path):
    a = _ckpt(tmp_path, "a", {KEY: torch.zeros(2, 3), "model.norm.weight": torch.ones(3)})
    b = _ckpt(tmp_path, "b", {KEY: torch.zeros(3, 2), "model.norm.weight": torch.ones(3)})
    c = _ckpt(tmp_path, "c", {KEY: torch.zeros(2, 3)})
    n = _ckpt(
        tmp_path,
        "n",
        {KEY: T([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), "model.norm.weight": torch.ones(3)},
    )
    with pytest.raises(InputError, match=r"'model.layers.0.mlp.up_proj.weight' has different shapes"):
        merge({"method": "linear", "models": [{"model": a}, {"model": b}]}, tmp_path / "o1", progress=False)
    with pytest.raises(InputError, match=r"'model.norm.weight'.*is missing from input"):
        merge({"method": "linear", "models": [{"model": a}, {"model": c}]}, tmp_path / "o2", progress=False)
    for method in ("linear", "ties"):
        cfg = {"method": method, "base_model": a, "models": [{"model": n}]}
        if method == "linear":
            cfg.pop("base_model")
            cfg["models"].append({"model": a})
        with pytest.raises(InputError, match="contains NaN"):
            merge(cfg, tmp_path / f"o3{method}", overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="unknown merge method 'average'"):
        merge({"method": "average", "models": [{"model": a}]}, tmp_path / "o4")
    with pytest.raises(ConfigError, match="weights has 3 values but models lists 2"):
        merge(
            {"method": "linear", "models": [{"model": a}, {"model": c}], "weights": [1, 2, 3]},
            tmp_path / "o5",
        )
    with pytest.raises(ConfigError, match="lists 3 per-layer values but the model has 1 decoder layers"):
        merge({"method": "linear", "models": [{"model": a, "weight": [1, 2, 3]}]}, tmp_path / "o6")
