"""The torch-free output contract: class and category probabilities from logits, and block/review/allow."""

from __future__ import annotations

import numpy as np
import pytest

from handlers.model_io import CATEGORIES, DECISIONS, category_count, decision, harmful_probability, probabilities


def test_probabilities_of_a_model_with_categories() -> None:
    logits = np.array([[0.0, 2.0, 3.0, -3.0, 0.0, -10.0], [1.0, -1.0, -5.0, -5.0, -5.0, -5.0]], dtype=np.float32)
    p = probabilities(logits)
    assert p.shape == (2, 1 + len(CATEGORIES))
    # P(harmful) is the softmax over the two class logits only, never over the category logits
    assert p[:, 0] == pytest.approx([1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(2.0))], abs=1e-6)
    assert p[0, 1:] == pytest.approx(1 / (1 + np.exp(-logits[0, 2:])), abs=1e-6)  # independent sigmoids
    assert harmful_probability(logits) == pytest.approx(p[:, 0])


def test_probabilities_of_a_model_without_categories() -> None:
    p = probabilities(np.array([[0.0, 0.0]], dtype=np.float32))
    assert p.shape == (1, 1) and p[0, 0] == pytest.approx(0.5)


def test_an_unexpected_number_of_logits_is_refused() -> None:
    assert category_count(2) == 0 and category_count(2 + len(CATEGORIES)) == len(CATEGORIES)
    with pytest.raises(ValueError, match="logits per image"):
        category_count(3)


@pytest.mark.parametrize(("score", "expected"), [
    (0.95, "block"), (0.8, "block"), (0.7999, "review"), (0.3, "review"), (0.2999, "allow"), (0.0, "allow")])
def test_decisions_at_and_around_both_thresholds(score: float, expected: str) -> None:
    assert decision(score, 0.8, 0.3) == expected and expected in DECISIONS


def test_without_a_band_there_is_no_review() -> None:
    assert [decision(s, 0.5, 0.5) for s in (0.49, 0.5)] == ["allow", "block"]
