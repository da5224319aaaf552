"""Lab probes: one-off measurements whose findings are recorded in bench/README.md and
export/README.md; kept runnable (``python -m rewardrt.bench.probes.<name>``) so a finding can be
re-measured on another machine:

- ``int8peak``: INT8 GEMM throughput against the machine's peak;
- ``quantchain``: the two activation-quantization chains, codes and speed;
- ``sessionopts``: onnxruntime session settings, measured rather than assumed;
- ``ray_capacity``: pairs/s per core through Ray Data against in-process scoring.
"""
