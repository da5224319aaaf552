"""Stress harness of the server and the scorer (needs ``rewardrt[bench,serve]``), each runnable as
``python -m rewardrt.bench.stress.<name>``:

- ``loadtest``: concurrent clients against ``rewardrt serve``; throughput, latency percentiles, and
  every answer checked against in-process scoring;
- ``abuse``: malformed, oversized and slow requests; the server must answer each with a JSON error
  and keep serving;
- ``soak``: a long run watching RSS and latency drift;
- ``determinism``: identical scores whatever the batch size, order and thread count.
"""
