"""The LOCOMO recall benchmark, end to end on a small synthetic LOCOMO-shaped file: recall of verbatim turns,
recall of inferred facts through their `source_ids`, and answers graded by an LLM judge (scripted models whose
text goes through the real parsers; FakeOpenAI over HTTP for the command line)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptedModel, scripted
from fake_openai import FakeOpenAI

from benchmarks import locomo_recall
from benchmarks.locomo_recall import NO_ANSWER_MODEL, NO_MODEL, BenchmarkError, benchmark_config, run

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV_DROP = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "EMBEDDER", "MILVUS_URI", "MILVUS_TOKEN", "MEMORY_DATA_DIR")

SAMPLE: list[dict[str, Any]] = [{
    "sample_id": "conv-test",
    "conversation": {
        "speaker_a": "Caroline",
        "speaker_b": "Melanie",
        "session_1_date_time": "1:56 pm on 8 May, 2023",
        "session_1": [
            {"speaker": "Caroline", "dia_id": "D1:1", "text": "Hey Mel! Good to see you! How have you been?"},
            {"speaker": "Melanie", "dia_id": "D1:2", "text": "Busy with the kids and work. What's new?"},
            {"speaker": "Caroline", "dia_id": "D1:3",
             "text": "I adopted a golden retriever puppy and named him Biscuit."},
            {"speaker": "Melanie", "dia_id": "D1:4", "text": "Aww, that is lovely, congratulations!"},
            {"speaker": "Caroline", "dia_id": "D1:5", "text": "Thanks! Talk soon.",
             "img_url": ["http://example.invalid/x.jpg"], "blip_caption": "a photo of a violin on a wooden table",
             "query": "violin"},
        ],
        "session_2_date_time": "10:37 am on 27 June, 2023",
        "session_2": [
            {"speaker": "Melanie", "dia_id": "D2:1", "text": "Hi Caroline, long time no see!"},
            {"speaker": "Caroline", "dia_id": "D2:2", "text": "I just moved to Lisbon for a new nursing job."},
            {"speaker": "Melanie", "dia_id": "D2:3", "text": "I ran my first marathon in Boston last week."},
            {"speaker": "Caroline", "dia_id": "D2:4", "text": "Wow, a marathon! I am so proud of you."},
            {"speaker": "Melanie", "dia_id": "D2:5", "text": "Thanks, see you soon."},
        ],
    },
    "qa": [
        {"question": "What did Caroline name her golden retriever puppy?", "answer": "Biscuit",
         "evidence": ["D1:3"], "category": 4},
        {"question": "Which city did Caroline move to for her nursing job?", "answer": "Lisbon",
         "evidence": ["D2:2"], "category": 1},
        {"question": "When did Melanie run the Boston marathon?", "answer": "June 2023",
         "evidence": ["D2:3"], "category": 2},
        {"question": "What instrument is on the wooden table in Caroline's photo?", "answer": "violin",
         "evidence": ["D1:5", "D:1:9"], "category": 3},
        {"question": "What did Melanie name her cat?", "adversarial_answer": "Biscuit",
         "evidence": ["D1:3"], "category": 5},
    ],
}]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in CLEAN_ENV_DROP}


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "locomo_small.json"
    path.write_text(json.dumps(SAMPLE), encoding="utf-8")
    return path


def test_command_prints_one_json_report(tmp_path: Path) -> None:
    data = _write(tmp_path)
    done = subprocess.run([sys.executable, "-m", "benchmarks.locomo_recall", "--data", str(data), "--json"],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("n", "R@1", "R@5", "R@10", "R@20", "search_ms_p50", "search_ms_p95", "ingest_turns_per_s",
                "per_category"):
        assert key in report
    assert report["n"] == 4  # categories 1-4 only; the adversarial question is not scored
    assert set(report["per_category"]) == {"single-hop", "multi-hop", "temporal", "open-domain"}
    assert report["per_category"]["single-hop"]["n"] == 1
    assert report["R@20"] == 100.0  # ten turns: everything is within the top 20
    assert report["R@5"] == 100.0  # each question names its turn's distinctive words
    assert report["per_category"]["single-hop"]["R@1"] == 100.0  # the puppy question finds its turn first
    assert report["search_ms_p95"] > 0 and report["ingest_turns_per_s"] > 0
    assert report["turns"] == 10 and report["memories"] == 10
    assert report["memory_context_tokens"]["mean"] > 0 and report["memory_context_tokens"]["p95"] > 0
    assert "judge_accuracy" not in report and report["answer"] is False  # no model: recall only


def test_infer_without_a_model_fails_in_one_line(tmp_path: Path) -> None:
    data = _write(tmp_path)
    done = subprocess.run([sys.executable, "-m", "benchmarks.locomo_recall", "--data", str(data), "--infer"],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == f"error: {NO_MODEL}"


def test_turn_text_and_loading(tmp_path: Path) -> None:
    conversation = locomo_recall.load_conversations(_write(tmp_path))[0]
    assert [t.dia_id for t in conversation.turns][:2] == ["D1:1", "D1:2"]
    assert conversation.turns[4].text == ("Caroline: Thanks! Talk soon. "
                                          "[shares a photo: a photo of a violin on a wooden table]")
    assert conversation.turns[5].when.isoformat() == "2023-06-27T10:37:00"
    assert conversation.questions[3].evidence == ["D1:5"]  # the malformed id is skipped
    assert locomo_recall.turn_text({"speaker": "A", "text": "hi"}) == "A: hi"
    assert [q.answer for q in conversation.questions] == ["Biscuit", "Lisbon", "June 2023", "violin"]


def extraction(*memories: tuple[str, list[int] | None]) -> str:
    """An extraction answer adding these (text, sources) memories; None leaves `sources` out."""
    return json.dumps({"memories": [{"event": "ADD", "text": text, **({"sources": src} if src is not None else {})}
                                    for text, src in memories]})


EXTRACTIONS = (
    extraction(("Caroline adopted a golden retriever puppy named Biscuit", [3, 9]),  # 9: no such message
               ("Caroline has a violin", None)),  # no sources: maps to no turn
    extraction(("Caroline moved to Lisbon for a nursing job", [2]),
               ("Melanie ran the Boston marathon in June 2023", [3, 4])),
)
FACT_LINES = ["[8 May 2023] Caroline adopted a golden retriever puppy named Biscuit",
              "[8 May 2023] Caroline has a violin",
              "[27 June 2023] Caroline moved to Lisbon for a nursing job",
              "[27 June 2023] Melanie ran the Boston marathon in June 2023"]


def verdict(label: str) -> str:
    """A judge's answer."""
    return json.dumps({"reasoning": "Compared with the gold answer.", "label": label})


