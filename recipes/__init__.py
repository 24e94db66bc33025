"""The recipes shipped with pfanet (installed as ``pfanet_cli.bundled_recipes``)."""
