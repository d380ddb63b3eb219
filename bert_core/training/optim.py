"""Optimizers for pretraining: AdamW (torch's, fused where the device supports it) and LAMB.

LAMB (You et al., 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes") is what
NVIDIA's BERT recipe uses for large global batches; neither torch nor transformers ships it. Per parameter tensor:

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2            (bias-corrected: m / (1 - b1^t), v / (1 - b2^t))
    u = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
    r = ||w|| / ||u||   (1 when either norm is 0)
    w = w - lr * r * u

Gradient clipping is left to the training loop (it clips the global norm before the step).
"""

from __future__ import annotations

import torch


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(f"invalid LAMB hyperparameters: lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.float()
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1**step)) / ((exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"]))
                weight = param.float()
                if group["weight_decay"]:
                    update.add_(weight, alpha=group["weight_decay"])
                weight_norm, update_norm = weight.norm(), update.norm()
                trust = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm,
                                    torch.ones_like(weight_norm))
                param.add_((update * (-group["lr"] * trust)).to(param.dtype))
        return loss


def build_optimizer(model: torch.nn.Module, *, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    """AdamW or LAMB with BERT's parameter groups: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param_name.endswith("bias") or "LayerNorm" in param_name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps)
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r}; choose 'adamw' or 'lamb'")
    device = next(model.parameters()).device
    # The fused kernel (one pass over all tensors) exists for CPU and CUDA in current torch.
    fused = device.type in {"cpu", "cuda"}
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
