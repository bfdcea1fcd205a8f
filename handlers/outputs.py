"""What a moderation answer says beyond the label, with no dependencies: category names and the decision rule.

Clients and consumers (the Kafka bridge, a Spark job) import this without numpy, Pillow or torch;
`handlers.model_io` (pixels, logits) and `handlers.envelopes` (wire formats) build on it.
"""

from __future__ import annotations

# Harmful categories of a model with a category head: its logits are the class logits followed by one
# independent (sigmoid) logit per category, in this order. A model with only the class logits has none.
CATEGORIES: tuple[str, ...] = ("firearm", "blade", "violence", "fire_smoke")
# What a moderation client does with an image: block at or above `threshold`, send to human review at or above
# `review_threshold` (lower, picked for a higher recall), allow below both.
DECISIONS: tuple[str, str, str] = ("block", "review", "allow")
REVIEW = DECISIONS[1]


def decision(score: float, threshold: float, review_threshold: float) -> str:
    """block / review / allow for one P(harmful) (see DECISIONS); review_threshold >= threshold means no band."""
    if score >= threshold:
        return DECISIONS[0]
    return DECISIONS[1] if score >= review_threshold else DECISIONS[2]
