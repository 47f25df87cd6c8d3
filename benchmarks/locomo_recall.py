"""LOCOMO turn-level evidence recall of the memory layer, and (with a model) LLM-judged answer accuracy.

Usage, from the repository root::

    python -m benchmarks.locomo_recall --data ../shared/data/locomo/locomo_dev.json [--conversations N] [--json]
    python -m benchmarks.locomo_recall --data PATH --infer      # facts extracted by the configured LLM, + judge
    python -m benchmarks.locomo_recall --data PATH --answer     # one memory per turn, + answer and judge

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
questions left with no evidence). A result stands for the turns in its `metadata["source_ids"]` (inferred
memories) and its `metadata["dia_id"]` (verbatim turns). R@k is the fraction of a question's evidence turns
that the top k results stand for, averaged over questions, reported as a percentage overall and per category.
Search latency is the wall time of each `search` call (p50/p95 in ms); ingest speed is turns added per second.

`memory_context_tokens` (always reported): the size of the memory context an answering model would get for a
question, i.e. the top 10 results as "[<date>] <text>" lines (`prompts.judge.memory_context`); mean and p95
over questions. Tokens are approximated as ceil(characters / 4), OpenAI's rule of thumb for English text
(tiktoken's encodings are not available offline); it undercounts Chinese text, which LOCOMO does not have.

`--infer`: each session is added in chunks of up to 20 turns through `add(infer=True)`, each turn a message
`{"role": "user", "content": "<speaker>: <text>", "id": <dia_id>}` (plus the photo caption as above), with
metadata `{"session"}` and the session's date. The extraction prompt shows the messages numbered, the model
names each memory's source messages, and the memory layer stores their ids in `metadata["source_ids"]`, which
is what recall is measured on. A chunk whose extraction answer is invalid twice is skipped and counted
(`extraction_failures`). Without a configured model `--infer` stops with
"--infer needs a configured model (OPENAI_API_KEY)".

Answer accuracy (`--infer`, or `--answer` for the one-memory-per-turn path; both need a configured model):
each question is also answered by the configured LLM from its memory context (`prompts/answer.md`), and the
answer is graded against LOCOMO's gold `answer` by the same LLM as a judge (`prompts/judge.md`, CORRECT or
WRONG as in the Mem0 paper, Chhikara et al. 2025; a lenient judge: same fact or same date in any format).
`judge_accuracy` is the percentage judged CORRECT, overall and per category; an answer or verdict invalid twice
counts as WRONG (`judge_errors`). That is two more LLM calls per question. The search call and its latency
are the same with or without answering.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
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
from memory.errors import ExtractionError, MemoryLayerError
from memory.llm import ask_structured
from prompts import judge

CATEGORIES: dict[int, str] = {4: "single-hop", 1: "multi-hop", 2: "temporal", 3: "open-domain"}
KS = (1, 5, 10, 20)
SEARCH_LIMIT = 20
CONTEXT_MEMORIES = 10
DIA_ID = re.compile(r"^D\d+:\d+$")
SESSION_KEY = re.compile(r"^session_(\d+)$")
DATE_FORMAT = "%I:%M %p on %d %B, %Y"
INFER_CHUNK_TURNS = 20
CHARS_PER_TOKEN = 4
TOKEN_COUNT = "approx: ceil(characters / 4)"
NO_MODEL = "--infer needs a configured model (OPENAI_API_KEY)"
NO_ANSWER_MODEL = "--answer needs a configured model (OPENAI_API_KEY)"


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
    """A question of categories 1-4 with its well-formed evidence ids and its gold answer ("" if none)."""

    text: str
    category: int
    evidence: list[str]
    answer: str = ""


@dataclass
class Conversation:
    """One LOCOMO sample: its sessions' turns (in order) and its scored questions."""

    sample_id: str
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


@dataclass
class Row:
    """What one question scored: recall at each k, the size of its memory context, and (when answered) whether
    the judge found the answer correct and whether answering or judging failed."""

    category: int
    recall: dict[int, float]
    context_tokens: int = 0
    correct: bool | None = None  # None: not answered
    judge_error: bool = False


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
        gold = qa.get("answer")
        if category in CATEGORIES and evidence:
            out.questions.append(Question(text=str(qa["question"]), category=category, evidence=evidence,
                                          answer="" if gold is None else str(gold).strip()))
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


def result_turns(result: dict[str, Any]) -> set[str]:
    """The turn ids a search result stands for: the source ids of an inferred memory (`metadata["source_ids"]`,
    as `add(infer=True)` stores them) and the `dia_id` of a verbatim turn."""
    metadata = result.get("metadata") or {}
    sources = metadata.get("source_ids")
    turns = {s for s in sources if isinstance(s, str)} if isinstance(sources, list) else set()
    if isinstance(metadata.get("dia_id"), str):
        turns.add(metadata["dia_id"])
    return turns


def approx_tokens(text: str) -> int:
    """A token count without a tokenizer: ceil(characters / 4), OpenAI's rule of thumb for English text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def memory_date(result: dict[str, Any]) -> str:
    """The date a memory's conversation took place ("8 May 2023"), from its `event_time`."""
    try:
        moment = datetime.fromisoformat(str(result.get("event_time")))
    except ValueError:
        return "unknown date"
    return f"{moment.day} {moment:%B %Y}"


