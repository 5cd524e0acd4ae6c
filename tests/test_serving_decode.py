"""The server on the engine's decode core, held to the naive reference: concurrent greedy and seeded
replies, n > 1, log-probabilities (chat, streamed, legacy completions with echo), token-id
prompts, sampling options through both endpoints, and vLLM's /tokenize and /detokenize."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
import torch
from serving_tiny import one_torch_thread, sharp_chat_model  # noqa: F401

from shoshin.data.chat import stop_token_ids
from shoshin.data.tokenizers import CharTokenizer
from shoshin.generation import SamplingParams, naive_generate
from shoshin.generation.chat import chat_template
from shoshin.serving import ServeConfig, background_server, create_app

PROMPTS = [
    [5],
    [1, 2],
    [7, 3, 9],
    [4] * 5,
    list(range(8)),
    [2, 9] * 5,
    list(range(14)),
    [6, 1] * 10,
]


@pytest.fixture(scope="module")
def sharp():
    model, tok = sharp_chat_model()
    with background_server(create_app(model, tok, "sharp", ServeConfig(max_tokens=40))) as url:
        yield url, model, tok


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _concurrently(calls):
    results = [None] * len(calls)

    def run(i):
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _as_served(tok, ids: list[int], stops: list[int]) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) the API must report for generated ids."""
    stopped = bool(ids) and ids[-1] in stops
    return tok.decode(ids[:-1] if stopped else ids), "stop" if stopped else "length", len(ids)


def test_concurrent_greedy_replies_equal_the_naive_reference(sharp):
    url, model, tok = sharp
    stops = stop_token_ids(tok)
    # Every other request forbids the stop tokens, so it surely runs to max_tokens.
    no_stop = {t: -100.0 for t in stops}
    biases = [no_stop if i % 2 else {} for i in range(len(PROMPTS))]
    expected = [
        _as_served(
            tok,
            naive_generate(
                model, p, SamplingParams(30, temperature=0, stop_ids=stops, logit_bias=b)
            ),
            stops,
        )
        for p, b in zip(PROMPTS, biases, strict=True)
    ]
    assert len({e[0] for e in expected}) > 4, "the test model is too degenerate to tell rows apart"
    client = _client(url)
    replies = _concurrently(
        [
            lambda p=p, b=b: client.completions.create(
                model="sharp",
                prompt=p,
                max_tokens=30,
                temperature=0,
                logit_bias={str(t): v for t, v in b.items()},
            )
            for p, b in zip(PROMPTS, biases, strict=True)
        ]
    )
    got = [
        (r.choices[0].text, r.choices[0].finish_reason, r.usage.completion_tokens) for r in replies
    ]
    assert got == expected
    assert [e[1] for e in expected[1::2]] == ["length"] * 4


