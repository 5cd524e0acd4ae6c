"""Inference fast paths held to fp32 eager: int4 weights, the measured --dtype auto, and the
static decode step (compiled on CPU, CUDA graphs on a GPU) with its selection and fallbacks.

CUDA graphs cannot run here (no GPU): their selection logic and CPU fallback are tested; the
static step they capture is held to the eager forward on CPU."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fast_tiny import LLAMA, VOCAB, one_thread, sharp_model  # noqa: F401
from reference import naive_generate

from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.generation import (
    Engine,
    SamplingParams,
    precision,
    prepare_for_inference,  # the public API
)
from shoshin.generation.quantize import (
    INT4_GROUP_SIZE,
    Int4Linear,
    Int8Linear,
    fbgemm_int8_available,
)
from shoshin.generation.static import graph_batch_size, resolve_mode
from shoshin.models import build_model

# -- int4 ---------------------------------------------------------------------------------------


def test_int4_weights_are_within_half_a_level_of_their_group():
    torch.manual_seed(0)
    linear = torch.nn.Linear(2 * INT4_GROUP_SIZE, 40)  # 40 outputs: padded to 48 for the kernel
    layer = Int4Linear(linear)
    eye = torch.eye(linear.in_features)
    with torch.no_grad():
        w_hat = (layer(eye) - linear.bias).t()  # (out, in): what the layer multiplies by
    w = linear.weight.detach()
    groups = w.view(40, -1, INT4_GROUP_SIZE)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # (out, groups)
    err = (w_hat - w).abs().view(40, -1, INT4_GROUP_SIZE)
    # half a level, plus the bf16 rounding of the kernel's output and scales
    assert (err <= step[..., None] * 0.5 + w.abs().max() * 2**-7).all()
    assert (err > 0).any()  # it is quantized
    # decoding (few rows) runs PyTorch's int4 kernel, a prompt the dequantized weight: the same
    x = torch.randn(Int4Linear.PREFILL_ROWS - 1, linear.in_features)
    with torch.no_grad():
        few = layer(x)  # the kernel
        many = layer(torch.cat([x, x]))[: len(x)]  # past PREFILL_ROWS: dequantized
    torch.testing.assert_close(few, many, atol=2e-2 * float(few.abs().max()), rtol=0)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_int4_model_tracks_fp32_and_layers_that_do_not_split_stay_int8(arch):
    torch.manual_seed(0)
    keys = LLAMA if arch == "llama" else {}
    config = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=VOCAB, **keys)
    model = build_model(config).eval()
    with torch.no_grad():  # GPT-2's scale everywhere (Llama starts its output layers at zero)
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    x = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        ref = model(x)
        int4 = prepare_for_inference(copy.deepcopy(model), "fp32", "int4")
        linears = [m for m in int4.modules() if hasattr(m, "in_features")]
        assert linears and all(isinstance(m, Int4Linear) for m in linears)
        err = float((int4(x) - ref).abs().max() / ref.abs().max())
        assert err < 0.15  # 16 levels per group of 64 weights
    out = Engine(int4).generate([1, 2, 3], SamplingParams(20, temperature=0))
    assert len(out) == 20
    odd = prepare_for_inference(sharp_model(n_embd=96), "fp32", "int4")  # 96 is not 64k
    assert isinstance(odd.lm_head, Int8Linear)
    with pytest.raises(ShoshinError, match="int4"):
        prepare_for_inference(sharp_model(), "fp32", "int3")


def test_llama_projections_fuse_for_inference_with_the_same_outputs():
    model = sharp_model("llama")
    x = torch.randint(0, VOCAB, (2, 30))
    prompt, params = [1, 2, 3], SamplingParams(40, temperature=0)
    with torch.no_grad():
        ref = model(x)
        naive = naive_generate(model, prompt, params)
        fused = prepare_for_inference(copy.deepcopy(model), "fp32")
        attn, mlp = fused.layers[0].self_attn, fused.layers[0].mlp
        assert attn.qkv_proj is not None and not hasattr(attn, "q_proj")
        assert mlp.gate_up_proj is not None and not hasattr(mlp, "gate_proj")
        torch.testing.assert_close(fused(x), ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
    assert Engine(fused).generate(prompt, params) == naive


# -- --dtype auto -------------------------------------------------------------------------------


def test_dtype_auto_uses_the_dtype_measured_fastest_here_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOSHIN_CACHE_DIR", str(tmp_path))
    assert precision.cached_speeds() is None
    assert "not measured yet" in precision.precision_help()
    speeds = precision.measured_speeds(rounds=1, steps=2)
    assert speeds["fastest"] == min(("fp32", "bf16"), key=speeds.get)
    stored = json.loads((tmp_path / "precision.json").read_text())
    assert list(stored.values()) == [speeds]  # keyed by this CPU and PyTorch version
    assert precision.measured_speeds() == speeds  # read back, not measured again
    model = prepare_for_inference(sharp_model(), "auto")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[speeds["fastest"]]
    assert model.wte.weight.dtype == dtype
    assert f"{speeds['fastest']} decodes fastest" in precision.precision_help()
    (tmp_path / "precision.json").write_text("{not json")  # damaged: measured again
    assert precision.cached_speeds() is None
    assert precision.measured_speeds(rounds=1, steps=2)["fastest"] in ("fp32", "bf16")


# -- the static decode step ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_static_step_agrees_with_the_eager_forward_for_rows_of_different_lengths(arch):
    """What a compiled step or a CUDA graph runs: the whole cache behind a mask (fp32: 1e-5)."""
    model = sharp_model(arch)
    cache = model.new_cache(3, 40)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [3, 1, 4, 1, 5]]
    with torch.no_grad():
        for b, p in enumerate(prompts):
            model(torch.tensor([p]), cache=cache.row(b))
        static = copy.deepcopy(cache)
        tokens = torch.tensor([[11], [12], [13]])
        for _ in range(5):
            ref = model(tokens, cache=cache)
            got = model.decode_static(tokens, static, static.lengths.clone())
            static.lengths += 1
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            tokens = ref[:, -1].argmax(-1, keepdim=True)
    torch.testing.assert_close(static.k, cache.k)


def test_decode_mode_selection_and_the_cpu_fallback_of_cuda_graphs():
    model, lstm = sharp_model(), build_model(ModelConfig(arch="lstm", vocab_size=VOCAB))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu, model) == "eager"
    assert resolve_mode("auto", cuda, model) == "graphs"
    assert resolve_mode("graphs", cpu, model) == "eager"
    assert resolve_mode("compile", cpu, model) == "compile"
    assert resolve_mode("graphs", cuda, lstm) == "eager"  # no cache to make static
    with pytest.raises(ValueError, match="decode must be one of"):
        resolve_mode("fast", cpu, model)
    assert [graph_batch_size(n) for n in (1, 2, 3, 9, 64, 65)] == [1, 2, 4, 16, 64, None]
    graphs = Engine(model, decode="graphs")  # on this CPU: eager, the same tokens
    assert graphs.decode == "eager" and graphs.static is None
    params = SamplingParams(30, temperature=0)
    assert graphs.generate([1, 2, 3], params) == Engine(model).generate([1, 2, 3], params)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_compiled_decode_gives_eager_greedy_tokens_and_reports_its_first_call(arch):
    model = sharp_model(arch)
    params = SamplingParams(40, temperature=0)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    eager = Engine(model).generate_batch(prompts, params)
    compiled = Engine(model, decode="compile")
    assert compiled.generate_batch(prompts, params) == eager
    assert not compiled.static.failed
    assert list(compiled.static.first_call_s) == [(2, 45)]  # 2 rows, a 45-position cache
    assert len(set(eager[0])) > 5  # the model is not degenerate


@pytest.mark.slow
@pytest.mark.skipif(not fbgemm_int8_available(), reason="the failing case needs FBGEMM")
def test_a_compile_failure_falls_back_to_eager_with_one_line(capfd):
    """FBGEMM's packed int8 weights cannot be traced: the engine says so once and decodes
    eagerly, with the eager tokens."""
    model = prepare_for_inference(sharp_model(), "fp32", "int8")
    params = SamplingParams(20, temperature=0)
    engine = Engine(model, decode="compile")
    assert engine.generate([1, 2, 3], params) == Engine(model).generate([1, 2, 3], params)
    err = capfd.readouterr().err.strip().splitlines()
    assert engine.static.failed and len(err) == 1
    assert err[0].startswith("shoshin: compile decode failed, decoding eagerly:")
