"""A second serving runtime on KServe's Python ModelServer: the same archives, contract and metrics as TorchServe."""
