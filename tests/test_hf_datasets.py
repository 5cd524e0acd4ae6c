"""`data.source=hf:...`: Hugging Face datasets built here (save_to_disk, JSON and Parquet files),
trained on through the real CLI, fingerprinted in the manifest; the hub's failures in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from gitrepo import TINY, shoshin_copy

from shoshin.data.sources import load_corpus
from shoshin.errors import ShoshinError

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

WORDS = "the cat sat on a warm mat and the dog ran to the old red barn".split()


@pytest.fixture(autouse=True)
def hf_offline_home(tmp_path, monkeypatch):
    """The datasets cache lives in the test's folder, and nothing may reach the network.

    (huggingface_hub reads HF_HUB_OFFLINE when imported: it holds for the CLI's processes, so the
    hub is only ever asked through the CLI here.)
    """
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _text_rows(n: int = 300) -> list[dict]:
    return [
        {"id": i, "text": " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(20 + i % 7))}
        for i in range(n)
    ]


def _chat_rows(n: int = 120) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 3) % len(WORDS)]
        messages = [
            {"role": "user", "content": f"Where is the {a}? Tell me about the {b}."},
            {"role": "assistant", "content": f"The {a} is by the {b}, near the barn. " * 2},
        ]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer kindly."})
        rows.append({"messages": messages, "source": "made-up"})
    return rows


def _manifest(tmp_path: Path) -> dict:
    (run,) = (tmp_path / "runs").iterdir()
    return json.loads((run / "manifest.json").read_text())


@pytest.mark.slow
def test_text_dataset_saved_to_disk_trains_and_is_fingerprinted(tmp_path):
    folder = tmp_path / "stories"
    datasets.Dataset.from_list(_text_rows()).save_to_disk(str(folder))

    result = run_cli("train", "tiny", f"data.source=hf:{folder}", "data.max_documents=0", *TINY)
    assert result.returncode == 0, result.stderr
    data = _manifest(tmp_path)["data"]
    assert data["kind"] == "text" and data["source"] == f"hf:{folder}"
    assert data["documents"]["train"] + data["documents"]["val"] == 300
    hf = data["hf"]
    assert hf["column"] == "text" and hf["split"] == "train" and hf["rows"] == 300
    assert hf["path"] == str(folder.resolve())
    assert hf["fingerprint"] == datasets.load_from_disk(str(folder))._fingerprint
    assert data["source_sha256"] == load_corpus(f"hf:{folder}").sha256


@pytest.mark.slow
def test_chat_dataset_dict_split_and_column_are_chosen_by_config(tmp_path):
    folder = tmp_path / "chats"
    rows = _chat_rows()
    splits = {"train": rows[:100], "test": rows[100:]}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    ).save_to_disk(str(folder))
    result = run_cli(
        "train",
        "tiny",
        f"data.source=hf:{folder}",
        "data.hf_split=train",
        "data.hf_column=messages",
        "data.loss_on=assistant",
        *TINY,
    )
    assert result.returncode == 0, result.stderr
    data = _manifest(tmp_path)["data"]
    assert data["kind"] == "chat" and data["hf"]["column"] == "messages"
    assert data["documents"]["train"] + data["documents"]["val"] == 100

    corpus = load_corpus(f"hf:{folder}", hf_split="test")
    assert len(corpus.documents) == 20 and corpus.kind == "chat"
    assert corpus.documents[0] == [
        {"role": m["role"], "content": m["content"]} for m in splits["test"][0]["messages"]
    ]
    with pytest.raises(ShoshinError, match=r"no split 'validation'.*one of train, test"):
        load_corpus(f"hf:{folder}", hf_split="validation")


def test_json_and_parquet_files_read_the_same_documents_as_save_to_disk(tmp_path):
    rows = _chat_rows(30)
    (tmp_path / "jsonl").mkdir()
    with open(tmp_path / "jsonl" / "train.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    (tmp_path / "parquet").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))

    corpora = [load_corpus(f"hf:{tmp_path / name}") for name in ("jsonl", "parquet", "saved")] + [
        load_corpus(f"hf:{tmp_path / 'parquet' / 'train.parquet'}")
    ]
    assert {c.kind for c in corpora} == {"chat"}
    assert len({c.sha256 for c in corpora}) == 1  # the content decides, not the storage
    assert corpora[0].documents[0][0] == {"role": "system", "content": "Answer kindly."}
    sliced = load_corpus(f"hf:{tmp_path / 'parquet'}", hf_split="train[:5]")
    assert sliced.documents == corpora[0].documents[:5] and sliced.origin["rows"] == 5


def test_text_column_is_detected_or_must_be_named(tmp_path):
    datasets.Dataset.from_list(
        [{"body": "a long enough story " * 3, "n": i} for i in range(10)]
    ).save_to_disk(str(tmp_path / "one"))
    assert load_corpus(f"hf:{tmp_path / 'one'}").origin["column"] == "body"  # the only string

    datasets.Dataset.from_list(
        [{"title": "t", "body": "story", "n": i} for i in range(10)]
    ).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ShoshinError, match="set data.hf_column to one of title, body, n"):
        load_corpus(f"hf:{tmp_path / 'two'}")
    with pytest.raises(ShoshinError, match="neither text"):
        load_corpus(f"hf:{tmp_path / 'two'}", hf_column="n")
    with pytest.raises(ShoshinError, match="no column 'txt'"):
        load_corpus(f"hf:{tmp_path / 'two'}", hf_column="txt")
    assert load_corpus(f"hf:{tmp_path / 'two'}", hf_column="title").documents == ["t"] * 10


def test_split_names_that_do_not_apply_are_refused(tmp_path):
    datasets.Dataset.from_list(_text_rows(5)).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(ShoshinError, match="single Dataset without splits"):
        load_corpus(f"hf:{tmp_path / 'single'}", hf_split="test")
    with pytest.raises(ShoshinError, match="needs a dataset"):
        load_corpus("hf:")


def test_bad_messages_are_named_by_row(tmp_path):
    rows = _chat_rows(5)
    rows[3]["messages"][1]["role"] = "narrator"
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ShoshinError, match=r"row 3\): unknown role 'narrator'"):
        load_corpus(f"hf:{tmp_path / 'bad'}")


def test_byte_order_marks_are_skipped_in_data_files(tmp_path):
    """Every Windows editor writes a BOM: the text and CSV readers keep it in the first row."""
    bom = b"\xef\xbb\xbf"
    for name, content in [
        ("a.txt", b"first line\nsecond line\n"),
        ("b.csv", b"text,n\nfirst line,1\nsecond line,2\n"),
        ("c.jsonl", b'{"text": "first line"}\n{"text": "second line"}\n'),
    ]:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(bom + content)
        assert load_corpus(f"hf:{folder}").documents == ["first line", "second line"], name
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_bytes(bom + b"\nonly line\n")  # a BOM alone is blank
    assert load_corpus(f"hf:{tmp_path / 'blank'}").documents == ["only line"]


def test_a_data_file_datasets_cannot_parse_is_named_with_the_reason(tmp_path):
    (tmp_path / "chat").mkdir()
    line = json.dumps({"messages": [{"role": "user", "content": "hi \ud800"}]})
    (tmp_path / "chat" / "a.jsonl").write_text(f"{line}\n" * 2)  # Arrow's JSON reader refuses it
    with pytest.raises(ShoshinError, match=r"hf:.*chat: .*\(JSON parse error: .*surrogate"):
        load_corpus(f"hf:{tmp_path / 'chat'}")


def test_a_relative_folder_named_like_a_datasets_builder_is_that_folder(tmp_path, monkeypatch):
    """hf:./csv is the folder csv, not datasets' csv builder reading the current folder."""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text("text\nfrom the folder\n")
    (tmp_path / "elsewhere.csv").write_text("text\nfrom the current folder\n")
    monkeypatch.chdir(tmp_path)
    corpus = load_corpus("hf:./csv")
    assert corpus.documents == ["from the folder"]
    assert corpus.origin["path"] == str(tmp_path / "csv")


