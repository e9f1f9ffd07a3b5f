#!/usr/bin/env bash
# Create .venv-lerobot: the real LeRobot peer for the LeRobot-format tests (tests/test_lerobot.py): the
# `lerobot-dataset` package from PyPI (LeRobot's own LeRobotDataset, standalone) writes and reads v3.0 datasets,
# and `lerobot-doctor` checks them. It is a SEPARATE venv on purpose: lerobot-dataset pins av<16,
# huggingface-hub<0.36 and datasets<4.2, which clash with the main .venv (av 18, huggingface-hub 2.x).
# lerobot-dataset 0.4.4 is the newest release for Python 3.11 (0.5.0 needs 3.12); it leaves torch out on purpose,
# so this venv borrows torch/torchvision from the main .venv through a .pth line (appended to sys.path, after this
# venv's own packages) instead of downloading them a second time.
# Frames decode through torchcodec, LeRobot's default backend; torchcodec loads FFmpeg 7 by its sonames, which the
# PyAV wheel here bundles under hashed names, so the script links the sonames beside them and the launcher
# $VENV/bin/lerobot-peer puts that folder on LD_LIBRARY_PATH. Tests run the peer only through that launcher.
# Idempotent: a second run with nothing to do takes about a second. Needs only PyPI and an installed main .venv.
# Usage: scripts/setup_lerobot_peer.sh   (PYTHON=python3.11, VOLTRON_LEROBOT_VENV=.venv-lerobot, MAIN_VENV=.venv)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VOLTRON_LEROBOT_VENV:-.venv-lerobot}
MAIN_VENV=${MAIN_VENV:-.venv}
STAMP="$VENV/.installed"
PACKAGES=(
  "lerobot-dataset==0.4.4"
  "lerobot-doctor==0.2.0"
  "torchcodec==0.17.0"
)

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$0" ]; then
  echo "setup_lerobot_peer: $VENV is up to date"
  exit 0
fi

test -x "$MAIN_VENV/bin/python" || { echo "setup_lerobot_peer: $MAIN_VENV missing: run make test (or make .venv) first" >&2; exit 1; }
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
VENV_ABS=$(cd "$VENV" && pwd)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MAIN_SITE=$(cd "$MAIN_VENV" && "$PWD/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$MAIN_SITE" > "$SITE/voltron_main_torch.pth"

# FFmpeg sonames for torchcodec (libavutil.so.59 -> libavutil-<hash>.so.59.x), next to PyAV's bundled copies.
AVLIBS=$(cd "$SITE/av.libs" && pwd)
for lib in "$AVLIBS"/libav*-*.so.* "$AVLIBS"/libsw*-*.so.*; do
  name=$(basename "$lib")
  soname=$(echo "$name" | sed -E 's/-[0-9a-f]{8}\.so\.([0-9]+).*/.so.\1/')
  ln -sf "$name" "$AVLIBS/$soname"
done

# The launcher: the peer's Python with FFmpeg on the library path, run from outside any checkout (a `datasets/`
# folder in the working directory would shadow Hugging Face's `datasets`).
cat > "$VENV/bin/lerobot-peer" <<EOF
#!/usr/bin/env bash
# Run the LeRobot peer's python (or, with --doctor, lerobot-doctor) with torchcodec's FFmpeg on the library path.
export LD_LIBRARY_PATH="$AVLIBS\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1
if [ "\${1:-}" = "--doctor" ]; then shift; exec "$VENV_ABS/bin/lerobot-doctor" "\$@"; fi
exec "$VENV_ABS/bin/python" "\$@"
EOF
chmod +x "$VENV/bin/lerobot-peer"

# Smoke checks: LeRobotDataset imports with torch from the main venv, and torchcodec decodes an AV1 clip.
SMOKE=$(mktemp -d)
(cd "$SMOKE" && "$VENV_ABS/bin/lerobot-peer" -c "
import av, numpy as np
from ledataset.datasets.lerobot_dataset import LeRobotDataset
from ledataset.datasets.video_utils import get_safe_default_codec
from torchcodec.decoders import VideoDecoder
assert get_safe_default_codec() == 'torchcodec', get_safe_default_codec()
with av.open('smoke.mp4', 'w') as out:
    stream = out.add_stream('libsvtav1', 15, options={'g': '2', 'crf': '30', 'preset': '12'})
    stream.width, stream.height, stream.pix_fmt = 64, 48, 'yuv420p'
    for i in range(4):
        out.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * i, np.uint8), format='rgb24')))
    out.mux(stream.encode())
assert VideoDecoder('smoke.mp4').get_frames_played_at([0.0, 0.2]).data.shape == (2, 3, 48, 64)
" >/dev/null 2>&1) || { rm -rf "$SMOKE"; echo "setup_lerobot_peer: smoke check failed (LeRobotDataset or torchcodec)" >&2; exit 1; }
rm -rf "$SMOKE"
"$VENV_ABS/bin/lerobot-peer" --doctor --version >/dev/null

touch "$STAMP"
echo "setup_lerobot_peer: $VENV ready ($(du -sh "$VENV" | cut -f1))"