def context_of(results: list[dict[str, Any]]) -> str:
    """The memory context of a question: its top `CONTEXT_MEMORIES` results as "[<date>] <text>" lines."""
    top = results[:CONTEXT_MEMORIES]
    return judge.memory_context((memory_date(r), r.get("memory") or "") for r in top) if top else ""


def answer_and_judge(llm: BaseChatModel, question: Question, context: str) -> tuple[bool, bool]:
    """Answer a question from its memory context, then have the judge grade it against the gold answer.

    Returns (correct, failed): an answer or verdict that was invalid twice counts as not correct and failed.
    An unreachable model (`LLMError`) is raised: the run cannot go on without it."""
    try:
        answer = ask_structured(llm, judge.answer_prompt(context or "(none)"), judge.answer_request(question.text),
                                judge.parse_answer)
        verdict = ask_structured(llm, judge.judge_prompt(), judge.judge_request(question.text, question.answer, answer),
                                 judge.parse_verdict)
    except ExtractionError:
        return False, True
    return verdict.correct, False


def _chunks(turns: list[Turn], size: int) -> Iterator[list[Turn]]:
    session: list[Turn] = []
    for turn in turns:
        if session and (turn.session != session[0].session or len(session) >= size):
            yield session
            session = []
        session.append(turn)
    if session:
        yield session


def _ingest(memory: Memory, user_id: str, conversation: Conversation, infer: bool,
            advance: Callable[[int], Any]) -> int:
    """Add a conversation's turns; return how many infer chunks were skipped (extraction invalid twice)."""
    if not infer:
        for turn in conversation.turns:
            memory.add({"role": "user", "content": turn.text}, user_id=user_id, infer=False,
                       metadata={"dia_id": turn.dia_id, "speaker": turn.speaker, "session": turn.session},
                       timestamp=turn.when)
            advance(1)
        return 0
    failures = 0
    for chunk in _chunks(conversation.turns, INFER_CHUNK_TURNS):
        messages = [{"role": "user", "content": t.text, "id": t.dia_id} for t in chunk]
        try:
            memory.add(messages, user_id=user_id, infer=True, metadata={"session": chunk[0].session},
                       timestamp=chunk[0].when)
        except ExtractionError:
            failures += 1
        advance(len(chunk))
    return failures


def run(conversations: list[Conversation], *, infer: bool = False, answer: bool | None = None,
        config: MemoryConfig | None = None, llm: BaseChatModel | None = None,
        answer_llm: BaseChatModel | None = None, show_progress: bool = False) -> dict[str, Any]:
    """Ingest every conversation into a fresh Memory in a temporary directory, search every question, and
    return the report (see `summarise`). `config` defaults to `benchmark_config` of the temporary directory.

    `answer` (default: `infer`) also answers and judges every question, with `answer_llm` (default: the
    Memory's model, i.e. `llm` or the configured one)."""
    answering = infer if answer is None else answer
    total_turns = sum(len(c.turns) for c in conversations)
    total_questions = sum(len(c.questions) for c in conversations)
    rows: list[Row] = []
    latencies: list[float] = []
    ingest_seconds = 0.0
    memories = 0
    extraction_failures = 0
    with tempfile.TemporaryDirectory(prefix="locomo-recall-") as tmp:
        cfg = config or benchmark_config(Path(tmp) / "data")
        has_model = llm is not None or cfg.llm is not None
        if infer and not has_model:
            raise BenchmarkError(NO_MODEL)
        if answering and not (has_model or answer_llm is not None):
            raise BenchmarkError(NO_ANSWER_MODEL)
        memory = Memory(cfg, llm=llm)
        grader = answer_llm or memory.llm
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
                    extraction_failures += _ingest(memory, user_id, conversation, infer,
                                                   lambda n: progress.advance(ingest_task, n))
                    ingest_seconds += time.perf_counter() - start
                    memories += len(memory.get_all(user_id=user_id, limit=1_000_000)["results"])
                    progress.update(search_task, description=f"search {conversation.sample_id}")
                    for question in conversation.questions:
                        start = time.perf_counter()
                        found = memory.search(question.text, user_id=user_id, limit=SEARCH_LIMIT)["results"]
                        latencies.append((time.perf_counter() - start) * 1000)
                        ranked = [result_turns(r) for r in found]
                        context = context_of(found)
                        row = Row(question.category, {k: recall_at(ranked, question.evidence, k) for k in KS},
                                  context_tokens=approx_tokens(context))
                        if answering and grader is not None and question.answer:
                            row.correct, row.judge_error = answer_and_judge(grader, question, context)
                        rows.append(row)
                        progress.advance(search_task)
        finally:
            memory.close()
    report = summarise(rows, latencies, total_turns, ingest_seconds)
    embedder = cfg.embedder
    report.update(conversations=len(conversations), turns=total_turns, memories=memories, infer=infer,
                  answer=answering, embedder=f"{embedder.provider}/{embedder.model}")
    if infer:
        report["extraction_failures"] = extraction_failures
    return report


