"""Prefix reuse in the server's scheduler: a prompt that starts like an earlier prompt or
conversation starts from its stored keys/values, with the same tokens and log-probabilities (to
1e-4) as a scheduler that recomputes everything, alone or in a batch with unrelated requests."""

from __future__ import annotations

import pytest
import torch
from fast_tiny import VOCAB, one_thread, sharp_model  # noqa: F401
from reference import naive_generate

from shoshin.generation import SamplingParams
from shoshin.generation.prefix import PrefixCache
from shoshin.serving.batching import BatchScheduler


def run(scheduler: BatchScheduler, prompts: list[list[int]], params: SamplingParams) -> list:
    """Submit every prompt at once and step the scheduler (in this thread) until all are done;
    returns each request's (tokens, logprobs, finish reason)."""
    outputs: list[list] = [[[], [], None] for _ in prompts]
    for i, prompt in enumerate(prompts):

        def listen(token, logprob, reason, out=outputs[i]):
            if token is None:
                out[2] = reason
            else:
                out[0].append(token)
                out[1].append(logprob.logprob)

        scheduler.submit(prompt, params, listen)
    while any(out[2] is None for out in outputs):
        scheduler.step()
    return outputs


def assert_same(with_reuse: list, without: list) -> None:
    for (tokens, logprobs, reason), (tokens0, logprobs0, reason0) in zip(
        with_reuse, without, strict=True
    ):
        assert tokens == tokens0 and reason == reason0
        assert max(abs(a - b) for a, b in zip(logprobs, logprobs0, strict=True)) < 1e-4


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_a_resent_conversation_reuses_its_keys_and_values_with_the_same_output(arch):
    model = sharp_model(arch, n_embd=32, block_size=160)
    params = SamplingParams(max_new_tokens=12, temperature=0, logprobs=0)
    gen = torch.Generator().manual_seed(0)
    system = torch.randint(0, VOCAB, (40,), generator=gen).tolist()
    turn1 = system + torch.randint(0, VOCAB, (10,), generator=gen).tolist()
    reuse = BatchScheduler(model, slots=4)
    plain = BatchScheduler(model, slots=4, prefix_cache_bytes=0)
    first = run(reuse, [turn1], params)
    assert_same(first, run(plain, [turn1], params))
    # the client sends the conversation back with a new message, while three other requests
    # arrive: one sharing only the system prompt, one sharing a few tokens, one unrelated
    turn2 = turn1 + first[0][0] + torch.randint(0, VOCAB, (8,), generator=gen).tolist()
    other_user = system + torch.randint(0, VOCAB, (12,), generator=gen).tolist()
    few = system[:5] + torch.randint(0, VOCAB, (30,), generator=gen).tolist()
    unrelated = torch.randint(0, VOCAB, (25,), generator=gen).tolist()
    prompts = [turn2, other_user, few, unrelated]
    hits_before = reuse.prefixes.hits
    assert_same(run(reuse, prompts, params), run(plain, prompts, params))
    assert reuse.prefixes.hits - hits_before == 2  # the conversation and the system prompt
    assert plain.prefixes is None
    naive = naive_generate(model, turn2, SamplingParams(max_new_tokens=12, temperature=0))
    assert run(reuse, [turn2], params)[0][0] == naive  # and once more, from the stored turn 2


def test_prompt_logprobs_and_sampling_with_seeds_are_unchanged_by_reuse():
    model = sharp_model(n_embd=32, block_size=160)
    prompt = list(range(1, 41))
    reuse = BatchScheduler(model, slots=2)
    plain = BatchScheduler(model, slots=2, prefix_cache_bytes=0)
    seeded = SamplingParams(max_new_tokens=10, temperature=0.9, top_k=20, seed=3, logprobs=0)
    run(reuse, [prompt], seeded)  # stores the prompt (and its reply)
    again = [prompt + [7, 8], prompt]  # a longer one, and the very same prompt
    assert_same(run(reuse, again, seeded), run(plain, again, seeded))
    scoring = SamplingParams(max_new_tokens=0, prompt_logprobs=0)  # needs an empty row
    hits = reuse.prefixes.hits
    run(reuse, [prompt], scoring)
    assert reuse.prefixes.hits == hits


def test_the_store_is_bounded_and_evicts_the_least_recently_used():
    model = sharp_model(n_embd=32, block_size=160)
    cache = model.new_cache(1)
    per_token = 2 * cache.k[:, 0, :, :1].numel() * cache.k.element_size()
    store = PrefixCache(max_bytes=100 * per_token)
    seqs = [[s] * 40 for s in range(1, 4)]  # 40 tokens each: two fit, three do not
    for seq in seqs[:2]:
        cache.reset()
        model(torch.tensor([seq]), cache=cache)
        store.store(cache, 0, seq)
    assert store.restore(cache, 0, seqs[0] + [5]) == 40  # touches the first: now most recent
    cache.reset()
    model(torch.tensor([seqs[2]]), cache=cache)
    store.store(cache, 0, seqs[2])
    assert store.bytes <= 100 * per_token
    assert set(store.entries) == {tuple(seqs[0]), tuple(seqs[2])}  # the second was evicted
    # a stored sequence that a longer one extends is dropped: the longer one covers it
    model(torch.tensor([[9] * 10]), cache=cache)
    store.store(cache, 0, seqs[2] + [9] * 10)
    assert tuple(seqs[2]) not in store.entries and len(store.entries) == 2
    assert store.restore(cache, 0, [9] * 50) == 0 and int(cache.lengths[0]) == 0
