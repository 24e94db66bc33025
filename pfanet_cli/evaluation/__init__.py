"""Evaluation: the features file, feature extraction, gallery samplers, the vectorised ranking engine,
the SYSU-MM01 and RegDB protocols, ranked-list examples and the per-query oracle."""
