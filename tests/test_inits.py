"""Every registered init: the distribution it promises (scipy KS tests, as PEFT's tests do), and
the model's output unchanged at step 0."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lorascope.config import LoraConfig
from lorascope.errors import UsageError
from lorascope.lora.inits import INITS
from lorascope.lora import LoRALinear, add_lora, lora_layers

IN, OUT, RANK = 256, 192, 64  # A has 16,384 entries: enough for the KS test to tell shapes apart
P_MIN = 1e-3  # a seeded draw from the right distribution passes; the wrong one fails by far


def _layer(init: str, **cfg) -> LoRALinear:
    torch.manual_seed(1)
    layer = LoRALinear(nn.Linear(IN, OUT), rank=RANK, alpha=2 * RANK)
    layer.initialize(init, LoraConfig(rank=RANK, alpha=2 * RANK, init=init, **cfg))
    return layer


def _values(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().flatten().numpy()


def _uniform(bound: float):
    return stats.uniform(loc=-bound, scale=2 * bound).cdf


def _normal(std: float):
    return stats.norm(loc=0.0, scale=std).cdf


def _passes(values: np.ndarray, cdf) -> bool:
    return stats.kstest(values, cdf).pvalue > P_MIN


KAIMING_BOUND = 1 / math.sqrt(IN)  # kaiming-uniform with a = sqrt(5): gain sqrt(1/3) * sqrt(3/in)


def check_kaiming_uniform(layer: LoRALinear) -> None:
    A = _values(layer.A)
    assert _passes(A, _uniform(KAIMING_BOUND))
    assert not _passes(A, _normal(KAIMING_BOUND / math.sqrt(3)))  # same variance, other shape
    assert np.all(np.abs(A) <= KAIMING_BOUND)
    assert torch.count_nonzero(layer.B) == 0


def check_kaiming_normal(layer: LoRALinear) -> None:
    A = _values(layer.A)
    assert _passes(A, _normal(1 / math.sqrt(3 * IN)))
    assert not _passes(A, _uniform(KAIMING_BOUND))
    assert torch.count_nonzero(layer.B) == 0


def check_gaussian(layer: LoRALinear) -> None:
    A = _values(layer.A)
    assert _passes(A, _normal(1.0))  # init_std = 1, as 004
    assert not _passes(A, _normal(0.9))
    assert torch.count_nonzero(layer.B) == 0


def check_orthogonal(layer: LoRALinear) -> None:
    A = layer.A.detach().double()
    torch.testing.assert_close(A @ A.T, torch.eye(RANK, dtype=torch.float64), atol=1e-5, rtol=0)
    # The entries of a random unit vector in R^in are close to N(0, 1/in).
    assert _passes(_values(A), _normal(1 / math.sqrt(IN)))
    assert torch.count_nonzero(layer.B) == 0


def check_gaussian_b(layer: LoRALinear) -> None:
    assert torch.count_nonzero(layer.A) == 0
    assert _passes(_values(layer.B), _normal(0.02))
    assert not _passes(_values(layer.B), _normal(0.03))


def _check_compensated(layer: LoRALinear) -> None:
    W = layer.pretrained_weight()
    torch.testing.assert_close(layer.base_weight() + layer.delta_weight(), W, atol=1e-6, rtol=0)


def check_both_nonzero(layer: LoRALinear) -> None:
    assert _passes(_values(layer.A), _uniform(KAIMING_BOUND))
    assert _passes(_values(layer.B), _normal(0.02))
    _check_compensated(layer)


def check_gaussian_a_uniform_b(layer: LoRALinear) -> None:
    assert _passes(_values(layer.A), _normal(0.02))
    assert _passes(_values(layer.B), _uniform(math.sqrt(3) * 0.02))
    assert not _passes(_values(layer.B), _normal(0.02))
    _check_compensated(layer)


def check_svd(layer: LoRALinear) -> None:
    W = layer.pretrained_weight().double().numpy()
    U, S, Vh = np.linalg.svd(W, full_matrices=False)
    W_r = (U[:, :RANK] * S[:RANK]) @ Vh[:RANK]
    np.testing.assert_allclose(layer.delta_weight().double().numpy(), W_r, atol=1e-5)
    residual = layer.base_weight().double().numpy()
    np.testing.assert_allclose(residual, W - W_r, atol=1e-5)
    # The residual keeps exactly the singular values that the adapter did not take.
    np.testing.assert_allclose(np.linalg.svd(residual, compute_uv=False)[: len(S) - RANK], S[RANK:], atol=1e-5)
    # B's columns and A's rows are orthogonal, each carrying sqrt(S / scaling).
    col_norms = torch.linalg.norm(layer.B.detach(), dim=0).double().numpy()
    np.testing.assert_allclose(col_norms ** 2, S[:RANK] / layer.scaling, rtol=1e-4)


CHECKS = {
    "kaiming_uniform": ({}, check_kaiming_uniform),
    "kaiming_normal": ({}, check_kaiming_normal),
    "gaussian": ({"init_std": 1.0}, check_gaussian),
    "orthogonal": ({}, check_orthogonal),
    "gaussian_b": ({"init_std": 0.02}, check_gaussian_b),
    "both_nonzero": ({"init_std": 0.02}, check_both_nonzero),
    "gaussian_a_uniform_b": ({"init_std": 0.02}, check_gaussian_a_uniform_b),
    "svd": ({}, check_svd),
}


def test_every_registered_init_has_a_distribution_test():
    assert set(CHECKS) == set(INITS.names())


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_init_distribution(name):
    cfg, check = CHECKS[name]
    layer = _layer(name, **cfg)
    assert layer.init == name
    assert layer.A.dtype == layer.B.dtype == torch.float32
    check(layer)


@pytest.mark.parametrize("name", INITS.names())
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_output_unchanged_at_init(name, fixture, request):
    model = request.getfixturevalue(fixture)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    add_lora(model, LoraConfig(rank=4, alpha=8, init=name, init_std=0.5))
    layers = lora_layers(model)
    assert layers and all(layer.init == name for layer in layers.values())
    # a real test: with init_std = 0.5 the non-zero inits change the output unless compensated
    assert any(torch.count_nonzero(layer.B) for layer in layers.values()) == (
        name in ("gaussian_b", "both_nonzero", "gaussian_a_uniform_b", "svd")
    )
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, atol=2e-5, rtol=0)


def test_uncompensated_nonzero_update_does_change_output(tiny_gpt2):
    """The control for the test above: a non-zero B·A without compensation moves the logits."""
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_gpt2(ids).logits
        add_lora(tiny_gpt2, LoraConfig(rank=4))
        for layer in lora_layers(tiny_gpt2).values():
            layer.B.normal_(0, 0.5)
        assert (tiny_gpt2(ids).logits - before).abs().max() > 1e-3


def test_reinitialising_restores_the_pretrained_base():
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    W = linear.weight.detach().clone()
    layer = LoRALinear(linear, rank=4, alpha=8)
    layer.initialize("svd")
    assert not torch.allclose(layer.base_weight(), W)
    torch.testing.assert_close(layer.pretrained_weight(), W, atol=1e-6, rtol=0)
    layer.initialize("kaiming_uniform")
    torch.testing.assert_close(layer.base_weight(), W, atol=1e-6, rtol=0)
    assert layer.base_offset_A is None and layer.init == "kaiming_uniform"


def test_svd_refuses_a_rank_above_the_weight_rank():
    layer = LoRALinear(nn.Linear(6, 4), rank=5, alpha=5)
    with pytest.raises(UsageError, match="rank <= min"):
        layer.initialize("svd")


def test_svd_scaling_cancels_whatever_alpha():
    torch.manual_seed(0)
    W = nn.Linear(20, 12).weight.detach().clone()
    for alpha, rslora in ((1.0, False), (64.0, False), (8.0, True)):
        layer = LoRALinear(nn.Linear(20, 12), rank=3, alpha=alpha, rslora=rslora)
        layer.base.weight.data.copy_(W)
        layer.initialize("svd", LoraConfig(rank=3, alpha=alpha, rslora=rslora))
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        torch.testing.assert_close(layer.delta_weight(), (U[:, :3] * S[:3]) @ Vh[:3], atol=1e-5, rtol=0)


def test_bad_init_names_and_sigmas_are_refused(tiny_gpt2):
    with pytest.raises(UsageError, match="kaiming_uniform"):
        add_lora(tiny_gpt2, LoraConfig(init="xavier"))
    assert not lora_layers(tiny_gpt2)  # refused before touching the model
    with pytest.raises(UsageError, match="init_std"):
        add_lora(copy.deepcopy(tiny_gpt2), LoraConfig(init="gaussian", init_std=0.0))


def test_svd_refuses_tied_weights(tiny_gpt2):
    with pytest.raises(UsageError, match="tied"):
        add_lora(tiny_gpt2, LoraConfig(init="svd", targets=["lm_head"]))
    # kaiming (B = 0) never writes the base, so a tied lm_head is fine
    add_lora(tiny_gpt2, LoraConfig(targets=["lm_head"]))


def test_init_descriptions_are_one_line():
    for name in INITS.names():
        description = INITS.description(name)
        assert description and "\n" not in description
