"""reward.loop."""
