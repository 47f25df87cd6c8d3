"""LOCOMO turn-level evidence recall of the memory layer (no LLM at search time).

Usage, from the repository root::

    python -m benchmarks.locomo_recall --data ../shared/data/locomo/locomo_dev.json [--conversations N] [--json]
    python -m benchmarks.locomo_recall --data PATH --infer      # facts extracted by the configured LLM

The data is LOCOMO's JSON (Maharana et al., ACL 2024; shape in `../shared/data/locomo/README.md`).

What is done: each conversation gets a fresh user id in one `Memory` whose stores live in a temporary
directory (removed at the end). The configuration is the one `Memory()` builds from the environment
(`MemoryConfig.from_env()`: local embedder unless `EMBEDDER=openai`, LLM from `OPENAI_API_KEY`), except that
Milvus Lite, Kuzu and the history database are forced into the temporary directory. Every turn is added with
its own `add(..., infer=False)` call (the API keeps one metadata dict per call): text
`"<speaker>: <text>"` plus `" [shares a photo: <blip_caption>]"` when the turn shares an image, metadata
`{"dia_id", "speaker", "session"}`, and the session's date ("1:56 pm on 8 May, 2023", read as UTC) as
`timestamp`.

The metric: every question of categories 1-4 (4 = single-hop, 1 = multi-hop, 2 = temporal, 3 = open-domain;
5 = adversarial is skipped) is searched with `search(question, user_id=..., limit=20)`. Its evidence is the set
of its `evidence` ids that match `^D\\d+:\\d+$` (malformed ids such as "D8:6; D9:17" are skipped, and so are
questions left with no evidence). R@k is the fraction of a question's evidence turns whose `dia_id` is among
the top k results, averaged over questions, reported as a percentage overall and per category. Search latency
is the wall time of each `search` call (p50/p95 in ms); ingest speed is turns added per second.

`--infer`: each session is added in chunks of up to 20 turns through `add(infer=True)`, so the configured LLM
extracts facts. Limitation: the memory layer keeps no link from an extracted fact to the turns it came from
(no `source_turns` metadata), so each turn is shown to the model as "[D3:7] Caroline: ..." with a note asking
it to end every memory with the ids of its source turns, and a memory counts as evidence only for the ids the
model actually copied into its text. A model that drops the ids scores zero: the figures are a lower bound.
Without a configured model `--infer` stops with "--infer needs a configured model (OPENAI_API_KEY)".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.language_models import BaseChatModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memory import Memory
from memory.config import MemoryConfig

CATEGORIES: dict[int, str] = {4: "single-hop", 1: "multi-hop", 2: "temporal", 3: "open-domain"}
KS = (1, 5, 10, 20)
SEARCH_LIMIT = 20
DIA_ID = re.compile(r"^D\d+:\d+$")
DIA_TOKEN = re.compile(r"\bD\d+:\d+\b")
SESSION_KEY = re.compile(r"^session_(\d+)$")
DATE_FORMAT = "%I:%M %p on %d %B, %Y"
INFER_CHUNK_TURNS = 20
INFER_NOTE = ("Each line of this conversation starts with its turn id in brackets, e.g. [D3:7]. "
              "End every memory you write with the ids of the turns it comes from, e.g. \"... [D3:7]\".")
NO_MODEL = "--infer needs a configured model (OPENAI_API_KEY)"


class BenchmarkError(Exception):
    """A problem with the input or the setup, reported as one line."""


@dataclass
class Turn:
    """One LOCOMO turn, as stored in memory."""

    dia_id: str
    speaker: str
    text: str  # "<speaker>: <text>" plus the shared photo's caption
    session: int
    when: datetime


@dataclass
class Question:
    """A question of categories 1-4 with its well-formed evidence ids."""

    text: str
    category: int
    evidence: list[str]


@dataclass
class Conversation:
    """One LOCOMO sample: its sessions' turns (in order) and its scored questions."""

    sample_id: str
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def parse_date(text: str) -> datetime:
    """A LOCOMO session date such as "1:56 pm on 8 May, 2023" (naive; the memory layer reads it as UTC)."""
    return datetime.strptime(" ".join(text.split()), DATE_FORMAT)


def turn_text(turn: dict[str, Any]) -> str:
    """A raw turn as "<speaker>: <text>" plus " [shares a photo: <caption>]" when it shares an image."""
    text = f"{turn['speaker']}: {turn.get('text') or ''}".strip()
    caption = (turn.get("blip_caption") or "").strip()
    return f"{text} [shares a photo: {caption}]" if caption else text


