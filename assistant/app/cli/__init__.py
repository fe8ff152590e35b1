"""assistant.app.cli."""
