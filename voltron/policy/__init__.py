"""Policy learning: behaviour cloning on frozen (or fine-tuned) voltron encoders, and its evaluation."""

from __future__ import annotations

from pathlib import Path


def load_policy(directory: str | Path, device: str = "cpu"):
    """Restore a policy that `voltron train-policy` or `voltron policy export` wrote, of any head (see
    voltron.policy.base.load_policy); imported on first use so `import voltron.policy` stays light."""
    from voltron.policy.base import load_policy as _load_policy

    return _load_policy(directory, device)
