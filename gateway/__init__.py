"""Local KServe-protocol gateway in front of TorchServe."""
