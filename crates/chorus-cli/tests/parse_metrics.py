"""Fetches a node's /metrics and parses it with the official Prometheus Python client's
OpenMetrics parser (strict: a malformed line, a bad escape or a missing `# EOF` raises).
Prints the families as JSON: {name: {"type": ..., "samples": [[name, labels, value], ...]}}.

usage: parse_metrics.py URL
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    content_type = r.headers.get("content-type", "")
    text = r.read().decode("utf-8")
if not content_type.startswith("application/openmetrics-text"):
    sys.exit(f"content-type {content_type!r} is not OpenMetrics")
families = {}
for f in text_string_to_metric_families(text):
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(families))
