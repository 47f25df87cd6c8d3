"""The LOCOMO recall benchmark, end to end on a small synthetic LOCOMO-shaped file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import scripted

from benchmarks.locomo_recall import NO_MODEL, benchmark_config, load_conversations, run, turn_text

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


def test_infer_without_a_model_fails_in_one_line(tmp_path: Path) -> None:
    data = _write(tmp_path)
    done = subprocess.run([sys.executable, "-m", "benchmarks.locomo_recall", "--data", str(data), "--infer"],
                          cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == f"error: {NO_MODEL}"


def test_turn_text_and_loading(tmp_path: Path) -> None:
    conversation = load_conversations(_write(tmp_path))[0]
    assert [t.dia_id for t in conversation.turns][:2] == ["D1:1", "D1:2"]
    assert conversation.turns[4].text == ("Caroline: Thanks! Talk soon. "
                                          "[shares a photo: a photo of a violin on a wooden table]")
    assert conversation.turns[5].when.isoformat() == "2023-06-27T10:37:00"
    assert conversation.questions[3].evidence == ["D1:5"]  # the malformed id is skipped
    assert turn_text({"speaker": "A", "text": "hi"}) == "A: hi"


def test_infer_maps_evidence_through_ids_the_model_copies(tmp_path: Path) -> None:
    conversations = load_conversations(_write(tmp_path))
    model = scripted(
        json.dumps({"memories": [
            {"event": "ADD", "text": "Caroline adopted a golden retriever puppy named Biscuit [D1:3]"},
            {"event": "ADD", "text": "Caroline has a violin"}]}),  # no ids copied: maps to no turn
        json.dumps({"memories": [
            {"event": "ADD", "text": "Caroline moved to Lisbon for a nursing job [D2:2]"},
            {"event": "ADD", "text": "Melanie ran the Boston marathon in June 2023 [D2:3]"}]}),
    )
    report = run(conversations, infer=True, config=benchmark_config(tmp_path / "data", env={}), llm=model)
    assert len(model.calls) == 2  # one extraction per session chunk
    prompt = model.calls[0][-1].content
    assert "[D1:3] Caroline: I adopted a golden retriever puppy" in prompt
    assert report["n"] == 4 and report["memories"] == 4
    assert report["per_category"]["single-hop"]["R@1"] == 100.0
    assert report["per_category"]["temporal"]["R@5"] == 100.0
    assert report["per_category"]["open-domain"]["R@20"] == 0.0  # the violin fact carries no turn id
