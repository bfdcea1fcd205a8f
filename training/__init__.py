"""Fine-tuning and evaluation of the moderation models; owns data handling and weights."""
