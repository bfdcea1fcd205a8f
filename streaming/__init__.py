"""The Spark consumer: Structured Streaming over `image_data` with the bridge's contract, and batch backfill.

`python -m streaming` runs the streaming query (streaming/README.md); `python -m streaming.backfill` scores a
folder tree. Records, schemas, reasons and retry rules are the bridge's (`bridge.contract`, `bridge.outcome`);
decoding, the model and its thresholds are the handlers' (`handlers.scorer`). Nothing of either is copied here.
"""
