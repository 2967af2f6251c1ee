"""``koserve repo render``: a Triton model repository from koserve's templates, a profile and an engine's limits."""