def test_n_choices_with_seeds_equal_the_naive_reference(sharp):
    url, model, tok = sharp
    stops = stop_token_ids(tok)
    prompts = [PROMPTS[2], PROMPTS[6]]
    reply = _client(url).completions.create(
        model="sharp",
        prompt=prompts,
        n=3,
        seed=11,
        temperature=0.9,
        max_tokens=25,
        extra_body={"top_k": 8},
    )
    assert [c.index for c in reply.choices] == list(range(6))
    for c in reply.choices:  # choice k: prompt k // n, seed + k % n
        params = SamplingParams(25, temperature=0.9, top_k=8, seed=11 + c.index % 3, stop_ids=stops)
        ids = naive_generate(model, prompts[c.index // 3], params)
        assert (c.text, c.finish_reason) == _as_served(tok, ids, stops)[:2]
    assert len({c.text for c in reply.choices}) > 2  # the seeds really differ
    assert reply.usage.prompt_tokens == sum(len(p) for p in prompts)


def test_chat_logprobs_equal_log_softmax_of_the_naive_logits_streamed_or_not(sharp):
    url, model, tok = sharp
    messages = [{"role": "user", "content": "hello there"}]
    prompt = chat_template(tok).render(messages)
    steps: list[torch.Tensor] = []
    stops = stop_token_ids(tok)
    no_stop = {t: -100.0 for t in stops}  # a long reply; log-probabilities are of the raw logits
    params = SamplingParams(20, temperature=0, stop_ids=stops, logit_bias=no_stop)
    shown = naive_generate(model, prompt, params, logits_out=steps)
    assert len(shown) == 20
    client = _client(url)
    request = dict(
        model="sharp", messages=messages, max_tokens=20, temperature=0, logprobs=True,
        top_logprobs=5, logit_bias={str(t): -100 for t in stops},
    )  # fmt: skip
    reply = client.chat.completions.create(**request)
    streamed = [
        entry
        for chunk in client.chat.completions.create(**request, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    for content in (reply.choices[0].logprobs.content, streamed):
        assert [e.token for e in content] == [tok.decode([t]) for t in shown]
        for entry, token, logits in zip(content, shown, steps, strict=True):
            ref = logits[0].float().log_softmax(-1)
            assert entry.logprob == pytest.approx(float(ref[token]), abs=1e-4)
            assert entry.bytes == list(tok.decode([token]).encode())
            top = ref.topk(5)
            assert [t.logprob for t in entry.top_logprobs] == pytest.approx(
                top.values.tolist(), abs=1e-4
            )
            assert entry.top_logprobs[0].token == tok.decode([int(top.indices[0])])


def test_echo_with_max_tokens_0_scores_the_prompt_exactly(sharp):
    url, model, tok = sharp
    ids = [3, 14, 15, 9, 2, 6, 5, 3, 5]
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].float().log_softmax(-1)  # a direct forward pass
    client = _client(url)
    for prompt in (ids, [ids], tok.decode(ids)):
        scored = client.completions.create(
            model="sharp", prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0
        )
        choice = scored.choices[0]
        assert choice.text == tok.decode(ids) and choice.finish_reason == "length"
        lp = choice.logprobs
        assert lp.tokens == [tok.decode([t]) for t in ids]
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        expected = [float(ref[t, ids[t + 1]]) for t in range(len(ids) - 1)]
        assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
        assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
        assert lp.text_offset == list(range(len(ids)))  # one character per token
        assert scored.usage.completion_tokens == 0
    # as lm-evaluation-harness asks: a batch of token-id prompts, echo, one new token, logprobs 1
    both = client.completions.create(
        model="sharp", prompt=[ids, ids[:4]], max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    for choice, p in zip(both.choices, (ids, ids[:4]), strict=True):
        assert len(choice.logprobs.token_logprobs) == len(p) + 1
        assert choice.logprobs.token_logprobs[1 : len(p)] == pytest.approx(
            [float(ref[t, p[t + 1]]) for t in range(len(p) - 1)], abs=1e-4
        )


def test_prompt_forms_and_bad_token_ids(sharp):
    url, _, tok = sharp
    post = lambda body: httpx.post(f"{url}/v1/completions", json=body, timeout=60)  # noqa: E731
    base = {"max_tokens": 3, "temperature": 0}
    one = post({**base, "prompt": "abc"}).json()["choices"]
    assert post({**base, "prompt": tok.encode("abc")}).json()["choices"] == one
    many = post({**base, "prompt": ["abc", "xyz"]}).json()["choices"]
    assert [c["index"] for c in many] == [0, 1] and many[0]["text"] == one[0]["text"]
    for bad, words in (
        ({"prompt": [tok.vocab_size + 5]}, "not in the vocabulary"),
        ({"prompt": []}, "prompt: must not be empty"),
        ({"prompt": [[]]}, "prompt.0: must not be empty"),
        ({"prompt": "a", "logprobs": 50}, "logprobs"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {str(tok.vocab_size): 1}}, "vocabulary"),
        ({"prompt": "a", "n": 1000}, "n"),
    ):
        r = post({**base, **bad})
        assert r.status_code == 400 and words in r.json()["error"]["message"], (bad, r.text)


def test_tokenize_and_detokenize_as_vllm_serves_them(sharp):
    url, _, tok = sharp
    ids = httpx.post(f"{url}/tokenize", json={"prompt": "hi there"}).json()
    assert (
        ids["tokens"] == tok.encode("hi there") and ids["count"] == 8 and ids["max_model_len"] == 96
    )
    text = httpx.post(f"{url}/detokenize", json={"tokens": ids["tokens"]}).json()
    assert text == {"prompt": "hi there"}
    chat = httpx.post(f"{url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["tokens"] == chat_template(tok).render([{"role": "user", "content": "hi"}])
    assert httpx.post(f"{url}/detokenize", json={"tokens": [10**6]}).status_code == 400


def test_sampling_options_reach_the_model_through_both_endpoints():
    from test_sampling import looping_gpt

    model = looping_gpt()  # greedy output repeats token 3 ("d") forever
    tok = CharTokenizer(list("abcdefghij"), [])
    with background_server(create_app(model, tok, "loop", ServeConfig(max_tokens=20))) as url:
        client = _client(url)
        base = dict(model="loop", temperature=0, max_tokens=20)
        assert client.completions.create(prompt="a", **base).choices[0].text == "d" * 20
        for options in (
            dict(frequency_penalty=0.5),
            dict(presence_penalty=1.5),
            dict(extra_body={"repetition_penalty": 2.0}),
            dict(logit_bias={"3": -100}),
        ):
            text = client.completions.create(prompt="a", **base, **options).choices[0].text
            chat = (
                client.chat.completions.create(
                    messages=[{"role": "user", "content": "a"}], **base, **options
                )
                .choices[0]
                .message.content
            )
            assert text != "d" * 20 and chat != "d" * 20, options
        assert (
            client.completions.create(
                prompt="a", **{**base, "temperature": 1.0}, seed=1, extra_body={"min_p": 1.0}
            )
            .choices[0]
            .text
            == "d" * 20
        )  # min_p=1 keeps only the most likely token
