"""assistant.app.ui."""
