"""Kafka bridge: `image_data` -> KServe inference -> `image_predictions` (review decisions also to `image_review`),
failures to `image_data.dlq`.

Owns the Kafka side of the service: the message contract (`contract`, `schema/`), configuration
(`config`), at-least-once offset tracking (`offsets`), the inference client (`inference`), the app
(`app`, run with `python -m bridge`), metrics/health, topic admin and the producer/consumer CLIs.
"""