def test_an_offline_hub_id_fails_in_one_line(tmp_path):
    result = run_cli("train", "tiny", "data.source=hf:someone/some-dataset:some-config", *TINY)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "error: data.source=hf:someone/some-dataset:some-config: the Hugging Face hub cannot be "
        "reached (offline, or HF_HUB_OFFLINE=1) and this dataset is not in the local cache"
    )
    with pytest.raises(ShoshinError, match="no-such-folder does not exist"):
        load_corpus("hf:./no-such-folder")
    with pytest.raises(ShoshinError, match="hf_revision applies to hub datasets"):
        load_corpus(f"hf:{tmp_path}", hf_revision="main")


def test_without_the_datasets_library_the_error_says_what_to_install(tmp_path):
    # The library made unimportable, as on an install without the extra.
    code = (
        "import sys; sys.modules['datasets'] = None; from shoshin.cli import main; "
        f"sys.exit(main(['train', 'tiny', 'data.source=hf:{tmp_path}']))"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: data.source=hf:{tmp_path} needs the Hugging Face datasets library: "
        "pip install 'shoshin[datasets]'"
    )


@pytest.mark.slow
def test_a_run_on_a_local_dataset_reproduces_and_notices_a_changed_dataset(tmp_path, monkeypatch):
    _, env = shoshin_copy(tmp_path / "src", with_git=False)
    folder = tmp_path / "stories"
    datasets.Dataset.from_list(_text_rows()).save_to_disk(str(folder))
    result = run_cli("train", "tiny", "data.source=hf:./stories", *TINY, env=env)  # relative
    assert result.returncode == 0, result.stderr
    (original,) = [p.name for p in (tmp_path / "runs").iterdir()]

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the folder is found from the run's directory
    result = run_cli("reproduce", original, "--steps", "6", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "REPRODUCED: 6 steps" in result.stdout

    rows = _text_rows()
    rows[7]["text"] = "a changed story"
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "changed"))
    folder.rename(tmp_path / "old")
    (tmp_path / "changed").rename(folder)
    result = run_cli("reproduce", original, "--steps", "3", env=env)
    assert result.returncode == 2 and "differs: data fingerprint" in result.stdout
