"""TorchServe's stock `image_classifier` handler, as a user would deploy it for our 2-class models.

The only change: the stock handler returns the top 5 classes, which fails on a 2-class head, so the
benchmark's stock archive uses this subclass with topk = 2. Everything else (Resize 256, CenterCrop 224,
per-image preprocessing, TorchScript model) is TorchServe's own code.
"""

from ts.torch_handler.image_classifier import ImageClassifier


class StockImageClassifier(ImageClassifier):
    topk = 2
