"""Export side (needs ``rewardrt[export]``): checkpoint loading, the torch reference, graph build,
INT8 quantization and verification against the reference. ``export.exporter.export`` runs the
stages fit (``export.fit``) -> plan (``export.search``) -> quantize (``export.quantize``) -> gate
(``export.gate``); ``export.config`` holds what it may be told. See export/README.md."""
