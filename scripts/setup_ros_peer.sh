#!/usr/bin/env bash
# Create .venv-ros: the loopback ROS 2 peer for the `ros` integration tests and bench/ros_latency.py
# (rosbridge-server-rs plus an rclpy stub robot from the ros-jazzy-* PyPI wheels). It is a SEPARATE venv on purpose:
# the wheels' ros_wheels_bootstrapper.pth re-execs every Python start-up in its venv, pytest included, so they must
# never go into the main .venv (which only needs roslibpy and rosbags, the [ros] extra).
# Idempotent: a second run with nothing to do takes about a second. Needs only PyPI.
# Usage: scripts/setup_ros_peer.sh   (PYTHON=python3.11 and VOLTRON_ROS_VENV=.venv-ros may be overridden)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VOLTRON_ROS_VENV:-.venv-ros}
STAMP="$VENV/.installed"
PACKAGES=(
  "ros-jazzy-rclpy[fastrtps]==7.1.6"
  "ros-jazzy-std-msgs==5.3.6"
  "ros-jazzy-sensor-msgs==5.3.6"
  "ros-jazzy-std-srvs==5.3.6"
  "rosbridge-server-rs==0.1.6"
)

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$0" ]; then
  echo "setup_ros_peer: $VENV is up to date"
  exit 0
fi

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
LIBDIR="$VENV/lib"

# Workaround 1: the packaged server binaries ship without the executable bit.
chmod +x "$SITE"/rosbridge_server_rs/rosbridge_server_rs_*

# Workaround 2: the wheels ship no librmw_implementation.so (rcl links Fast DDS directly); the server links it by
# that name, so point it at Fast DDS in <venv>/lib, which the bootstrap .pth puts on LD_LIBRARY_PATH.
test -f "$LIBDIR/librmw_fastrtps_cpp.so" || { echo "setup_ros_peer: $LIBDIR/librmw_fastrtps_cpp.so missing" >&2; exit 1; }
ln -sf librmw_fastrtps_cpp.so "$LIBDIR/librmw_implementation.so"

# Workaround 3: the server loads type support that links libpython3.11.so, so the launcher
# (tests/ros_peer/rosbridge_server.py) LD_PRELOADs it. That needs a Python built with --enable-shared (pyenv's is).
LIBPYTHON=$("$VENV/bin/python" -c 'import os, sysconfig as s; print(os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("LDLIBRARY")))')
test -f "$LIBPYTHON" || { echo "setup_ros_peer: $LIBPYTHON not found: $PYTHON must be built with --enable-shared" >&2; exit 1; }

# Smoke checks: the messages import, and the server binary loads all its libraries.
"$VENV/bin/python" -c "import rclpy, sensor_msgs.msg, std_msgs.msg, std_srvs.srv"
timeout 30 "$VENV/bin/python" tests/ros_peer/rosbridge_server.py --port 0 --help >/dev/null

touch "$STAMP"
echo "setup_ros_peer: $VENV ready ($(du -sh "$VENV" | cut -f1))"
