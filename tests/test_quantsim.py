"""The training-time INT8 simulation (``rewardrt.models.quantsim``) against the export's integer
path: the recipe's ``quant_consistency`` only helps if it simulates what the export computes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rewardrt.export.quantize import QuantPlan, activation_range, apply_plan, quantizable_matmuls  # noqa: E402
from rewardrt.models.quantsim import (  # noqa: E402
    encoder_linears, fake_quant_rows, fake_quant_weight, reads_gelu, simulated_int8,
)


@pytest.mark.parametrize("bits", [7, 8])
def test_rows_are_rounded_on_their_own_grid_with_straight_through_gradients(bits):
    qmax, _ = activation_range(bits)
    x = torch.randn(3, 5, 16) * torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1)
    x.requires_grad_(True)
    q = fake_quant_rows(x, bits)
    scale = x.detach().abs().amax(-1, keepdim=True) / qmax
    codes = q.detach() / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= qmax + 1e-3
    assert ((q - x).abs() <= scale / 2 + 1e-6).all() and not torch.equal(q, x)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_gelu_outputs_are_rounded_one_sided_more_finely():
    x = torch.nn.functional.gelu(torch.randn(64, 128) * 3)
    one, two = (fake_quant_rows(x, 7, one_sided=s) for s in (True, False))
    assert (x - one).abs().mean() < 0.7 * (x - two).abs().mean()  # the shift costs a little range


def test_weights_are_rounded_per_output_channel():
    w = torch.randn(8, 32) * torch.logspace(-2, 1, 8).view(8, 1)
    q = fake_quant_weight(w)
    scale = w.abs().amax(1, keepdim=True) / 127
    assert ((q - w).abs() <= scale / 2 + 1e-7).all()
    assert torch.allclose(q / scale, (q / scale).round(), atol=1e-3)


def test_noise_moves_codes_by_at_most_half_a_step_from_a_private_generator():
    """The ``noise`` simulation: off-grid values within half a step of x (the error of some rounding),
    one draw per generator state, and the global random state (dropout's) untouched."""
    x = torch.randn(4, 6, 32) * 3
    w = torch.randn(8, 32)
    state = torch.random.get_rng_state()
    q1 = fake_quant_rows(x, 7, noise=torch.Generator().manual_seed(3))
    q2 = fake_quant_rows(x, 7, noise=torch.Generator().manual_seed(3))
    qw = fake_quant_weight(w, noise=torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), state)
    scale = x.abs().amax(-1, keepdim=True) / activation_range(7)[0]
    codes = q1 / scale
    assert torch.equal(q1, q2) and ((q1 - x).abs() <= scale / 2 + 1e-6).all()
    assert (codes - codes.round()).abs().max() > 0.1  # not on the grid: noise, not rounding
    assert ((qw - w).abs() <= w.abs().amax(1, keepdim=True) / 254 + 1e-7).all() and not torch.equal(qw, w)
    assert not torch.equal(q1, fake_quant_rows(x, 7, noise=torch.Generator().manual_seed(5)))


def test_the_block_patches_every_layer_linear_and_restores_them(tiny_reference):
    net = tiny_reference.net
    linears = encoder_linears(net.encoder)
    assert len(linears) == 6 * 2 and sum(reads_gelu(n) for n in linears) == 2  # 2 layers: Q K V O up down
    ids = torch.tensor([[101, 2000, 2001, 102, 2002, 102]])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        before = net(ids, mask)[1]
        with simulated_int8(net.encoder, 7):
            inside = net(ids, mask)[1]
        after = net(ids, mask)[1]
    assert torch.equal(before, after) and not torch.equal(before, inside)
    assert all("forward" not in vars(m) for m in linears.values())


