"""reward.eval."""
