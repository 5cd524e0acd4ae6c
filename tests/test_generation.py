"""The engine against the naive reference: cached == naive, batched == single, seeds, stops,
context overflow, reduced precision, and UTF-8-safe streaming."""

from __future__ import annotations

import pytest
import torch
from reference import naive_generate

import shoshin
from shoshin.config import ModelConfig
from shoshin.data.tokenizers import BpeTokenizer, CharTokenizer
from shoshin.errors import ShoshinError
from shoshin.generation import Engine, SamplingParams
from shoshin.generation.precision import prepare_for_inference
from shoshin.generation.streaming import StopStrings, StreamDecoder, TextStream
from shoshin.models import build_model

VOCAB = 61
GREEDY = SamplingParams(max_new_tokens=220, temperature=0)

MODELS = {
    "gpt-pre": dict(arch="gpt", norm="pre", activation="gelu_tanh"),
    "gpt-post": dict(arch="gpt", norm="post", activation="gelu"),
    "lstm": dict(arch="lstm"),
    # grouped-query attention (2 query heads share 1 kv head), Qwen3's QK-norm, an untied head
    "llama": dict(arch="llama", bias=False, n_kv_head=1, qk_norm=True, tie_embeddings=False),
    # the options beyond Llama: squared-ReLU MLP and soft-capped logits
    "llama-relu2": dict(arch="llama", bias=False, mlp="relu2", logit_softcap=15.0),
}


def tiny_model(kind: str, block_size: int = 256, seed: int = 0) -> torch.nn.Module:
    """A tiny random model whose greedy output wanders over many tokens (not one repeated token)."""
    torch.manual_seed(seed)
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=VOCAB, **MODELS[kind]
    )
    model = build_model(config).eval()
    with torch.no_grad():  # large random matrices: sharp, input-dependent logits
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine every parallel region waits
    for a descheduled thread: one thread keeps these tests fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", list(MODELS))
def test_cached_greedy_equals_naive_for_220_tokens(kind):
    model = tiny_model(kind)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    naive = naive_generate(model, prompt, SamplingParams(220, temperature=0))
    cached = Engine(model).generate(prompt, GREEDY)
    assert len(set(naive[100:])) > 5, "the test model is too degenerate to tell paths apart"
    assert cached == naive


@pytest.mark.parametrize("kind", ["gpt-pre", "lstm", "llama"])
def test_cached_sampling_equals_naive_with_the_same_seed(kind):
    model = tiny_model(kind)
    params = dict(temperature=0.9, top_k=20, top_p=0.95, seed=7)
    naive = naive_generate(model, [1, 2, 3], SamplingParams(60, **params))
    assert Engine(model).generate([1, 2, 3], SamplingParams(60, **params)) == naive


@pytest.mark.parametrize("kind", ["gpt-pre", "lstm"])
def test_prefill_projects_only_the_positions_it_samples(kind):
    """Prompts of 9 and 4 tokens prefilled together: the head sees one position per row (not 2 x 9),
    unless prompt log-probabilities are asked for; the logits are those of a full pass."""
    model = tiny_model(kind)
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    engine = Engine(model)
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6, 5], [2, 7, 1, 8]]
    batch = engine.new_batch(2)
    batch.add({0: engine.generation(prompts[0], GREEDY), 1: engine.generation(prompts[1], GREEDY)})
    assert seen and all(shape[:2] == (shape[0], 1) for shape in seen), seen
    for b, prompt in enumerate(prompts):
        full = model(torch.tensor([prompt]))[0, -1]
        torch.testing.assert_close(batch.rows[b].logits, full, atol=1e-5, rtol=1e-5)
    seen.clear()
    engine.score([3, 1, 4, 1, 5], top=2)
    assert seen[0][1] == 5  # a scoring pass needs every position's logits


def test_shoshin_generate_uses_the_engine_and_no_cache_slides_like_the_reference():
    model = tiny_model("gpt-pre", block_size=24)
    fast = shoshin.generate(model, [5, 6], 60, temperature=0)
    slow = shoshin.generate(model, [5, 6], 60, temperature=0, use_cache=False)
    # Both are the engine; past the first overflow (24 tokens) only use_cache=False keeps the
    # naive reference's one-token slide, so it equals the reference all the way.
    assert slow == naive_generate(model, [5, 6], SamplingParams(60, temperature=0))
    assert fast[:23] == slow[:23] and len(fast) == 60


@pytest.mark.parametrize("kind", list(MODELS))
def test_batched_equals_single_for_prompts_of_different_lengths(kind):
    model = tiny_model(kind)
    engine = Engine(model)
    prompts = [[7], [1, 2, 3, 4, 5], list(range(10, 27))]
    # rows with their own settings: greedy, a seeded sample, and a row that stops early
    params = [
        SamplingParams(40, temperature=0),
        SamplingParams(40, temperature=1.0, seed=3),
        SamplingParams(40, temperature=0, stop_ids=[]),
    ]
    single = [engine.generate(p, sp) for p, sp in zip(prompts, params, strict=True)]
    params[2].stop_ids = [single[2][5]]
    single[2] = engine.generate(prompts[2], params[2])
    assert len(single[2]) <= 6  # it really finishes before the others
    assert engine.generate_batch(prompts, params) == single


