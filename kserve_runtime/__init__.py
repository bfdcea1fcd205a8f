"""A second serving runtime on KServe's Python ModelServer: the same archives, contract and metrics as TorchServe."""

# A child of KServe's own logger, so the runtime's lines share its format, level (KSERVE_LOGLEVEL) and handlers.
LOGGER_NAME = "kserve.moderation"
