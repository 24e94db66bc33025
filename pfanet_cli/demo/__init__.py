"""``pfanet demo``: the whole pipeline on synthetic data, and its report."""
