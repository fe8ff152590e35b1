"""CLI: serve, suggest, status (filled in)."""


def register(sub, parent) -> None:
    pass