def test_same_seed_same_tokens_different_seed_different_tokens():
    engine = Engine(tiny_model("gpt-pre"))
    runs = {
        s: engine.generate([1, 2], SamplingParams(30, temperature=1.0, seed=s)) for s in range(4)
    }
    assert engine.generate([1, 2], SamplingParams(30, temperature=1.0, seed=0)) == runs[0]
    assert len({tuple(r) for r in runs.values()}) > 1


def test_stop_tokens_and_stop_sequences_end_the_generation():
    engine = Engine(tiny_model("gpt-pre"))
    free = engine.generate([4, 4], SamplingParams(60, temperature=0))
    stop_at = free[10]
    first = free.index(stop_at)
    assert (
        engine.generate([4, 4], SamplingParams(60, temperature=0, stop_ids=[stop_at]))
        == free[: first + 1]
    )
    sequence = free[20:23]
    out = engine.generate([4, 4], SamplingParams(60, temperature=0, stop_sequences=[sequence]))
    assert out[-3:] == sequence and len(out) <= 23


def test_stream_yields_tokens_as_they_are_made_and_a_prefilled_cache_is_reused():
    model = tiny_model("gpt-pre")
    engine = Engine(model)
    prompt = list(range(30))
    expected = engine.generate(prompt, SamplingParams(20, temperature=0))
    cache = engine.new_cache(1)
    with torch.no_grad():
        model(torch.tensor([prompt[:25]]), cache=cache)  # the conversation so far
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    try:
        stream = engine.stream(prompt, SamplingParams(20, temperature=0), cache=cache)
        assert next(stream) == expected[0]
        assert calls == [5]  # only the 5 tokens the cache lacked were prefilled
        assert [expected[0], *stream] == expected
    finally:
        handle.remove()
    assert calls[1:] == [1] * 19  # then one token per step


def overflow_reference(model, prompt, n, keep):
    """The documented overflow rule, computed with the uncached model: the model sees ids[start:],
    and when that would exceed block_size, start jumps so that the last `keep` tokens remain."""
    block = model.config.block_size
    ids, start = list(prompt), max(0, len(prompt) - block)
    with torch.no_grad():
        for _ in range(n):
            if len(ids) - start > block:
                start = len(ids) - keep
            ids.append(int(model(torch.tensor([ids[start:]]))[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("kind", ["gpt-pre", "gpt-post", "llama"])
def test_context_overflow_keeps_the_recent_half_window_and_never_crashes(kind):
    model = tiny_model(kind, block_size=32)
    prompt = [5, 3, 8, 1, 9, 2]
    out = Engine(model).generate(prompt, SamplingParams(150, temperature=0))
    assert len(out) == 150
    assert out == overflow_reference(model, prompt, 150, keep=16)
    # before the window first fills, cached and naive agree token for token
    assert (
        out[: 32 - len(prompt) + 1]
        == naive_generate(model, prompt, SamplingParams(150, temperature=0))[: 32 - len(prompt) + 1]
    )


def test_overflow_keep_block_size_is_the_naive_sliding_window():
    model = tiny_model("gpt-pre", block_size=24)
    prompt = [2, 7, 1, 8]
    sliding = Engine(model, overflow_keep=24).generate(prompt, SamplingParams(80, temperature=0))
    assert sliding == naive_generate(model, prompt, SamplingParams(80, temperature=0))


def test_prompt_longer_than_the_window_is_cut_to_its_end():
    model = tiny_model("gpt-pre", block_size=16)
    prompt = list(range(40))
    out = Engine(model).generate(prompt, SamplingParams(30, temperature=0))
    assert len(out) == 30
    assert out[0] == naive_generate(model, prompt, SamplingParams(1, temperature=0))[0]
    assert out == overflow_reference(model, prompt, 30, keep=8)


def test_batched_rows_overflow_independently():
    engine = Engine(tiny_model("gpt-pre", block_size=20))
    prompts = [[1], list(range(2, 17))]
    params = SamplingParams(45, temperature=0)
    assert engine.generate_batch(prompts, params) == [engine.generate(p, params) for p in prompts]


def test_lstm_carries_its_state_past_block_size():
    model = tiny_model("lstm", block_size=8)
    out = Engine(model).generate([1, 2, 3], SamplingParams(40, temperature=0))
    assert out == naive_generate(model, [1, 2, 3], SamplingParams(40, temperature=0))


def test_bad_sampling_parameters_are_user_errors():
    engine = Engine(tiny_model("gpt-pre"))
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(top_k=0), dict(max_new_tokens=-2)):
        with pytest.raises(ShoshinError):
            engine.generate([1], SamplingParams(**{"max_new_tokens": 3, **bad}))


@pytest.mark.parametrize("kind", ["gpt-pre", "lstm", "llama"])
def test_bf16_and_int8_models_track_the_fp32_model(kind):
    import copy

    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=VOCAB, **MODELS[kind]
    )
    model = build_model(config).eval()
    with torch.no_grad():  # GPT-2's scale everywhere (Llama starts its output layers at zero)
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    x = torch.randint(0, VOCAB, (1, 40))
    with torch.no_grad():
        ref = model(x).float()
        for dtype, quantize, tol in (
            ("fp32", None, 1e-5),
            ("bf16", None, 0.05),
            ("fp32", "int8", 0.05),
            ("bf16", "int8", 0.08),
            ("fp32", "int4", 0.15),  # 16 levels per group of 64 weights
        ):
            fast = prepare_for_inference(copy.deepcopy(model), dtype, quantize)
            err = (fast(x).float() - ref).abs().max() / ref.abs().max()
            assert err < tol, (dtype, quantize, float(err))
            out = Engine(fast).generate([1, 2, 3], SamplingParams(20, temperature=0))
            assert len(out) == 20
    with pytest.raises(ShoshinError):
        prepare_for_inference(model, "fp8")


def test_reduced_precision_uses_this_cpus_fast_kernels_and_every_fallback_agrees(monkeypatch):
    """int8 runs FBGEMM's int8 kernels on x86 and bf16 oneDNN's packed weights where the CPU has
    bf16 instructions; the fallbacks (PyTorch's int8-weight kernel, plain bf16 Linear) agree with
    fp32 within the same tolerances (max |logit error| / max |logit| < 0.05)."""
    import copy

    from shoshin.generation import precision, quantize

    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=VOCAB)
    model = build_model(config).eval()
    x = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        ref = model(x)

        def rel_err(m):
            return float((m(x).float() - ref).abs().max() / ref.abs().max())

        int8 = prepare_for_inference(copy.deepcopy(model), "fp32", "int8")
        head = int8.lm_head
        assert (head.packed is not None) == quantize.fbgemm_int8_available()
        assert rel_err(int8) < 0.05
        bf16 = prepare_for_inference(copy.deepcopy(model), "bf16")
        packed = isinstance(bf16.lm_head, precision.PackedLinear)
        assert packed == precision.cpu_has_bf16_matmul()
        assert rel_err(bf16) < 0.05
        monkeypatch.setattr(quantize, "fbgemm_int8_available", lambda: False)
        monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: False)
        plain_int8 = prepare_for_inference(copy.deepcopy(model), "fp32", "int8")
        assert plain_int8.lm_head.packed is None and rel_err(plain_int8) < 0.05
        plain_bf16 = prepare_for_inference(copy.deepcopy(model), "bf16")
        assert isinstance(plain_bf16.lm_head, torch.nn.Linear) and rel_err(plain_bf16) < 0.05


