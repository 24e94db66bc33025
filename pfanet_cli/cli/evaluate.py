"""evaluate subcommand."""

from __future__ import annotations

from pfanet_cli.errors import PfanetError


def evaluate_command() -> None:
    """Evaluate features with the SYSU-MM01 or RegDB protocol (10 trials)."""
    raise PfanetError("evaluate is not built yet (issue #3)")
