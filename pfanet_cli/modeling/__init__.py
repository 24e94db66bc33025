"""The networks of PFANet (generators, discriminators, the feature extractor with BNG and MMM), their
table and builder, and the losses."""
