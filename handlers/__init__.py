"""Serving core: model registry, image decoding, request envelopes and the TorchServe handler."""
