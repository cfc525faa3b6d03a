"""Prometheus metrics exported at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INBOUND = Counter("frankly_inbound_messages_total", "Inbound customer messages stored", ["channel"])
INBOUND_DUPLICATES = Counter(
    "frankly_inbound_duplicates_total", "Inbound messages ignored as duplicates", ["channel"]
)
DRAFTS = Counter(
    "frankly_drafts_total",
    "Drafting outcomes: drafted, abstained, skipped; and what humans did with drafts",
    ["outcome"],
)
SENDS = Counter("frankly_sends_total", "Outbound messages sent by a person", ["origin"])
DRAFT_LATENCY = Histogram(
    "frankly_draft_latency_seconds",
    "From an inbound message stored to its draft (or abstention) stored",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JOBS = Counter("frankly_jobs_total", "Background jobs finished", ["name", "result"])
DELIVERIES = Counter(
    "frankly_deliveries_total", "Outbox delivery attempts by result", ["channel", "result"]
)
POLLS = Counter("frankly_channel_polls_total", "Channel polls by result", ["channel", "result"])
LLM_TOKENS = Counter("frankly_llm_tokens_total", "LLM tokens used for drafts", ["direction"])
LLM_TTFT = Histogram(
    "frankly_llm_time_to_first_token_seconds",
    "Time from the LLM request to its first token",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
LLM_FALLBACKS = Counter(
    "frankly_llm_fallbacks_total",
    "Drafts the offline engine wrote because the LLM failed",
    ["reason"],
)
