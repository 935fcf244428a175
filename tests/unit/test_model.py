import math

import pytest
import torch

from tinyconf import DEVICES
from decoder.config import ModelConfig
import decoder.dropout
from decoder.dropout import dropout
from decoder.model import GPT

TINY = ModelConfig(d_model=32, n_heads=2, n_blocks=2, context_length=16, dropout=0.0)
VOCAB = 50
# Every architecture option away from the default, one at a time, and all of them together.
VARIANTS = {
    "default": {},
    "sinusoidal": {"positional": "sinusoidal"},
    "rope": {"positional": "rope"},
    "rmsnorm": {"norm": "rmsnorm"},
    "relu2": {"mlp": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "qk_norm": {"qk_norm": True},
    "all": {"positional": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": True, "bias": False},
    "main job": {"positional": "rope", "mlp": "relu2", "qk_norm": True},  # experiments/default.yaml's
}


def variant(name: str) -> ModelConfig:
    return ModelConfig(**{**vars(TINY), **VARIANTS[name]})


def make(config: ModelConfig = TINY, device: str = "cpu") -> GPT:
    torch.manual_seed(0)
    return GPT(config, VOCAB).to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", VARIANTS)
def test_causality_changing_token_t_leaves_earlier_logits(device, name):
    model = make(variant(name), device)
    idx = torch.randint(VOCAB, (2, 16), device=device)
    base, _ = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(logits[:, t:], base[:, t:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", VARIANTS)
def test_causality_with_cache(device, name):
    model = make(variant(name), device)
    idx = torch.randint(VOCAB, (1, 12), device=device)
    _, past = model(idx[:, :6])
    new, _ = model(idx[:, 6:], past)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    new2, _ = model(changed[:, 6:], past)
    torch.testing.assert_close(new2[:, :3], new[:, :3], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("past_len", [0, 1, 5, 15])
def test_cache_equivalence(device, name, past_len):
    model = make(variant(name), device)
    idx = torch.randint(VOCAB, (3, 16), device=device)
    full, _ = model(idx)
    past = None
    if past_len:
        _, past = model(idx[:, :past_len])
    pieces = []
    # The rest one token at a time and, separately, as one chunk.
    step_past = past
    for t in range(past_len, 16):
        logits, step_past = model(idx[:, t : t + 1], step_past)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full[:, past_len:], rtol=1e-5, atol=1e-5)
    chunk, presents = model(idx[:, past_len:], past)
    torch.testing.assert_close(chunk, full[:, past_len:], rtol=1e-5, atol=1e-5)
    assert presents[0][0].shape == (3, TINY.n_heads, 16, TINY.head_dim)


def test_dropout_only_in_training():
    model = make(ModelConfig(**{**vars(TINY), "dropout": 0.5}))
    idx = torch.randint(VOCAB, (2, 16))
    a, _ = model(idx)
    b, _ = model(idx)
    torch.testing.assert_close(a, b)
    model.train()
    c, _ = model(idx)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_its_rate_and_keeps_the_expectation(p):
    x = torch.full((400_000,), 2.0, requires_grad=True)
    out = dropout(x, p, True)
    kept = (out != 0).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / x.numel())
    assert abs(kept - (1 - p)) < 5 * sigma
    assert abs(out.double().mean().item() - 2.0) < 2.0 * 5 * sigma / (1 - p)
    values = out.unique()
    assert values[0] == 0.0 and len(values) == 2 and abs(values[1].item() - 2.0 / (1 - p)) < 1e-4
    # The backward pass drops and scales exactly where the forward pass did.
    out.backward(torch.full_like(out, 3.0))
    torch.testing.assert_close(x.grad, out.detach() * 1.5)


def test_cpu_dropout_is_seeded_by_torch_and_off_outside_training():
    x = torch.randn(3, 5, 7)
    torch.manual_seed(1)
    a = dropout(x, 0.3, True)
    torch.manual_seed(1)
    b = dropout(x, 0.3, True)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, dropout(x, 0.3, True))
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
    assert torch.isfinite(dropout(x, 0.999999, True)).all()  # too close to 1 for 16-bit lanes: torch's


def test_cpu_attention_under_dropout_is_sdpa_attention(monkeypatch):
    """The written-out attention of the training path with CPU dropout computes SDPA's causal
    attention: with the dropout itself made the identity, the logits and gradients are the same."""
    config = ModelConfig(**{**vars(variant("main job")), "dropout": 0.2})
    idx = torch.randint(VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(decoder.dropout._CPUDropout, "apply", lambda x, p: x)
    results = []
    for cpu_dropout in (True, False):
        monkeypatch.setattr(decoder.dropout, "CPU_DROPOUT", cpu_dropout)
        model = make(config)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # torch's dropout off too (the attention's is CausalSelfAttention.dropout)
        model.train()
        if not cpu_dropout:
            for block in model.transformer.h:
                block.attn.dropout = 0.0
        logits, _ = model(idx)
        logits.square().mean().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tied_and_untied_heads_and_param_counts():
    tied = make()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = make(ModelConfig(**{**vars(TINY), "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == VOCAB * 32
    assert tied.num_params(non_embedding=True) == tied.num_params() - VOCAB * 32 - 16 * 32


def test_gpt2_initialisation():
    config = ModelConfig(d_model=256, n_heads=4, n_blocks=8, context_length=16)
    model = GPT(config, 1000)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0


def test_d_ff_default_and_override():
    assert make().transformer.h[0].mlp.c_fc.out_features == 128
    model = make(ModelConfig(**{**vars(TINY), "d_ff": 20}))
    assert model.transformer.h[0].mlp.c_fc.out_features == 20


def test_bad_model_config_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPT(ModelConfig(d_model=30, n_heads=4), 10)


def test_pinned_attention_kernels_agree():
    from torch.nn.attention import SDPBackend

    from decoder.hardware import training_attention_backend

    model = make()
    idx = torch.randint(VOCAB, (2, 16))
    reference, _ = model(idx)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        model.set_attention_backend(backend)
        logits, _ = model(idx)
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert training_attention_backend("cpu", 128, "bf16") == SDPBackend.MATH
    assert training_attention_backend("cpu", 128, "fp32") is None
    assert training_attention_backend("cpu", 256, "bf16") is None and training_attention_backend("cuda", 40, "bf16") is None


def left_pad(rows: list[torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids) of rows of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", VARIANTS)
def test_padded_rows_give_the_logits_of_each_row_alone(device, name):
    """Prefill of left-padded rows of different lengths, then cached steps: every real column's
    logits are those of the row run alone; padding never shifts a row's positions."""
    model = make(variant(name), device)
    rows = [torch.randint(VOCAB, (n,), device=device) for n in (3, 9, 1, 6)]
    ids, mask, positions = left_pad(rows, device)
    with torch.no_grad():
        logits, past = model(ids, None, mask, positions)
        alone = [model(r[None]) for r in rows]
        for i, r in enumerate(rows):
            torch.testing.assert_close(logits[i, -len(r):], alone[i][0][0], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(logits).all()  # padding queries stay finite (they see themselves)
        new = torch.randint(VOCAB, (len(rows), 2), device=device)
        for t in range(2):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            logits, past = model(new[:, t : t + 1], past, mask, positions)
            for i in range(len(rows)):
                expected, cache = model(new[i : i + 1, t : t + 1], alone[i][1])
                alone[i] = (expected, cache)
                torch.testing.assert_close(logits[i], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["default", "sinusoidal", "rope", "all"])
def test_position_ids_are_respected(name):
    model = make(variant(name))
    idx = torch.randint(VOCAB, (2, 6))
    with torch.no_grad():
        plain, past = model(idx)
        explicit, _ = model(idx, None, torch.ones(2, 6, dtype=torch.long), torch.arange(6).repeat(2, 1))
        torch.testing.assert_close(explicit, plain, rtol=1e-5, atol=1e-5)
        # Spread out, not merely shifted: rope sees only distances, which a shift keeps.
        spread, _ = model(idx, None, None, torch.arange(0, 12, 2).repeat(2, 1))
        assert not torch.allclose(spread, plain, rtol=0, atol=1e-5)  # an untrained model: small effects
        # A row's positions are its own: row 1 at positions 2..7 equals that row after a 2-token cache,
        # whose keys are masked out (the mask marks them padding).
        mask = torch.tensor([[1] * 8, [0, 0] + [1] * 6])
        positions = torch.stack([torch.arange(2, 8), torch.arange(0, 6)])
        stepped, _ = model(idx, [(k[:, :, :2], v[:, :, :2]) for k, v in past], mask, positions)
        torch.testing.assert_close(stepped[1], plain[1], rtol=1e-5, atol=1e-5)


def test_mask_and_positions_of_the_wrong_shape_are_refused():
    model = make()
    idx = torch.randint(VOCAB, (2, 4))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\): must be \(batch, past \+ seq\)"):
        model(idx, None, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids has shape \(4,\): must be \(batch, seq\) = \(2, 4\)"):
        model(idx, None, None, torch.arange(4))


def test_architecture_options_build_what_they_name():
    rms = make(variant("rmsnorm"))
    assert all(isinstance(m, torch.nn.RMSNorm) for m in (rms.transformer.ln_f, rms.transformer.h[0].ln_1))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in rms.modules())
    qk = make(variant("qk_norm")).transformer.h[0].attn
    assert qk.q_norm.normalized_shape == qk.k_norm.normalized_shape == (TINY.head_dim,)
    assert make().transformer.h[0].attn.q_norm is None
    rope = make(variant("rope"))
    assert "wpe" not in rope.transformer and not hasattr(rope, "wpe_table")
    assert rope.num_params() == make().num_params() - TINY.context_length * TINY.d_model
    relu2 = make(variant("relu2")).transformer.h[0].mlp
    with torch.no_grad():
        x = torch.randn(2, 32)
        torch.testing.assert_close(relu2(x), relu2.c_proj(torch.relu(relu2.c_fc(x)) ** 2))


def test_swiglu_keeps_the_parameter_count_with_two_thirds_of_the_width():
    assert variant("swiglu").ff_width == round(2 * 4 * 32 / 3) == 85
    assert ModelConfig(d_model=32, n_heads=2, d_ff=96, mlp="swiglu").ff_width == 64
    gelu, swiglu = make(), make(variant("swiglu"))
    mlp = swiglu.transformer.h[0].mlp
    assert mlp.c_fc.out_features == 2 * 85 and mlp.c_proj.in_features == 85
    relative = abs(swiglu.num_params() - gelu.num_params()) / gelu.num_params()
    assert relative < 0.01
    with torch.no_grad():
        x = torch.randn(2, 32)
        gate, value = mlp.c_fc(x).chunk(2, dim=-1)
        torch.testing.assert_close(mlp(x), mlp.c_proj(torch.nn.functional.silu(gate) * value))


def test_rope_rotates_queries_and_keys_by_position_only():
    """Rotary positions make attention scores depend on the distance between positions alone:
    the same tokens shifted to later positions give the same logits (no added position table)."""
    model = make(variant("rope"))
    idx = torch.randint(VOCAB, (2, 6))
    with torch.no_grad():
        plain, _ = model(idx)
        shifted, _ = model(idx, None, None, torch.arange(7, 13).repeat(2, 1))
    torch.testing.assert_close(shifted, plain, rtol=1e-4, atol=1e-4)
    learned = make()
    with torch.no_grad():
        assert not torch.allclose(learned(idx, None, None, torch.arange(7, 13).repeat(2, 1))[0], learned(idx)[0])


def test_rope_needs_an_even_head_dimension():
    with pytest.raises(ValueError, match="rope positions need an even head dimension"):
        GPT(ModelConfig(d_model=30, n_heads=2, positional="rope"), 10)
