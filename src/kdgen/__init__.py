"""kdgen: train deep networks in generations with tolerant teachers."""
