"""ROS bridges: a safe policy server for real robots, and ROS bags to demonstration datasets."""
