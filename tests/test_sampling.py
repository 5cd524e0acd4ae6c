"""The one sampling function: every option changes the choice it should, and rows stay independent."""

from __future__ import annotations

import math

import pytest
import torch
from reference import naive_generate

from shoshin.config import ModelConfig
from shoshin.errors import ShoshinError
from shoshin.generation import Engine, SamplingParams, sample_next
from shoshin.generation.sampling import TokenHistory, make_generator
from shoshin.models import build_model

V = 10


def pick(logits, params: SamplingParams, ids=(), prompt_len=0, seed=0) -> int:
    """One row through sample_next."""
    history = TokenHistory(list(ids), prompt_len)
    return int(sample_next(torch.tensor([logits]), [params], [history], [make_generator(seed)])[0])


def looping_gpt(favourite: int = 3, runner_up: int = 5, gap: float = 1.0):
    """A GPT whose logits are the same at every position: `favourite` first, `runner_up` `gap` lower.

    Greedy decoding repeats `favourite` forever: the model that loops, to see penalties work.
    """
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=1, n_head=1, n_embd=8, block_size=64, vocab_size=V, tie_embeddings=False
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.bias[0] = 1.0  # the final LayerNorm outputs e0 whatever came before
        model.lm_head.weight[:, 0] = torch.linspace(-0.5, 0.5, V)  # small logits everywhere
        model.lm_head.weight[favourite, 0] = 2.0 + gap
        model.lm_head.weight[runner_up, 0] = 2.0
    return model


def test_greedy_is_argmax_and_logit_bias_steers_it():
    logits = [0.0] * V
    logits[4] = 5.0
    assert pick(logits, SamplingParams(temperature=0)) == 4
    assert pick(logits, SamplingParams(temperature=0, logit_bias={4: -100})) != 4
    assert pick(logits, SamplingParams(temperature=0, logit_bias={7: 100})) == 7
    assert pick(logits, SamplingParams(temperature=1.0, logit_bias={7: 100}, seed=3)) == 7


def test_frequency_presence_and_repetition_penalties_read_the_history():
    logits = [0.0] * V
    logits[4], logits[6] = 3.0, 2.0
    reply = [4, 4, 4]  # generated so far: 4 three times
    freq = SamplingParams(temperature=0, frequency_penalty=0.5)
    assert pick(logits, freq, [1, *reply], prompt_len=1) == 6  # 3 - 3 * 0.5 < 2
    assert pick(logits, freq, [4, 4, 4], prompt_len=3) == 4  # the prompt does not count
    presence = SamplingParams(temperature=0, presence_penalty=1.5)
    assert pick(logits, presence, [1, 4], prompt_len=1) == 6
    repetition = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert pick(logits, repetition, [4], prompt_len=1) == 6  # 3 / 2 < 2
    assert pick(logits, repetition, [4], prompt_len=0) == 6  # prompt tokens count for it
    negative = [-1.0] * V
    negative[2], negative[3] = -0.5, -0.8  # a negative logit is multiplied, so it drops too
    assert pick(negative, repetition, [2], prompt_len=1) == 3


def test_top_k_top_p_and_min_p_bound_what_can_be_drawn():
    logits = [math.log(p) for p in (0.5, 0.3, 0.1, 0.05, 0.02, 0.01, 0.01, 0.005, 0.003, 0.002)]
    draws = lambda p: {pick(logits, p, seed=s) for s in range(300)}  # noqa: E731
    assert draws(SamplingParams(top_k=2)) == {0, 1}
    assert draws(SamplingParams(top_p=0.75)) == {0, 1}  # 0.5 < 0.75, then 0.8 reaches it
    assert draws(SamplingParams(min_p=0.5)) == {0, 1}  # 0.3 >= 0.5 x 0.5; 0.1 is not
    assert draws(SamplingParams(min_p=1.0)) == {0}
    assert len(draws(SamplingParams())) > 5


def test_each_row_samples_as_it_would_alone():
    torch.manual_seed(0)
    logits = torch.randn(4, V) * 2
    params = [
        SamplingParams(temperature=0.7, seed=1),
        SamplingParams(temperature=0, logit_bias={1: 3.0}),
        SamplingParams(temperature=1.3, top_k=3, seed=2),
        SamplingParams(temperature=1.0, min_p=0.2, frequency_penalty=1.0, seed=3),
    ]
    histories = [TokenHistory([1, 2, 2], 1) for _ in params]
    together = sample_next(logits, params, histories, [make_generator(p.seed) for p in params])
    alone = [
        pick(logits[b].tolist(), p, [1, 2, 2], 1, seed=p.seed or 0) for b, p in enumerate(params)
    ]
    assert together.tolist() == alone


@pytest.mark.parametrize(
    "bad",
    [
        dict(temperature=float("nan")),
        dict(temperature=-1),
        dict(top_p=0.0),
        dict(top_k=0),
        dict(min_p=1.5),
        dict(max_new_tokens=-2),
        dict(frequency_penalty=3),
        dict(presence_penalty=float("inf")),
        dict(repetition_penalty=0),
        dict(logit_bias={3: 200}),
        dict(logit_bias={V: 1}),
        dict(logprobs=21),
    ],
)
def test_bad_sampling_parameters_are_one_line_user_errors(bad):
    with pytest.raises(ShoshinError) as info:
        SamplingParams(**bad).validate(vocab_size=V)
    assert "\n" not in str(info.value)


def test_penalties_and_bias_change_what_a_looping_model_writes():
    model = looping_gpt()
    engine = Engine(model)
    loop = engine.generate([1], SamplingParams(20, temperature=0))
    assert loop == [3] * 20  # the model loops on its favourite token
    assert naive_generate(model, [1], SamplingParams(20, temperature=0)) == loop
    for options in (
        dict(frequency_penalty=0.5),
        dict(presence_penalty=1.5),
        dict(repetition_penalty=2.0),
        dict(logit_bias={3: -100}),
    ):
        params = SamplingParams(20, temperature=0, **options)
        out = engine.generate([1], params)
        assert out != loop and out[0] == (5 if "logit_bias" in options else 3), options
        assert out == naive_generate(model, [1], params), options  # and the paths still agree
    # A frequency penalty keeps growing with the count: the favourite cannot dominate any more.
    assert (
        engine.generate([1], SamplingParams(40, temperature=0, frequency_penalty=0.5)).count(3) < 25
    )


@pytest.mark.parametrize(
    "extreme, allowed",
    [
        (dict(temperature=1e-300), {1}),  # the largest logit, as greedy would
        (dict(repetition_penalty=5e-324, temperature=0.7), {1, 3}),  # the tokens it favours
    ],
)
def test_overflowing_logits_still_draw_a_defined_token(extreme, allowed):
    """A legal but extreme temperature or penalty overflows logits to inf: the draw stays defined
    (the fuzzer found a 500 here) and picks what the option favours."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.0]])
    history = TokenHistory([1, 3], 2)
    for seed in range(8):
        params = SamplingParams(4, seed=seed, **extreme)
        token = sample_next(logits, [params], [history], [make_generator(seed)])
        assert int(token[0]) in allowed