def load_conversations(path: Path, limit: int | None = None) -> list[Conversation]:
    """Read a LOCOMO JSON file (the first `limit` conversations)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BenchmarkError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise BenchmarkError(f"{path} must hold a JSON list of LOCOMO conversations")
    conversations = []
    for index, sample in enumerate(data[:limit] if limit is not None else data):
        try:
            conversations.append(_conversation(sample, index))
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchmarkError(f"conversation {index} of {path} is not LOCOMO-shaped: {exc!r}") from None
    return conversations


def _conversation(sample: dict[str, Any], index: int) -> Conversation:
    body = sample["conversation"]
    out = Conversation(sample_id=str(sample.get("sample_id") or f"conv-{index}"))
    sessions = sorted((int(m.group(1)), key) for key in body if (m := SESSION_KEY.match(key)))
    for number, key in sessions:
        when = parse_date(body[f"{key}_date_time"])
        for turn in body[key] or []:
            out.turns.append(Turn(dia_id=str(turn["dia_id"]), speaker=str(turn["speaker"]), text=turn_text(turn),
                                  session=number, when=when))
    for qa in sample.get("qa") or []:
        category = int(qa.get("category", 0))
        evidence = list(dict.fromkeys(e.strip() for e in qa.get("evidence") or []
                                      if isinstance(e, str) and DIA_ID.match(e.strip())))
        if category in CATEGORIES and evidence:
            out.questions.append(Question(text=str(qa["question"]), category=category, evidence=evidence))
    return out


def benchmark_config(data_dir: Path, env: dict[str, str] | None = None) -> MemoryConfig:
    """The default configuration (`MemoryConfig.from_env`) with every store inside `data_dir`."""
    config = MemoryConfig.from_env(env)
    config.data_dir = str(data_dir)
    config.vector_store.url = None
    config.vector_store.token = None
    config.graph_store.db = None
    config.history_db_path = None
    return config


def recall_at(ranked: list[set[str]], evidence: list[str], k: int) -> float:
    """Fraction of the evidence ids among the first k results (each result maps to a set of turn ids)."""
    found = set().union(*ranked[:k]) if ranked else set()
    return sum(e in found for e in evidence) / len(evidence)


def result_turns(result: dict[str, Any], infer: bool) -> set[str]:
    """The turn ids a search result stands for: its `dia_id` (verbatim) or the ids copied into a fact's text."""
    if infer:
        return set(DIA_TOKEN.findall(result.get("memory") or ""))
    dia_id = (result.get("metadata") or {}).get("dia_id")
    return {dia_id} if isinstance(dia_id, str) else set()


def _chunks(turns: list[Turn], size: int) -> Iterator[list[Turn]]:
    session: list[Turn] = []
    for turn in turns:
        if session and (turn.session != session[0].session or len(session) >= size):
            yield session
            session = []
        session.append(turn)
    if session:
        yield session


def _ingest(memory: Memory, user_id: str, conversation: Conversation, infer: bool, advance: Any) -> None:
    if not infer:
        for turn in conversation.turns:
            memory.add({"role": "user", "content": turn.text}, user_id=user_id, infer=False,
                       metadata={"dia_id": turn.dia_id, "speaker": turn.speaker, "session": turn.session},
                       timestamp=turn.when)
            advance(1)
        return
    for chunk in _chunks(conversation.turns, INFER_CHUNK_TURNS):
        messages = [{"role": "system", "content": INFER_NOTE}]
        messages += [{"role": "user", "content": f"[{t.dia_id}] {t.text}"} for t in chunk]
        memory.add(messages, user_id=user_id, infer=True, metadata={"session": chunk[0].session},
                   timestamp=chunk[0].when)
        advance(len(chunk))


