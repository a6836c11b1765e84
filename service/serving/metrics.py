"""Prometheus metrics of one server process (conventional names: `_total` counters,
seconds, histograms for latencies; never user or reply ids as labels)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.replies = Counter("rewardloop_replies_total", "Replies finished, by API and finish reason",
                               ["api", "finish_reason"], registry=r)
        self.tokens = Counter("rewardloop_generated_tokens_total", "Tokens generated", registry=r)
        self.ttft = Histogram("rewardloop_time_to_first_token_seconds", "Request to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.feedback = Counter("rewardloop_feedback_total", "Feedback received, by kind and result",
                                ["kind", "result"], registry=r)
        self.ws_connections = Gauge("rewardloop_websocket_connections", "Open chat websockets", registry=r)
        self.active_streams = Gauge("rewardloop_active_streams", "Replies being generated", registry=r)
        self.refused = Counter("rewardloop_requests_refused_total", "Requests refused by admission control "
                               "(busy: the queue is full; user_limit: the user's concurrent replies)", ["reason"],
                               registry=r)
        self.watcher_errors = Counter("rewardloop_adapter_watcher_errors_total",
                                      "Unexpected errors the hot-swap watcher logged and survived", registry=r)
        self.swaps = Counter("rewardloop_adapter_swaps_total", "Adapter loads by result (loaded, refused, failed)",
                             ["result"], registry=r)
        self.swap_seconds = Histogram("rewardloop_adapter_swap_seconds", "Validate + load time of one adapter",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.resident = Gauge("rewardloop_adapter_resident_versions", "Adapter versions loaded in this server",
                              registry=r)
        self.publish_to_first_token = Histogram(
            "rewardloop_adapter_publish_to_first_token_seconds",
            "From a version's publish to the first token this server streamed with it",
            buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
