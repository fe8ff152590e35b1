"""assistant.app.api."""
