"""Prometheus metrics of one server process (conventional names: `_total` counters,
seconds, histograms for latencies; never user or reply ids as labels)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from core.server_load import STATES, TTFT_BUCKETS_S
from service.serving.load import ChatLoad

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
        self.load = ChatLoad()   # chat counters by learner state, also written to Redis (service/serving/load.py)
        self.learner_training = Gauge("rewardloop_learner_training", "1 while a learner run holds the learner "
                                      "lock, as this server last saw it", registry=r)
        r.register(_LoadCollector(self.load))

    def watch_engine(self, engine) -> None:
        """Engine figures read at scrape time (the engine never imports Prometheus)."""
        self.registry.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """Prefix cache and queue figures of the engine, read when /metrics is scraped."""

    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        yield GaugeMetricFamily("rewardloop_engine_waiting_requests", "Requests waiting for their first token",
                                value=self.engine.waiting)
        yield CounterMetricFamily("rewardloop_engine_failed_requests", "Requests the engine ended with an error",
                                  value=self.engine.failed_requests)
        prefix = self.engine.prefix
        if prefix is None:
            return
        st = prefix.stats()
        yield CounterMetricFamily("rewardloop_prefix_cache_lookups", "Turns that looked for a cached KV prefix",
                                  value=st["lookups"])
        yield CounterMetricFamily("rewardloop_prefix_cache_hits", "Turns that reused a cached KV prefix",
                                  value=st["hits"])
        yield GaugeMetricFamily("rewardloop_prefix_cache_hit_ratio", "Hits / lookups since start",
                                value=st["hits"] / st["lookups"] if st["lookups"] else 0.0)
        yield CounterMetricFamily("rewardloop_prefix_cache_tokens_saved", "Prompt tokens not prefilled thanks to "
                                  "the prefix cache", value=st["tokens_saved"])
        yield GaugeMetricFamily("rewardloop_prefix_cache_bytes", "Bytes of KV held by the prefix cache",
                                value=st["bytes"])
        yield GaugeMetricFamily("rewardloop_prefix_cache_entries", "Sessions with a cached KV prefix",
                                value=st["entries"])


class _LoadCollector:
    """Chat throughput and TTFT by learner state (idle | training), from the ChatLoad counters:
    tokens/s while busy = rate(rewardloop_chat_tokens_total) / rate(rewardloop_chat_busy_seconds_total)."""

    def __init__(self, load: ChatLoad):
        self.load = load

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        c = self.load.counters
        tokens = CounterMetricFamily("rewardloop_chat_tokens", "Chat tokens streamed, by learner state (idle, "
                                     "training: a learner run held the lock)", labels=["learner"])
        busy = CounterMetricFamily("rewardloop_chat_busy_seconds", "Wall seconds with a chat stream generating or "
                                   "waiting, by learner state", labels=["learner"])
        for state in STATES:
            tokens.add_metric([state], c.get(f"tokens_{state}", 0.0))
            busy.add_metric([state], c.get(f"busy_s_{state}", 0.0))
        yield tokens
        yield busy
        ttft = HistogramMetricFamily("rewardloop_chat_time_to_first_token_seconds", "Chat time to first token, by "
                                     "learner state", labels=["learner"])
        for state in STATES:
            buckets = [(f"{b:g}", c.get(f"ttft_le_{b:g}_{state}", 0.0)) for b in TTFT_BUCKETS_S]
            buckets.append(("+Inf", c.get(f"ttft_n_{state}", 0.0)))
            ttft.add_metric([state], buckets, sum_value=c.get(f"ttft_sum_{state}", 0.0))
        yield ttft
