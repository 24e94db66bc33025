"""The networks of PFANet (generators, discriminators, the feature extractor with BNG and MMM) and of AGW,
their table and builder, and the losses."""