def grading_script() -> ScriptedModel:
    """Answers and verdicts for the four scored questions, in order: puppy, Lisbon, marathon, violin."""
    return scripted("Biscuit", verdict("CORRECT"),
                    "Answer: Lisbon", verdict("correct"),
                    "last week", verdict("WRONG"),
                    "a violin", "I think it is right.", "Still prose.")  # the last verdict is invalid twice


def user_text(model: ScriptedModel, call: int) -> str:
    """The last (human) message of one call."""
    return str(model.calls[call][-1].content)


def test_infer_maps_evidence_through_source_ids_and_judges_answers(tmp_path: Path) -> None:
    conversations = locomo_recall.load_conversations(_write(tmp_path))
    model, grader = scripted(*EXTRACTIONS), grading_script()
    report = run(conversations, infer=True, config=benchmark_config(tmp_path / "data", env={}), llm=model,
                 answer_llm=grader)
    assert len(model.calls) == 2  # one extraction per session chunk
    prompt = user_text(model, 0)
    assert "[3] user: Caroline: I adopted a golden retriever puppy" in prompt
    assert "D1:3" not in prompt and "[D" not in prompt, "the turn ids are not shown; the model names numbers"
    assert all(len(call) == 2 for call in model.calls), "the conversation carries no extra instructions"
    assert report["n"] == 4 and report["memories"] == 4 and report["extraction_failures"] == 0
    # recall from metadata["source_ids"]: the fact texts carry no turn ids
    assert report["per_category"]["single-hop"]["R@1"] == 100.0
    assert report["per_category"]["multi-hop"]["R@5"] == 100.0
    assert report["per_category"]["temporal"]["R@5"] == 100.0
    assert report["per_category"]["open-domain"]["R@20"] == 0.0  # the violin fact names no source
    # answers from the top memories with their dates, graded against the gold answers
    assert len(grader.calls) == 9  # 4 answers + 4 verdicts + 1 retry of the broken verdict
    answer_prompt = str(grader.calls[0][0].content)
    assert all(line in answer_prompt for line in FACT_LINES)
    assert user_text(grader, 0) == "QUESTION: What did Caroline name her golden retriever puppy?"
    assert user_text(grader, 1) == ("Question: What did Caroline name her golden retriever puppy?\n"
                                    "Gold answer: Biscuit\nGenerated answer: Biscuit")
    assert user_text(grader, 3).endswith("Gold answer: Lisbon\nGenerated answer: Lisbon")
    assert "invalid" in user_text(grader, 8)  # the judge was shown its broken verdict once
    assert report["answer"] is True and report["judged"] == 4 and report["judge_errors"] == 1
    assert report["judge_accuracy"] == 50.0
    assert {name: values["judge_accuracy"] for name, values in report["per_category"].items()} == {
        "single-hop": 100.0, "multi-hop": 100.0, "temporal": 0.0, "open-domain": 0.0}
    # every question's context is all four facts (fewer than 10), in some order
    expected = math.ceil(len("\n".join(FACT_LINES)) / 4)
    assert report["memory_context_tokens"]["mean"] == expected and report["memory_context_tokens"]["p95"] == expected


