"""Prometheus metrics of one server (its own registry: no process-global state).

Names follow vLLM's so existing dashboards work: the `vllm:` prefix is kept, with the label
`model_name` (vLLM's). Request metrics: `vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc` (and the older `vllm:gpu_cache_usage_perc`, same value, arena-wide),
`vllm:num_preemptions_total`, `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
`vllm:request_success_total{finished_reason}`, histograms `vllm:time_to_first_token_seconds`,
`vllm:time_per_output_token_seconds`, `vllm:inter_token_latency_seconds`,
`vllm:e2e_request_latency_seconds`, `vllm:request_prompt_tokens`,
`vllm:request_generation_tokens`. FineServe's own, under `fineserve:`: KV Slab gauges
`fineserve:kv_slabs{model_name}`, `fineserve:kv_used_pages{model_name}`,
`fineserve:kv_used_bytes{model_name}`, `fineserve:kv_free_bytes`, `fineserve:kv_stranded_bytes`,
`fineserve:kv_edge_bytes`, `fineserve:kv_free_slabs`, `fineserve:kv_arena_bytes`, and SLO
counters `fineserve:request_slo_met_total` / `fineserve:request_slo_missed_total`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fineserve.server.backend import BackendStats, ModelInfo
from fineserve.server.generation import TextGeneration

LABEL = "model_name"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class _EngineCollector:
    """Gauges read from the backend at scrape time."""

    def __init__(self, stats: Callable[[], BackendStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        s = self._stats()
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests running", labels=[LABEL])
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting", labels=[LABEL])
        for name, load in s.load.items():
            running.add_metric([name], load.running)
            waiting.add_metric([name], load.waiting)
        preempt = CounterMetricFamily("vllm:num_preemptions", "Preemptions", labels=[LABEL])
        for name in s.load:
            preempt.add_metric([name], s.preemptions.get(name, 0))
        yield from (running, waiting, preempt)
        yield from _kv_families(s)


def _kv_families(s: BackendStats) -> Iterator[Any]:
    kv = s.kv
    usage = kv.usage_fraction
    for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
        fam = GaugeMetricFamily(name, "KV arena usage (1 = full)", labels=[LABEL])
        for model in s.load:
            fam.add_metric([model], usage)
        yield fam
    per_model = {
        "fineserve:kv_slabs": ("Slabs lent to the model", kv.slabs),
        "fineserve:kv_used_pages": ("KV pages the model holds", kv.used_pages),
        "fineserve:kv_used_bytes": ("Bytes of the model's used pages", kv.used_bytes),
    }
    for name, (doc, values) in per_model.items():
        fam = GaugeMetricFamily(name, doc, labels=[LABEL])
        for model, value in values.items():
            fam.add_metric([model], value)
        yield fam
    arena = {
        "fineserve:kv_arena_bytes": ("KV arena size", kv.arena_bytes),
        "fineserve:kv_free_bytes": ("Bytes any model could get now", kv.free_bytes),
        "fineserve:kv_stranded_bytes": ("Free pages stranded in lent slabs", kv.stranded_bytes),
        "fineserve:kv_edge_bytes": ("Bytes no page can use", kv.edge_bytes),
        "fineserve:kv_free_slabs": ("Slabs in the common pool", kv.free_slabs),
        "fineserve:kv_slab_bytes": ("Bytes per slab", kv.slab_bytes),
    }
    for name, (doc, value) in arena.items():
        yield GaugeMetricFamily(name, doc, value=value)


class ServerMetrics:
    """The registry and the request-level metrics (see the module docstring)."""

    def __init__(self, stats: Callable[[], BackendStats], models: list[ModelInfo]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = {m.name: m for m in models}
        r, lab = self.registry, [LABEL]
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens", lab, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Output tokens", lab, registry=r)
        self.success = Counter(
            "vllm:request_success", "Finished requests", [LABEL, "finished_reason"], registry=r
        )
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", lab,
                              buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "TPOT", lab,
                              buckets=TPOT_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("vllm:inter_token_latency_seconds", "ITL", lab,
                             buckets=TPOT_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "E2E latency", lab,
                             buckets=E2E_BUCKETS, registry=r)  # fmt: skip
        self.req_prompt = Histogram("vllm:request_prompt_tokens", "Prompt tokens per request",
                                    lab, buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.req_gen = Histogram("vllm:request_generation_tokens", "Output tokens per request",
                                 lab, buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.slo_met = Counter("fineserve:request_slo_met", "Requests within SLO", lab, registry=r)
        self.slo_missed = Counter("fineserve:request_slo_missed", "Requests missing their SLO",
                                  lab, registry=r)  # fmt: skip
        self.registry.register(_EngineCollector(stats))  # type: ignore[arg-type]

    def observe(self, gen: TextGeneration) -> None:
        """Record one finished (or abandoned) request; a second call for it does nothing."""
        if gen.observed:
            return
        gen.observed = True
        model, t = gen.info.name, gen.timing
        self.prompt_tokens.labels(model).inc(gen.prompt_tokens)
        self.generation_tokens.labels(model).inc(gen.completion_tokens)
        self.success.labels(model, gen.finish_reason or "abort").inc()
        self.req_prompt.labels(model).observe(gen.prompt_tokens)
        self.req_gen.labels(model).observe(gen.completion_tokens)
        if t.first_token is None or t.finish is None:
            self.slo_missed.labels(model).inc()
            return
        ttft, e2e = t.first_token - t.arrival, t.finish - t.arrival
        self.ttft.labels(model).observe(ttft)
        self.e2e.labels(model).observe(e2e)
        tpot = None
        if gen.completion_tokens > 1:
            tpot = (t.finish - t.first_token) / (gen.completion_tokens - 1)
            self.tpot.labels(model).observe(tpot)
        for a, b in itertools.pairwise(t.token_times):
            if b > a:
                self.itl.labels(model).observe(b - a)
        info = gen.info
        met = (info.slo_ttft_s is None or ttft <= info.slo_ttft_s) and (
            info.slo_tpot_s is None or tpot is None or tpot <= info.slo_tpot_s
        )
        (self.slo_met if met else self.slo_missed).labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