@pytest.mark.parametrize("bits", [7, 8])
def test_simulation_matches_the_exported_integer_gemms(fused, tiny_reference, bits):
    """Every MatMul as an integer GEMM (no smoothing, nearest rounding, fp32 embeddings): the
    exported graph and the torch model under ``simulated_int8`` give the same raw scores up to float
    rounding, far closer than either is to the fp32 model."""
    from rewardrt.export.pairs import Pairs, load_pair_set
    from rewardrt.export.search import _trial_scores
    from rewardrt.runtime.spec import ArtifactSpec
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer

    model, tokenizer_json = fused
    plan = QuantPlan({s.name: "token" for s in quantizable_matmuls(model)}, activation_bits=bits, gptq=False)
    rows = load_pair_set().gate[::10]
    refs, resps = [r["reference"] for r in rows], [r["response"] for r in rows]
    encoder = PairEncoder(load_tokenizer(tokenizer_json, "test"), 512)
    spec = ArtifactSpec(precision="int8", max_length=512, single_row_safe=True)
    exported = _trial_scores(apply_plan(model, plan), spec, encoder, Pairs(refs, resps), 1)
    fp32 = np.asarray(tiny_reference.raw_scores(resps, refs))
    with simulated_int8(tiny_reference.net.encoder, bits):
        simulated = np.asarray(tiny_reference.raw_scores(resps, refs))
    quant_error = np.abs(exported - fp32).mean()
    # a tenth of the mean quantization error: one activation code landing on the other side of a
    # rounding tie in float32 moves a score by ~2e-6 (8 bits, the bundled gate pairs of 2026-12-06)
    assert np.abs(simulated - exported).max() < 0.1 * quant_error, (np.abs(simulated - exported).max(), quant_error)



def test_sensitivity_rounds_each_part_alone_and_restores_the_model(tiny_checkpoint, tiny_reference, capsys):
    """``python -m rewardrt.models.sensitivity``: the dequant rounding stays within half a block's
    step, every part is reported, and the model comes back bit for bit after each part."""
    from rewardrt.models import sensitivity

    w = torch.randn(6, 64) * torch.logspace(-2, 1, 64)
    q = sensitivity.int8_blocks(w)
    step = w.reshape(6, 2, 32).abs().amax(-1, keepdim=True) / 127
    assert ((q - w).reshape(6, 2, 32).abs() <= step / 2 + 1e-7).all() and not torch.equal(q, w)
    net = tiny_reference.net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for context in sensitivity.parts(net).values():
        with context():
            pass
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert sensitivity.main([str(tiny_checkpoint), "--top", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("max ") == 5 and "embedding table float16: mean" in out


def test_simulated_int8_only_quantizes_the_named_linears(tiny_checkpoint, tiny_reference, capsys):
    """``only`` leaves the other Linears on their own forward; each Linear has exactly one role, and
    ``--by-layer`` reports every layer and role."""
    from rewardrt.models import sensitivity

    enc = tiny_reference.net.encoder
    names = list(encoder_linears(enc))
    assert sorted(sensitivity._role(n) for n in names) == sorted(
        role for role, suffixes in sensitivity.ROLES.items() for _ in range(enc.config.num_hidden_layers)
        for _ in suffixes)
    first = next(n for n in names if sensitivity._role(n) == "FFN in")
    with simulated_int8(enc, 8, only=lambda n: n == first):
        patched = [n for n, m in encoder_linears(enc).items() if "forward" in vars(m)]
    assert patched == [first]
    assert not any("forward" in vars(m) for m in encoder_linears(enc).values())
    refs, resps = ["The answer is 12.", "A dog runs."], ["12", "A cat sleeps on the mat."]
    fp32 = np.asarray(tiny_reference.raw_scores(resps, refs))
    with simulated_int8(enc, 8, only=lambda n: n == first):
        one = np.asarray(tiny_reference.raw_scores(resps, refs))
    with simulated_int8(enc, 8):
        every = np.asarray(tiny_reference.raw_scores(resps, refs))
    assert not np.array_equal(one, fp32) and not np.array_equal(one, every)
    layers = enc.config.num_hidden_layers
    assert len(sensitivity.parts(tiny_reference.net, by_layer=True)) == 5 + layers + len(sensitivity.ROLES)
    assert sensitivity.main([str(tiny_checkpoint), "--top", "0", "--threads", "1", "--by-layer"]) == 0
    out = capsys.readouterr().out
    assert out.count("max ") == 5 + layers + len(sensitivity.ROLES) and "FFN out only (every layer)" in out
