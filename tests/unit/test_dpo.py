"""The DPO / IPO loss as a pure function: exact values, rewards, gradient direction and input errors."""

from __future__ import annotations

import math

import pytest
import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.methods.training.dpo import DPOConfig, DPOObjective
from vlsafe.methods.training.losses import dpo_loss

PC = torch.tensor([-1.0, -2.0])
PR = torch.tensor([-3.0, -1.0])
RC = torch.tensor([-1.5, -2.0])
RR = torch.tensor([-2.5, -1.5])
# log-ratio differences h = (PC - RC) - (PR - RR) = [1.0, -0.5]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_loss_exact() -> None:
    out = dpo_loss(PC, PR, RC, RR, beta=0.5)
    expected = [_softplus(-0.5), _softplus(0.25)]  # -log sigmoid(beta * h)
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(out.loss) == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.25])
    assert out.margins.tolist() == pytest.approx([0.5, -0.25])
    assert out.accuracy == 0.5


def test_label_smoothing_and_ipo_exact() -> None:
    eps = 0.1
    out = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=eps)
    first = (1 - eps) * _softplus(-0.5) + eps * _softplus(0.5)
    assert float(out.losses[0]) == pytest.approx(first, abs=1e-6)
    ipo = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert ipo.losses.tolist() == pytest.approx([0.0, 2.25])  # (h - 1/(2*0.5))^2


def test_gradient_raises_chosen_lowers_rejected_and_skips_reference() -> None:
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    rc, rr = RC.clone().requires_grad_(), RR.clone().requires_grad_()
    dpo_loss(pc, pr, rc, rr, beta=0.5).loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    assert torch.allclose(pc.grad, -pr.grad)
    assert rc.grad is None and rr.grad is None  # the reference is a constant
    # at h = 0 the sigmoid loss is log 2 and the gradient is -beta/2 per pair (mean over 1 pair)
    x = torch.zeros(1, requires_grad=True)
    z = torch.zeros(1)
    loss = dpo_loss(x, z, z, z, beta=0.2).loss
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(2)) and float(x.grad) == pytest.approx(-0.1)


def test_input_errors() -> None:
    with pytest.raises(InputError, match="beta=0 must be > 0"):
        dpo_loss(PC, PR, RC, RR, beta=0)
    with pytest.raises(InputError, match="label_smoothing=0.5"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=0.5)
    with pytest.raises(InputError, match="one shape"):
        dpo_loss(PC, PR[:1], RC, RR)
    with pytest.raises(InputError, match="loss_type='hinge'"):
        dpo_loss(PC, PR, RC, RR, loss_type="hinge")  # type: ignore[arg-type]


def test_reference_choice() -> None:
    base = {"model": "m", "output_dir": "o", "data": [{"format": "spavl", "path": "x.json"}]}
    assert DPOObjective(DPOConfig(**base)).reference == "adapter"  # default stage llm_lora
    assert DPOObjective(DPOConfig(**base, stage="llm")).reference == "precompute"
    with pytest.raises(ConfigError, match="needs a LoRA stage"):
        DPOObjective(DPOConfig(**base, stage="llm", reference="adapter"))