# -- text at the edges ------------------------------------------------------------------------

TEXT = "Hello 世界! Emoji 🎉🐍 and naïve café, 日本語のテキスト 👩‍💻."


def test_stream_decoder_never_emits_half_a_character():
    corpus = ["plain ascii words only, nothing else here " * 20]  # multi-byte chars stay split
    tok = BpeTokenizer.train(corpus, vocab_size=300, specials=["<|endoftext|>"])
    ids = tok.encode(TEXT)
    assert len(ids) > len(TEXT.encode("utf-8")) / 2  # emoji and CJK really are several tokens
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert pieces.count("") >= 5  # bytes of unfinished characters were held back
    naive = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in naive)  # ... where one-token-at-a-time decoding breaks


def test_stream_decoder_with_a_char_tokenizer_emits_every_character():
    tok = CharTokenizer.train([TEXT], ["<|endoftext|>"])
    decoder = StreamDecoder(tok)
    assert [decoder.push(i) for i in tok.encode(TEXT)] == list(TEXT)


def test_stop_strings_are_cut_even_when_split_over_pieces():
    stops = StopStrings(["\nUser:", "###"])
    shown = [stops.push(p) for p in ["Hi th", "ere\nUs", "er: more"]]
    assert "".join(shown) == "Hi there" and stops.stopped
    stops = StopStrings(["###"])
    assert stops.push("a#") == "a" and stops.push("b") == "#b" and stops.flush() == ""


def test_text_stream_decodes_and_stops_on_a_stop_string():
    tok = CharTokenizer.train(["abcdefghij klmnop\n"], ["<|endoftext|>"])
    model = tiny_model("gpt-pre")
    model.wte = torch.nn.Embedding(tok.vocab_size, 32)
    model.lm_head = torch.nn.Linear(32, tok.vocab_size, bias=False)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    engine = Engine(model)
    params = SamplingParams(80, temperature=0)
    ids = engine.generate(tok.encode("abc"), params)
    full = tok.decode(ids)
    stop = full[10:12]
    stream = TextStream(engine, tok, tok.encode("abc"), params, stop_strings=[stop])
    text = "".join(stream)
    assert text == full[: full.index(stop)] == stream.text
    assert stream.finish_reason == "stop"
    plain = TextStream(engine, tok, tok.encode("abc"), SamplingParams(12, temperature=0))
    assert "".join(plain) == full[:12] and plain.finish_reason == "length"
