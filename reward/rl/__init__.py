"""reward.rl."""
