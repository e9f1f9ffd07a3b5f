"""ROS bridge for real robots: robot configs, message codecs, the safety layer, the policy server and bag conversion.

Importing `voltron.ros` imports nothing heavy (the CLI registers its commands through it): ROS, roslibpy and rosbags
are imported when a bridge is made or a bag is read, so the policy machine needs only the `[ros]` extra (roslibpy,
rosbags) and never a ROS install.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it, imported on first use
_EXPORTS = {
    "RobotConfig": "voltron.ros.config",
    "load_robot_config": "voltron.ros.config",
    "RobotBridge": "voltron.ros.bridge",
    "Observation": "voltron.ros.bridge",
    "make_bridge": "voltron.ros.bridge",
    "SafetyLayer": "voltron.ros.safety",
    "Policy": "voltron.policy.base",
    "ServeOptions": "voltron.ros.server",
    "serve": "voltron.ros.server",
    "bag2demos": "voltron.ros.bags",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'voltron.ros' has no attribute {name!r}")
