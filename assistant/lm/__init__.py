"""assistant.lm."""
