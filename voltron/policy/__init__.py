"""Policy learning: behaviour cloning on frozen (or fine-tuned) voltron encoders, and its evaluation."""

from __future__ import annotations

from pathlib import Path


def load_policy(directory: str | Path, device: str = "cpu"):
    """Restore a policy that `voltron train-policy` wrote (see voltron.policy.model.load_policy)."""
    from voltron.policy.model import load_policy as _load_policy

    return _load_policy(directory, device)