def run(conversations: list[Conversation], *, infer: bool = False, config: MemoryConfig | None = None,
        llm: BaseChatModel | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Ingest every conversation into a fresh Memory in a temporary directory, search every question, and
    return the report (see `summarise`). `config` defaults to `benchmark_config` of the temporary directory."""
    total_turns = sum(len(c.turns) for c in conversations)
    total_questions = sum(len(c.questions) for c in conversations)
    rows: list[tuple[int, dict[int, float]]] = []
    latencies: list[float] = []
    ingest_seconds = 0.0
    memories = 0
    with tempfile.TemporaryDirectory(prefix="locomo-recall-") as tmp:
        cfg = config or benchmark_config(Path(tmp) / "data")
        if infer and llm is None and cfg.llm is None:
            raise BenchmarkError(NO_MODEL)
        memory = Memory(cfg, llm=llm)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), disable=not show_progress, transient=True)
        try:
            with progress:
                ingest_task = progress.add_task("ingest", total=total_turns)
                search_task = progress.add_task("search", total=total_questions)
                for conversation in conversations:
                    user_id = f"locomo-{conversation.sample_id}-{uuid.uuid4().hex[:8]}"
                    progress.update(ingest_task, description=f"ingest {conversation.sample_id}")
                    start = time.perf_counter()
                    _ingest(memory, user_id, conversation, infer,
                            lambda n: progress.advance(ingest_task, n))
                    ingest_seconds += time.perf_counter() - start
                    memories += len(memory.get_all(user_id=user_id, limit=1_000_000)["results"])
                    progress.update(search_task, description=f"search {conversation.sample_id}")
                    for question in conversation.questions:
                        start = time.perf_counter()
                        found = memory.search(question.text, user_id=user_id, limit=SEARCH_LIMIT)
                        latencies.append((time.perf_counter() - start) * 1000)
                        ranked = [result_turns(r, infer) for r in found["results"]]
                        rows.append((question.category, {k: recall_at(ranked, question.evidence, k) for k in KS}))
                        progress.advance(search_task)
        finally:
            memory.close()
    report = summarise(rows, latencies, total_turns, ingest_seconds)
    embedder = cfg.embedder
    report.update(conversations=len(conversations), turns=total_turns, memories=memories, infer=infer,
                  embedder=f"{embedder.provider}/{embedder.model}")
    return report


def _recalls(rows: list[tuple[int, dict[int, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in KS:
        out[f"R@{k}"] = round(100 * float(np.mean([r[k] for _, r in rows])), 1) if rows else 0.0
    return out


def summarise(rows: list[tuple[int, dict[int, float]]], latencies: list[float], turns: int,
              ingest_seconds: float) -> dict[str, Any]:
    """The report: n, R@1/5/10/20 (percent), latency p50/p95 (ms), ingest turns/s, and per-category recall."""
    report = _recalls(rows)
    report["search_ms_p50"] = round(float(np.percentile(latencies, 50)), 1) if latencies else 0.0
    report["search_ms_p95"] = round(float(np.percentile(latencies, 95)), 1) if latencies else 0.0
    report["ingest_turns_per_s"] = round(turns / ingest_seconds, 1) if ingest_seconds > 0 else 0.0
    report["per_category"] = {name: _recalls([row for row in rows if row[0] == number])
                              for number, name in CATEGORIES.items()}
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    mode = "infer=True, LLM facts" if report.get("infer") else "infer=False, one memory per turn"
    table = Table(title="LOCOMO evidence recall (%), categories 1-4")
    table.add_column("category")
    for column in ("n", *(f"R@{k}" for k in KS)):
        table.add_column(column, justify="right")
    for name, values in [*report["per_category"].items(), ("overall", report)]:
        table.add_row(name, str(values["n"]), *(f"{values[f'R@{k}']:.1f}" for k in KS),
                      style="bold" if name == "overall" else None)
    console.print(table)
    console.print(f"{mode}; embedder {report.get('embedder')}; {report.get('conversations', '?')} conversations, "
                  f"{report.get('turns', '?')} turns, {report.get('memories', '?')} memories")
    console.print(f"search p50 {report['search_ms_p50']:.1f} ms, p95 {report['search_ms_p95']:.1f} ms; "
                  f"ingest {report['ingest_turns_per_s']:.1f} turns/s")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.locomo_recall",
                                     description="LOCOMO turn-level evidence recall of the memory layer.")
    parser.add_argument("--data", required=True, type=Path, help="a LOCOMO JSON file (e.g. locomo_dev.json)")
    parser.add_argument("--conversations", type=int, default=None, metavar="N", help="only the first N")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    parser.add_argument("--infer", action="store_true", help="add through the configured LLM (infer=True)")
    args = parser.parse_args(argv)
    if args.conversations is not None and args.conversations < 1:
        parser.error("--conversations must be at least 1")
    try:
        conversations = load_conversations(args.data, args.conversations)
        if args.infer and MemoryConfig.from_env().llm is None:
            raise BenchmarkError(NO_MODEL)
        # Whatever a library prints must not corrupt the JSON on stdout.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            report = run(conversations, infer=args.infer, show_progress=sys.stderr.isatty())
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        render(report, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
