"""Side-by-side measurement against the PyTorch reference (needs ``rewardrt[bench]``)."""
