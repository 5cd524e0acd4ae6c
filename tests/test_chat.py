"""Chat sessions (history trimming, KV-cache reuse between turns) and `shoshin chat` in a terminal."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from shoshin.config import ModelConfig
from shoshin.data.tokenizers import CHAT_TOKENS, EOT, CharTokenizer
from shoshin.generation import Engine, SamplingParams
from shoshin.generation.conversation import ChatSession, PlainTextTemplate
from shoshin.models import build_model

ALPHABET = "abcdefghijklmnopqrstuvwxyz ?!.,'\n"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a busy machine makes threads wait on each other
    yield
    torch.set_num_threads(threads)


def chat_model(arch: str = "gpt", block_size: int = 256, chat: bool = True):
    specials = [EOT, *CHAT_TOKENS] if chat else [EOT]
    tok = CharTokenizer(sorted(set(ALPHABET + "ABCDEFGHIJKLMNOPQRSTUVWXYZ:")), specials)
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=tok.vocab_size
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model, tok


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0)


def test_history_is_trimmed_to_the_window_and_the_system_prompt_stays():
    model, tok = chat_model(block_size=64)
    session = ChatSession(Engine(model), tok, system="be kind", params=greedy(20))
    seen = []
    for i in range(6):
        session.reply(f"message number {i}")
        seen.append(len(session.last_prompt))
        assert session.messages[0] == {"role": "system", "content": "be kind"}
        assert session.messages[-2]["content"] == f"message number {i}"
    assert session.dropped > 0
    assert max(seen) + 20 <= 64  # every prompt left room for a whole reply
    assert session.messages[1]["role"] == "user"  # whole exchanges are dropped, oldest first


def test_a_single_message_longer_than_the_window_does_not_crash():
    model, tok = chat_model(block_size=32)
    session = ChatSession(Engine(model), tok, params=greedy(50))  # replies overflow the window too
    assert isinstance(session.reply("a very long message " * 10), str)
    assert isinstance(session.reply("and another one"), str)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_second_turn_reuses_the_cache_and_matches_a_fresh_session(arch):
    model, tok = chat_model(arch)
    session = ChatSession(Engine(model), tok, system="you are terse", params=greedy(12))
    session.reply("hi there, who are you?")
    history = [dict(m) for m in session.turns]
    second = session.reply("what can you do?")
    full = len(session.last_prompt)
    assert session.prefilled < 25 < full  # only the new message (and the end of the reply) ran

    fresh = ChatSession(Engine(model), tok, system="you are terse", params=greedy(12))
    fresh.turns = history
    assert fresh.reply("what can you do?") == second
    assert fresh.prefilled == full  # the fresh session had to run everything


def test_reset_forgets_the_conversation_but_keeps_the_system_prompt():
    model, tok = chat_model()
    session = ChatSession(Engine(model), tok, system="sys", params=greedy(8))
    first = session.reply("hello")
    session.reply("again")
    session.reset()
    assert session.messages == [{"role": "system", "content": "sys"}]
    assert session.reply("hello") == first


def test_plain_text_models_chat_one_line_at_a_time():
    model, tok = chat_model(chat=False)
    session = ChatSession(Engine(model), tok, params=greedy(40))
    assert isinstance(session.template, PlainTextTemplate)
    reply = session.reply("Hello")
    assert "\n" not in reply
    assert tok.decode(session.template.render(session.messages)).endswith("Assistant:")


@pytest.mark.slow
def test_shoshin_chat_in_a_terminal_two_turns_reset_quit_and_sample_options():
    one_thread = {"OMP_NUM_THREADS": "1"}  # tiny model, busy machine: threads only wait
    assert run_cli("train", "tiny", "train.calibrate=false", env=one_thread).returncode == 0
    typed = "hello there\nhow are you?\n/temperature 0\n/reset\nhi again\n/quit\nnever read\n"
    result = run_cli(
        "chat", "latest", "--max-new-tokens", "20", "--seed", "0", "--system", "be nice",
        input=typed, env=one_thread, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("bot> ") == 3  # two turns, then one after /reset; nothing after /quit
    assert "(temperature 0)" in out and "(conversation cleared)" in out
    assert "Traceback" not in result.stderr

    greedy_args = [
        "sample",
        "latest",
        "--prompt",
        "hi",
        "--temperature",
        "0",
        "--max-new-tokens",
        "30",
    ]
    cached = run_cli(*greedy_args, env=one_thread)
    naive = run_cli(*greedy_args, "--no-cache", env=one_thread)
    assert cached.returncode == 0 and cached.stdout == naive.stdout, cached.stderr
    reply = cached.stdout.rstrip("\n")
    if len(reply) > 3:
        stopped = run_cli(*greedy_args, "--stop", reply[2:4], env=one_thread)
        assert stopped.stdout.rstrip("\n") == reply[: reply.index(reply[2:4])]
    small = run_cli(*greedy_args, "--dtype", "bf16", "--quantize", "int8", env=one_thread)
    assert small.returncode == 0, small.stderr
    smaller = run_cli(*greedy_args, "--quantize", "int4", env=one_thread)
    assert smaller.returncode == 0 and smaller.stdout.rstrip("\n"), smaller.stderr
    bad = run_cli(*greedy_args, "--quantize", "int3", env=one_thread)
    assert bad.returncode == 2 and "int4" in bad.stderr and "Traceback" not in bad.stderr

    missing = run_cli("chat", "no-such-run", input="/quit\n")
    assert missing.returncode == 2 and missing.stderr.startswith("error:")


@pytest.mark.slow  # importing transformers takes seconds
@pytest.mark.parametrize("make", ["make_gpt2", "make_gpt1"])
def test_chat_with_a_hugging_face_checkpoint_outgrowing_its_window(tmp_path, make):
    import hf_tiny

    import shoshin

    folder = getattr(hf_tiny, make)(tmp_path / "ckpt", n_positions=64)
    model, tok = shoshin.load(folder)
    session = ChatSession(Engine(model), tok, system="Hello there!", params=greedy(40))
    replies = [session.reply(text) for text in ("How are you?", "What did you do?", "Nice.")]
    assert all(isinstance(r, str) for r in replies)
    assert session.dropped > 0 and session.messages[0]["content"] == "Hello there!"
    assert len(session.last_prompt) <= 64


def test_role_template_renders_like_the_training_data_and_keeps_reply_ids():
    from shoshin.data.chat import render_chat
    from shoshin.generation.conversation import RoleTokenTemplate

    _, tok = chat_model()
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    template = RoleTokenTemplate(tok)
    assert template.render(messages) == render_chat(tok, messages, add_generation_prompt=True)[0]
    end = tok.special_tokens["<|end|>"]
    said = {**messages[2], "ids": [end, *tok.encode("yo")]}  # a reply that emitted a special token
    assistant = tok.special_tokens["<|assistant|>"]
    assert template.render([*messages[:2], said])[-6:] == [
        assistant, end, *tok.encode("yo"), end, assistant
    ]  # fmt: skip


def test_fifty_seeded_replies_never_show_a_role_token():
    from serving_tiny import tiny_chat_model

    from shoshin.data.tokenizers import END
    from shoshin.generation.continuation import sample_text

    model, tok = tiny_chat_model(steps=300)  # a chat model trained a few hundred steps
    engine = Engine(model)
    # Half the replies may not use <|end|> or <|endoftext|>: they end another way (a role token,
    # or the length limit), where a model that was not stopped writes the next turn itself.
    no_end = {tok.special_tokens[END]: -100.0, tok.special_tokens[EOT]: -100.0}
    replies = []
    for seed in range(50):
        params = SamplingParams(
            60, temperature=1.0, seed=seed, logit_bias=no_end if seed % 2 else {}
        )
        session = ChatSession(engine, tok, params=params)
        replies += [session.reply("hello"), session.reply("tell me a story")]
        replies.append("".join(sample_text(model, tok, "bye", params)))
    assert all("<|" not in r for r in replies), [r for r in replies if "<|" in r]
    assert len(set(replies)) > 20


@pytest.mark.parametrize("role", ["<|user|>", "<|assistant|>", "<|system|>"])
def test_a_reply_ends_at_any_role_token_which_is_never_shown(role):
    from shoshin.generation.streaming import TextStream

    model, tok = chat_model()
    engine = Engine(model)
    template = ChatSession(engine, tok).template
    prompt = template.render([{"role": "user", "content": "hi"}])
    # A large bias makes the model emit the role token first: the reply ends there, empty.
    forced = SamplingParams(
        8, temperature=0, stop_ids=template.stop_ids, logit_bias={tok.special_tokens[role]: 100}
    )
    stream = TextStream(engine, tok, prompt, forced)
    assert "".join(stream) == "" and stream.ids == [tok.special_tokens[role]]
    assert stream.finish_reason == "stop"
