"""CLI commands for this area (filled in by the area's owner)."""


def register(sub, parent) -> None:
    """Add this area's sub-commands to `sub` (argparse subparsers); `parent` carries the common flags."""
