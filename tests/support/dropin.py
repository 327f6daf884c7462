"""A private registry, an in-memory span exporter and the telemetry hooks on them: what the
drop-in tests (``track_exit``, ``@instrumented_exit``) read back."""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import CollectorRegistry

from exitguard.telemetry import hooks
from tests.support.tracing import in_memory_tracing

__all__ = ["Kit"]


class Kit:
    """A private registry, an in-memory span exporter, and the three hooks on them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.provider, self.exporter = in_memory_tracing()
        self.hooks = hooks(registry=self.registry, tracer_provider=self.provider)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in self.registry.collect():
            for s in family.samples:
                if not s.name.endswith("_created") and s.value:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def exits(self, guard: str = "bot") -> dict[str, float]:
        """``exitguard_exits_total`` of ``guard`` by outcome (only the non-zero ones)."""
        return {dict(labels)["outcome"]: value for (name, labels), value in self.samples().items()
                if name == "exitguard_exits_total" and dict(labels)["guard"] == guard}

    def exit_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == "exitguard.exit"]