def _percent(values: list[float]) -> float:
    return round(100 * float(np.mean(values)), 1) if values else 0.0


def _scores(rows: list[Row]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in KS:
        out[f"R@{k}"] = _percent([r.recall[k] for r in rows])
    judged = [r for r in rows if r.correct is not None]
    if judged:
        out["judge_accuracy"] = _percent([float(bool(r.correct)) for r in judged])
    return out


def summarise(rows: list[Row], latencies: list[float], turns: int, ingest_seconds: float) -> dict[str, Any]:
    """The report: n, R@1/5/10/20 (percent), latency p50/p95 (ms), ingest turns/s, memory context tokens
    (mean, p95), per-category scores, and, when questions were answered, `judge_accuracy` (percent judged
    CORRECT, overall and per category), `judged` (answered questions) and `judge_errors`."""
    report = _scores(rows)
    report["search_ms_p50"] = round(float(np.percentile(latencies, 50)), 1) if latencies else 0.0
    report["search_ms_p95"] = round(float(np.percentile(latencies, 95)), 1) if latencies else 0.0
    report["ingest_turns_per_s"] = round(turns / ingest_seconds, 1) if ingest_seconds > 0 else 0.0
    tokens = [r.context_tokens for r in rows]
    report["memory_context_tokens"] = {
        "mean": round(float(np.mean(tokens)), 1) if tokens else 0.0,
        "p95": round(float(np.percentile(tokens, 95)), 1) if tokens else 0.0,
        "memories": CONTEXT_MEMORIES, "count": TOKEN_COUNT}
    judged = [r for r in rows if r.correct is not None]
    if judged:
        report["judged"] = len(judged)
        report["judge_errors"] = sum(r.judge_error for r in judged)
    report["per_category"] = {name: _scores([row for row in rows if row.category == number])
                              for number, name in CATEGORIES.items()}
    if judged:  # a category without answered questions still reports its accuracy, as 0.0 of n = 0
        for values in report["per_category"].values():
            values.setdefault("judge_accuracy", 0.0)
    return report


def render(report: dict[str, Any], console: Console) -> None:
    """Print the report as a table."""
    mode = "infer=True, LLM facts" if report.get("infer") else "infer=False, one memory per turn"
    judged = "judge_accuracy" in report
    table = Table(title="LOCOMO evidence recall (%)" + (" and judge accuracy J (%)" if judged else "")
                  + ", categories 1-4")
    table.add_column("category")
    columns = ("n", *(f"R@{k}" for k in KS), *(("J",) if judged else ()))
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in [*report["per_category"].items(), ("overall", report)]:
        cells = [str(values["n"]), *(f"{values[f'R@{k}']:.1f}" for k in KS)]
        if judged:
            cells.append(f"{values.get('judge_accuracy', 0.0):.1f}")
        table.add_row(name, *cells, style="bold" if name == "overall" else None)
    console.print(table)
    console.print(f"{mode}; embedder {report.get('embedder')}; {report.get('conversations', '?')} conversations, "
                  f"{report.get('turns', '?')} turns, {report.get('memories', '?')} memories"
                  + (f", {report['extraction_failures']} chunks skipped (extraction invalid twice)"
                     if report.get("extraction_failures") else ""))
    console.print(f"search p50 {report['search_ms_p50']:.1f} ms, p95 {report['search_ms_p95']:.1f} ms; "
                  f"ingest {report['ingest_turns_per_s']:.1f} turns/s")
    tokens = report["memory_context_tokens"]
    console.print(f"memory context (top {tokens['memories']}): mean {tokens['mean']:.1f} tokens, "
                  f"p95 {tokens['p95']:.1f} ({tokens['count']})")
    if judged:
        console.print(f"judge: {report['judged']} answers graded by the LLM judge, {report['judge_errors']} "
                      "invalid twice (counted WRONG)")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.locomo_recall",
                                     description="LOCOMO turn-level evidence recall of the memory layer.")
    parser.add_argument("--data", required=True, type=Path, help="a LOCOMO JSON file (e.g. locomo_dev.json)")
    parser.add_argument("--conversations", type=int, default=None, metavar="N", help="only the first N")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    parser.add_argument("--infer", action="store_true",
                        help="add through the configured LLM (infer=True), then answer and judge every question")
    parser.add_argument("--answer", action="store_true",
                        help="answer every question from its top 10 memories and grade it with the configured LLM "
                             "as a judge (implied by --infer)")
    args = parser.parse_args(argv)
    if args.conversations is not None and args.conversations < 1:
        parser.error("--conversations must be at least 1")
    try:
        conversations = load_conversations(args.data, args.conversations)
        if (args.infer or args.answer) and MemoryConfig.from_env().llm is None:
            raise BenchmarkError(NO_MODEL if args.infer else NO_ANSWER_MODEL)
        # Whatever a library prints must not corrupt the JSON on stdout.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            report = run(conversations, infer=args.infer, answer=args.infer or args.answer,
                         show_progress=sys.stderr.isatty())
    except (BenchmarkError, MemoryLayerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        render(report, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
