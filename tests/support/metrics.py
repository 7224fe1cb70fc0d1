"""One `/metrics` page, parsed by prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.processes import Gateway


@dataclass
class Metrics:
    """One `/metrics` page, parsed by prometheus_client's own parser."""

    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]  # family name -> type

    def value(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels, or None."""
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample of `name` whose labels include these."""
        wanted = set(labels.items())
        return sum(value for (sample, found), value in self.samples.items() if sample == name and wanted <= found)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(found)[label] for (sample, found) in self.samples if sample == name and label in dict(found)}


def parse_metrics(text: str, openmetrics: bool = False) -> Metrics:
    """Parse a page; `openmetrics` uses prometheus_client's strict OpenMetrics parser instead."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families: dict[str, str] = {}
    for family in (openmetrics_families if openmetrics else text_string_to_metric_families)(text):
        families[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series on /metrics: {key}"
            samples[key] = sample.value
    return Metrics(text, samples, families)


def scrape(gw: Gateway, **headers: str) -> Metrics:
    response = gw.get("/metrics", **({"headers": headers} if headers else {}))
    assert response.status_code == 200, response.text
    return parse_metrics(response.text)
