"""Export side (needs ``rewardrt[export]``): checkpoint loading, the torch reference, graph build,
INT8 quantization and verification against the reference."""
