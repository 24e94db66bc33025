"""demo subcommand."""

from __future__ import annotations

from pfanet_cli.errors import PfanetError


def demo_command() -> None:
    """Run the whole pipeline on built-in synthetic data, on CPU, in minutes."""
    raise PfanetError("demo is not built yet (issue #5)")
