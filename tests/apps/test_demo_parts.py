"""The demo's parts without a browser: stored conversations, generation slots, error text, the model picker."""

from __future__ import annotations

import threading

import pytest

from xpullm.apps.demo.conversations import TITLE_CHARS, ConversationStore, title_from
from xpullm.apps.demo.errors import for_people, friendly
from xpullm.apps.demo.model_catalog import PACKAGED, find_models
from xpullm.apps.demo.models import model_name
from xpullm.apps.demo.slots import GenerationSlots, waiting_line


def test_conversations_round_trip_and_order(tmp_path):
    store = ConversationStore(tmp_path / "chats.sqlite")
    first = store.create()
    store.save(
        first,
        [{"role": "user", "content": "  What is\nNF4? "}, {"role": "assistant", "content": "A format."}],
    )
    second = store.create()
    store.save(second, [{"role": "user", "content": "Hello"}])
    reopened = ConversationStore(tmp_path / "chats.sqlite")  # a restart of the app reads the same file
    assert [c.id for c in reopened.list()] == [second, first]  # most recent first
    assert reopened.title(first) == "What is NF4?"  # named after the first question, on one line
    assert reopened.messages(first)[1] == {"role": "assistant", "content": "A format."}
    reopened.rename(first, "Formats")
    reopened.save(first, [*reopened.messages(first), {"role": "user", "content": "More?"}])
    assert reopened.title(first) == "Formats"  # a rename sticks when the conversation goes on
    assert next(c.id for c in reopened.list()) == first
    reopened.delete(first)
    assert not reopened.exists(first) and reopened.messages(first) == []
    with pytest.raises(KeyError, match="does not exist"):
        reopened.rename(first, "x")
    with pytest.raises(ValueError, match="the new title is empty"):
        reopened.rename(second, "   ")
    assert len(title_from("word " * 40)) == TITLE_CHARS and title_from("word " * 40).endswith("…")


def test_slots_serve_in_arrival_order_and_report_positions():
    slots = GenerationSlots(2)
    a, b, c, d = (slots.enter() for _ in range(4))
    assert a.wait(0) and b.wait(0)  # two slots: the first two run at once
    assert not c.wait(0.01) and not d.wait(0.01)
    assert (c.position(), d.position()) == (1, 2)
    assert slots.running == 2 and slots.waiting == 2
    assert not d.wait(0.01)  # d cannot overtake c
    a.release()
    assert not d.wait(0.01) and c.wait(1.0)  # the freed slot goes to the first in line
    c.release()
    assert d.wait(1.0) and d.position() == 0
    for t in (b, d):
        t.release()
    assert slots.running == 0 and slots.waiting == 0
    assert waiting_line(1, 2) == "waiting in line: position 1 (you are next; 2 answering now)"
    assert waiting_line(3, 2) == "waiting in line: position 3 (2 ahead of you; 2 answering now)"


def test_a_stopped_request_leaves_the_line():
    slots = GenerationSlots(1)
    running = slots.enter()
    assert running.wait(0)
    cancel = threading.Event()
    waiter = slots.enter()
    lines = waiter.waiting(cancel, poll_s=0.01)
    assert "position 1" in next(lines)
    cancel.set()
    with pytest.raises(InterruptedError):
        next(lines)
    assert slots.waiting == 0  # its place is given up, the next request is first in line
    later = slots.enter()
    running.release()
    assert later.wait(1.0)
    later.release()


def test_slots_hand_out_every_slot_under_threads():
    slots = GenerationSlots(3)
    peak, active, lock = [0], [0], threading.Lock()

    def work() -> None:
        with slots.enter() as turn:
            for _ in turn.waiting(poll_s=0.005):
                pass
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            threading.Event().wait(0.01)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 3 and slots.running == 0 and slots.waiting == 0


def test_errors_shown_on_the_page_hold_no_server_path_or_python_hint(tmp_path):
    from xpullm.rag import KnowledgeBase

    with pytest.raises(Exception) as info:
        KnowledgeBase.open(tmp_path / "kb" / "missing")
    raw = str(info.value)
    assert str(tmp_path) in raw and "KnowledgeBase.create(" in raw  # the library message is for programmers
    shown = friendly(info.value)
    assert shown == "no knowledge base at missing"
    assert for_people("see http://127.0.0.1:7860/a/b and C:\\Users\\me\\notes.pdf") == (
        "see http://127.0.0.1:7860/a/b and notes.pdf"
    )


def test_model_picker_finds_gguf_files_folders_and_the_hf_cache(tmp_path):
    models = tmp_path / "models"
    (models / "a" / "b").mkdir(parents=True)
    (models / "a" / "b" / "tiny.gguf").write_bytes(b"GGUF")
    (models / "qwen").mkdir()
    (models / "qwen" / "config.json").write_text("{}")
    (models / "qwen" / "inner.gguf").write_bytes(b"GGUF")  # inside a model folder: the folder is the entry
    (models / ".hidden").mkdir()
    (models / ".hidden" / "x.gguf").write_bytes(b"GGUF")
    (models / "d1" / "d2" / "d3" / "d4").mkdir(parents=True)
    (models / "d1" / "d2" / "d3" / "d4" / "deep.gguf").write_bytes(b"GGUF")  # deeper than the walk goes
    cache = tmp_path / "hub"
    snap = cache / "models--org--chat-1b" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    gguf_snap = cache / "models--org--chat-GGUF" / "snapshots" / "def"
    gguf_snap.mkdir(parents=True)
    (gguf_snap / "chat.Q4_0.gguf").write_bytes(b"GGUF")
    found = find_models([models, models], hf_cache=cache)  # a directory given twice lists its models once
    assert [(c.label, c.value) for c in found] == [
        ("SmolLM2-135M-Instruct (packaged)", PACKAGED),
        ("a/b/tiny.gguf (GGUF)", str(models / "a" / "b" / "tiny.gguf")),
        ("qwen (folder)", str(models / "qwen")),
        ("org/chat-1b (HF cache)", str(snap)),
        ("org/chat-GGUF/chat.Q4_0.gguf (HF cache)", str(gguf_snap / "chat.Q4_0.gguf")),
    ]
    assert model_name(str(snap)) == "org/chat-1b"  # the UI names a cached snapshot by its hub id
    assert model_name(str(models / "a" / "b" / "tiny.gguf")) == "tiny.gguf"
    assert model_name(None) == "SmolLM2-135M-Instruct" and model_name("org/name") == "org/name"


def test_demo_command_rejects_a_bad_option_in_one_line(capsys, tmp_path):
    from xpullm.cli.main import main

    assert main(["demo", "--concurrent-answers", "0", "--data-dir", str(tmp_path), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert err == "error: concurrent_answers=0 must be at least 1\nhint: see 'xpullm demo --help'\n"