def test_infer_without_answering_skips_a_chunk_whose_extraction_is_invalid_twice(tmp_path: Path) -> None:
    conversations = locomo_recall.load_conversations(_write(tmp_path))
    model = scripted("I cannot answer in JSON.", "Still no JSON.", EXTRACTIONS[1])
    report = run(conversations, infer=True, answer=False, config=benchmark_config(tmp_path / "data", env={}),
                 llm=model)
    assert len(model.calls) == 3 and report["extraction_failures"] == 1 and report["memories"] == 2
    assert report["per_category"]["multi-hop"]["R@1"] == 100.0  # the second session's facts still count
    assert report["per_category"]["single-hop"]["R@20"] == 0.0
    assert report["answer"] is False and "judge_accuracy" not in report


def test_answer_judges_the_one_memory_per_turn_path(tmp_path: Path) -> None:
    conversations = locomo_recall.load_conversations(_write(tmp_path))
    grader = grading_script()
    report = run(conversations, answer=True, config=benchmark_config(tmp_path / "data", env={}), answer_llm=grader)
    assert report["infer"] is False and "extraction_failures" not in report
    assert report["R@20"] == 100.0 and report["memories"] == 10  # recall from each turn's dia_id
    assert "[8 May 2023] Caroline: I adopted a golden retriever puppy and named him Biscuit." in str(
        grader.calls[0][0].content)
    assert report["judge_accuracy"] == 50.0 and report["judged"] == 4
    assert report["memory_context_tokens"]["p95"] >= report["memory_context_tokens"]["mean"] > 0


def test_answer_without_a_model_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in CLEAN_ENV_DROP:
        monkeypatch.delenv(name, raising=False)
    conversations = locomo_recall.load_conversations(_write(tmp_path))
    with pytest.raises(BenchmarkError, match="--answer needs a configured model"):
        run(conversations, answer=True, config=benchmark_config(tmp_path / "data", env={}))
    assert locomo_recall.main(["--data", str(_write(tmp_path)), "--answer", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == f"error: {NO_ANSWER_MODEL}"


def test_command_infer_over_http_reports_recall_and_judge_accuracy(tmp_path: Path) -> None:
    data = _write(tmp_path)
    replies = [*EXTRACTIONS, "Biscuit", verdict("CORRECT"), "Lisbon", verdict("CORRECT"), "June 2023",
               verdict("CORRECT"), "not mentioned", verdict("WRONG")]
    with FakeOpenAI(replies) as server:
        env = {**_clean_env(), "OPENAI_API_KEY": "test", "OPENAI_BASE_URL": server.base_url, "LLM_MAX_RETRIES": "0"}
        done = subprocess.run([sys.executable, "-m", "benchmarks.locomo_recall", "--data", str(data), "--json",
                               "--infer"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert server.chat_calls == 10 and server.pending == 0
        first = server.requests[0]["messages"][-1]["content"]
    assert "[3] user: Caroline: I adopted a golden retriever puppy" in first
    report = json.loads(done.stdout)
    assert report["infer"] is True and report["memories"] == 4
    assert report["per_category"]["single-hop"]["R@1"] == 100.0
    assert report["per_category"]["open-domain"]["R@20"] == 0.0
    assert report["judge_accuracy"] == 75.0 and report["per_category"]["temporal"]["judge_accuracy"] == 100.0
    assert report["memory_context_tokens"]["count"].startswith("approx")
