"""assistant.app."""
