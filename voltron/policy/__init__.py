"""Policy learning: behaviour cloning on frozen (or fine-tuned) voltron encoders, and its evaluation."""
