"""`python -m benchmarks.latency` keeps its interface: the JSON keys other tools read, on a tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memory.config import LOCAL_EMBEDDERS

REPO = Path(__file__).resolve().parent.parent
KEYS = ["search_ms_p50", "search_ms_p95", "floor_ms_p50", "search_over_floor", "search_ms_p95_at", "add_raw_per_s",
        "add_overhead_ms_p95", "turn_overhead_ms_p95", "cold_start_s", "first_reply_s", "peak_rss_mb",
        "llm_calls_per_add", "llm_calls_per_search", "memory_context_tokens", "search_ms_p95_large_graph",
        "add_overhead_ms_p95_large_graph", "graph_entities", "reopened_peak_rss_mb",
        "update_overhead_ms_p95", "add_overhead_ms_p50", "add_floor_ms_p50", "add_floor_ms_p95", "add_over_floor",
        "imports_rss_mb", "vectors_mb"]


@pytest.mark.parametrize("model", list(LOCAL_EMBEDDERS))
def test_latency_benchmark_reports_every_key_as_json(model: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "MILVUS_", "EMBEDD"))}
    run = subprocess.run([sys.executable, "-m", "benchmarks.latency", "--memories", "10,30", "--users", "2",
                          "--queries", "10", "--entities", "40", "--embedding-model", model, "--json"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [k for k in KEYS if k not in report] == []
    assert report["embedding_model"] == model
    assert set(report["search_ms_p95_at"]) == {"10", "30"}
    assert report["search_ms_p95"] == report["search_ms_p95_at"]["30"]
    assert report["llm_calls_per_add"] == 1 and report["llm_calls_per_search"] == 0
    assert 0 < report["memory_context_tokens"] <= 1000
    assert 0 < report["cold_start_s"] < report["first_reply_s"]
    assert report["reopened_peak_rss_mb"] > 100  # the chat process and its engine were found and read
    assert report["graph_entities"] > 20
    assert 0 < report["add_floor_ms_p50"] <= report["add_floor_ms_p95"]
    assert report["add_over_floor"] == round(report["add_overhead_ms_p50"] / report["add_floor_ms_p50"], 1)
    assert 50 < report["imports_rss_mb"] < report["peak_rss_mb"]  # the packages alone, less than the whole run
    assert report["vectors_mb"] == round(2 * 30 * LOCAL_EMBEDDERS[model] * 4 / 2**20, 1)
