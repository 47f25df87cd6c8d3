"""Erasure is real: after `delete_all(user_id=...)` or `/forget all` in the chat, the raw files of the stores
(the Milvus Lite file, the Kuzu database and its log, history.sqlite and its -wal) hold no byte of the user's
texts, entity names or user id. Other users are untouched.

Milvus Lite (SQLite underneath) keeps deleted rows' bytes in free pages, and Kuzu keeps deleted nodes in its file
for good; the memory layer rewrites the Milvus Lite file (a VACUUM) and the graph file, so the scan below finds
nothing, whether the rows were written in this session or an earlier one.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from replays_memory import add_op, answer, reading_model

from benchmarks.reliability import check_consistency, open_memory

REPO = Path(__file__).resolve().parent.parent


def files_holding(data_dir: Path, *needles: str) -> dict[str, list[str]]:
    """For each needle, the files under `data_dir` whose raw bytes contain it (UTF-8)."""
    found: dict[str, list[str]] = {needle: [] for needle in needles}
    for root, _, names in os.walk(data_dir):
        for name in names:
            if name == ".milvus.db.lock":  # holds no data; closing any handle on it drops the engine's POSIX lock
                continue
            path = Path(root) / name
            content = path.read_bytes()
            for needle in needles:
                if needle.encode() in content:
                    found[needle].append(str(path.relative_to(data_dir)))
    return found


def test_delete_all_leaves_nothing_of_the_user_in_any_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret, kept = f"zq{secrets.token_hex(6)}", f"kp{secrets.token_hex(6)}"
    erased_user, kept_user = f"erase-me-{secrets.token_hex(4)}", "keeper"
    model = reading_model()
    with open_memory(data, model) as mem:  # rows that end up sealed in segment files, history, graph
        diary = [{"role": "user", "content": f"Diary {n}: the code word is {secret}"} for n in range(70)]
        mem.add(diary, user_id=erased_user, infer=False, metadata={"s": secret})  # more than a flush batch
        model.push(answer([add_op(f"Friend {secret} plays the oboe", (f"{secret}", "plays", "oboe"),
                                  ("USER", "friend_of", f"{secret}"))], {secret: "person", "oboe": "instrument"}),
                   answer([add_op(f"Owns a boat named {kept}", ("USER", "owns", f"{kept}"))], {kept: "vehicle"}))
        boat = mem.add(f"My friend {secret} plays the oboe", user_id=erased_user)["results"][0]["id"]
        mem.update(boat, f"Friend {secret} plays the oboe and the flute")
        mem.add(f"I own a boat called {kept}", user_id=kept_user)
        mem.add(f"Keeper note {kept}", user_id=kept_user, infer=False)
    with open_memory(data, model) as mem:  # and rows still in the write-ahead logs when the erasure comes
        gone = mem.add(f"Fresh note {secret}", user_id=erased_user, infer=False)["results"][0]["id"]
        mem.delete(gone)
        mem.add(f"Late note {secret}", user_id=erased_user, infer=False)
        before = files_holding(data, secret, erased_user, kept)
        assert before[secret] and before[erased_user], "the scan sees the user's data before the erasure"
        assert any(f.startswith("milvus.db") for f in before[secret])
        assert any(f.startswith("graph.kuzu") for f in before[secret])
        assert any(f.startswith("history.sqlite") for f in before[secret])

        assert mem.delete_all(user_id=erased_user)["deleted"] == 72
        while_open = files_holding(data, secret, erased_user, kept)
        assert while_open[secret] == [] and while_open[erased_user] == [], while_open
        assert mem.get_all(user_id=erased_user) == {"results": [], "relations": []}
        kept_now = mem.get_all(user_id=kept_user)
        assert sorted(r["memory"] for r in kept_now["results"]) == sorted([f"Owns a boat named {kept}",
                                                                           f"Keeper note {kept}"])
        assert [(r["source"], r["destination"]) for r in kept_now["relations"]] == [(kept_user, kept)]
        assert check_consistency(mem, [erased_user, kept_user]) == []
    after = files_holding(data, secret, erased_user, kept)
    assert after[secret] == [] and after[erased_user] == [], after
    assert any(f.startswith("milvus.db") for f in after[kept]), "the other user's data is still on disk"
    with open_memory(data) as mem:
        mem.add("Starting over", user_id=erased_user, infer=False)
        assert [r["memory"] for r in mem.get_all(user_id=erased_user)["results"]] == ["Starting over"]
        assert len(mem.get_all(user_id=kept_user)["results"]) == 2
        assert check_consistency(mem, [erased_user, kept_user]) == []


def chat(tmp_path: Path, user: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """`python -m agent` offline (no model), on the data directory in `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
    env.update(MEMORY_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "agent", "--user", user], input=stdin, text=True,
                            capture_output=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def test_forget_all_in_the_chat_leaves_nothing_of_the_user_in_any_file(tmp_path: Path) -> None:
    secret, kept = f"zq{secrets.token_hex(6)}", f"kp{secrets.token_hex(6)}"
    user = f"carol-{secrets.token_hex(4)}"
    with open_memory(tmp_path / "data") as mem:
        mem.add(f"My boat is called {kept}.", user_id="dave", infer=False)
    chat(tmp_path, user, f"My locker code is {secret}.\nMy cat is called {secret}cat.\n")
    assert files_holding(tmp_path / "data", secret)[secret], "the scan sees the data before the erasure"
    forgot = chat(tmp_path, user, "/forget all\ny\n/memories\n")
    assert "Forgot everything (2 memories" in forgot.stdout
    assert "I don't remember anything about you yet." in forgot.stdout
    after = files_holding(tmp_path / "data", secret, user, kept)
    assert after[secret] == [] and after[user] == [], after
    assert after[kept], "the other user's data is untouched"
    with open_memory(tmp_path / "data") as mem:
        assert [r["memory"] for r in mem.get_all(user_id="dave")["results"]] == [f"My boat is called {kept}."]
        assert check_consistency(mem, [user, "dave"]) == []
