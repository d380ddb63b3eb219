import numpy as np
import torch

from bert_core.training.optim import Lamb, build_optimizer


def _reference_lamb(w, grads, lr, b1, b2, eps, wd):
    """LAMB written out in NumPy, step by step, for one tensor."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w
        wn, un = np.linalg.norm(w), np.linalg.norm(u)
        trust = wn / un if wn > 0 and un > 0 else 1.0
        w = w - lr * trust * u
    return w


def test_lamb_matches_the_published_update():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(7, 5))
    grads = [rng.normal(size=(7, 5)) for _ in range(4)]
    param = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = Lamb([param], lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    expected = _reference_lamb(w0, grads, 0.01, 0.9, 0.999, 1e-6, 0.01)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_lamb_layer_update_is_proportional_to_the_weight_norm():
    """The trust ratio makes each tensor move by lr * ||w|| whatever its gradient scale."""
    big = torch.nn.Parameter(torch.full((10,), 100.0))
    small = torch.nn.Parameter(torch.full((10,), 0.01))
    optimizer = Lamb([big, small], lr=0.1, weight_decay=0.0)
    big.grad, small.grad = torch.full((10,), 1e-3), torch.full((10,), 1e3)
    before = [big.detach().clone(), small.detach().clone()]
    optimizer.step()
    for p, b in zip((big, small), before):
        assert torch.isclose((p.detach() - b).norm(), 0.1 * b.norm(), rtol=1e-4)


def test_bert_parameter_groups_skip_decay_on_bias_and_layernorm():
    from bert_core.training.model import build_model

    model = build_model("bert-tiny", vocab_size=100)
    for name in ("adamw", "lamb"):
        optimizer = build_optimizer(model, name=name, lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
        decayed, plain = optimizer.param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0
        assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in plain["params"])
        assert not any(names[id(p)].endswith("bias") for p in decayed["params"])
        assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
