"""Fast headless MuJoCo rendering: picks the GL backend, then gives each environment one reusable offscreen renderer."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import warnings
import weakref

import numpy as np

from voltron.errors import MissingDependency

# Backends tried in order when MUJOCO_GL is unset. EGL renders on a GPU when there is one and through Mesa's
# llvmpipe otherwise; OSMesa is the pure-software fallback. llvmpipe loads the system libLLVM into the global
# symbol scope; voltron.llvm_isolation (installed when voltron is imported) keeps Triton's LLVM, which torch.compile
# imports later, from binding to it, so renders and compiles may come in any order.
GL_BACKENDS = ("egl", "osmesa")

# Debian/Ubuntu packages that provide each backend (apt-get install ...).
GL_PACKAGES = {
    "egl": ("libegl1", "libgl1", "libegl-mesa0", "libgles2"),
    "osmesa": ("libosmesa6",),
}

# A child interpreter creates and frees a 1x1 context: the only reliable probe, because mujoco (and PyOpenGL)
# fix their platform at import time, so a failed backend cannot be swapped for another inside this process.
_PROBE = "import mujoco; c = mujoco.GLContext(1, 1); c.make_current(); c.free(); print('ok')"

_PROBE_ERRORS: dict[str, str] = {}  # backend -> why its probe failed
_GL_NOTES: list[str] = []


class GLBackendError(RuntimeError):
    """No OpenGL backend can create an offscreen context on this machine."""


def _probe_backend(backend: str, timeout_s: float = 60.0) -> str | None:
    """None when `backend` can render here, else the tail of the probe's error output."""
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)  # let mujoco set the PyOpenGL platform that matches the backend
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return f"probe timed out after {timeout_s:.0f} s"
    if result.returncode == 0 and result.stdout.strip().endswith("ok"):
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"probe exited with code {result.returncode}"


def select_gl_backend() -> str | None:
    """Set MUJOCO_GL (egl, then osmesa) before mujoco is imported, and return it.

    A value the user already set is kept. When nothing works, MUJOCO_GL is left unset and the failure is remembered:
    `gl_help()` then explains it, and creating a renderer raises `GLBackendError` (physics alone still runs).
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen
    if not sys.platform.startswith("linux"):
        return None  # mujoco's own default (cgl on macOS, wgl on Windows) is already headless-capable
    if "mujoco" in sys.modules:
        _GL_NOTES.append(
            "mujoco was imported before voltron.sim.render with MUJOCO_GL unset, so it picked its default (glfw), "
            "which needs a display; set MUJOCO_GL=egl (or osmesa) before importing mujoco"
        )
        warnings.warn(_GL_NOTES[-1], RuntimeWarning, stacklevel=2)
        return None
    for backend in GL_BACKENDS:
        error = _probe_backend(backend)
        if error is None:
            os.environ["MUJOCO_GL"] = backend  # inherited by worker processes, so they skip the probe
            return backend
        _PROBE_ERRORS[backend] = error
    return None


def gl_help() -> str:
    """A message naming what failed and which Debian packages provide a headless GL backend."""
    tried = os.environ.get("MUJOCO_GL")
    lines = [f"MuJoCo could not create an offscreen OpenGL context (MUJOCO_GL={tried or 'unset'})."]
    for backend, error in _PROBE_ERRORS.items():
        lines.append(f"  MUJOCO_GL={backend}: {error}")
    lines.extend(f"  {note}" for note in _GL_NOTES)
    lines.append("Install a headless GL backend, for example:")
    for backend, packages in GL_PACKAGES.items():
        lines.append(f"  {backend}: sudo apt-get install -y {' '.join(packages)}   (then MUJOCO_GL={backend})")
    lines.append("On an NVIDIA GPU machine the driver's EGL library (libnvidia-egl / libEGL_nvidia.so) is enough.")
    return "\n".join(lines)


def _import_mujoco():
    """Import mujoco for the chosen backend, turning a GL failure at import time into GLBackendError."""
    backend = os.environ.get("MUJOCO_GL", "").lower()
    if backend in GL_BACKENDS and "OpenGL" not in sys.modules:
        # mujoco refuses to import when PyOpenGL's platform names another backend, which happens when a process
        # that rendered with EGL (mujoco then sets PYOPENGL_PLATFORM=egl) starts a child with MUJOCO_GL=osmesa.
        os.environ["PYOPENGL_PLATFORM"] = backend
    try:
        import mujoco as module
    except ModuleNotFoundError as error:
        if error.name == "mujoco":
            raise MissingDependency("voltron.sim needs mujoco: pip install -e '.[sim]'", name="mujoco") from error
        raise GLBackendError(f"{gl_help()}\nUnderlying error: {type(error).__name__}: {error}") from error
    except Exception as error:  # PyOpenGL fails in several ways (ImportError, AttributeError) without its library
        raise GLBackendError(f"{gl_help()}\nUnderlying error: {type(error).__name__}: {error}") from error
    return module


select_gl_backend()
mujoco = _import_mujoco()  # after select_gl_backend: mujoco reads MUJOCO_GL on import

# MetaWorld's corner cameras are defined with their image-up axis pointing at the floor (for example `corner` has
# xyaxes="-1 1 0 -0.2 -0.2 -1"), so their frames come out upside down; LeRobot reports the same for `corner2`.
# Rotating the frame by 180 degrees (flipping both axes) is the camera roll that makes them upright without
# mirroring. `topview`, `behindGripper` and `gripperPOV` are already upright. tests/test_sim.py checks this table
# against each camera's pose in the model.
FLIPPED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})

# Renderers alive in this process, closed before mujoco's own atexit hook terminates the EGL display
# (closing afterwards prints EGL errors at interpreter exit).
_LIVE: weakref.WeakSet = weakref.WeakSet()
_EXIT_HOOK_REGISTERED = False


def simplify_meshes(model: mujoco.MjModel, cell: float, min_faces: int = 64) -> tuple[int, int]:
    """Coarsen every mesh's triangles for rendering, in place: (faces before, faces after).

    Vertex clustering on a grid of `cell` metres: each vertex moves to the first vertex of its grid cell, and the
    triangles that collapse (or repeat) are dropped. Only the face lists change (`mesh_face`, its normal and
    texture-coordinate indices, `mesh_facenum`), never a vertex, so physics, which collides on the vertices'
    convex hulls, is untouched (tests/test_sim.py checks the states step for step). Rendering cost in software GL
    follows the face count, and MetaWorld's Sawyer arm draws 68k triangles into a 112x112 frame; at 8 mm cells
    it keeps about 17k and its frames differ from the full meshes by under 0.5/255 on average (bench/render.py).
    Applying it twice with the same cell changes nothing more. Call before the GL context uploads the meshes.
    """
    if cell < 0 or not np.isfinite(cell):
        raise ValueError(f"mesh_cell={cell}: expected 0 (full meshes) or a positive size in metres")
    before = int(model.mesh_facenum.sum())
    if cell == 0:
        return before, before
    textured = model.mesh_facetexcoord.size > 0
    for mesh in range(model.nmesh):
        n_faces = int(model.mesh_facenum[mesh])
        if n_faces < min_faces:
            continue
        face_adr, vert_adr = int(model.mesh_faceadr[mesh]), int(model.mesh_vertadr[mesh])
        verts = model.mesh_vert[vert_adr : vert_adr + int(model.mesh_vertnum[mesh])]  # (V, 3), mesh frame
        faces = model.mesh_face[face_adr : face_adr + n_faces]  # (F, 3) indices into this mesh's vertices
        _, first, cluster = np.unique(
            np.floor(verts / cell).astype(np.int64), axis=0, return_index=True, return_inverse=True
        )
        corners = first[cluster.reshape(-1)][faces]  # (F, 3) each corner moved to its cell's first vertex
        kept = np.flatnonzero(
            (corners[:, 0] != corners[:, 1]) & (corners[:, 1] != corners[:, 2]) & (corners[:, 0] != corners[:, 2])
        )
        _, unique = np.unique(np.sort(corners[kept], axis=1), axis=0, return_index=True)
        kept = kept[np.sort(unique)]
        if len(kept) == 0 or len(kept) == n_faces:
            continue
        rows = slice(face_adr, face_adr + len(kept))
        normals = model.mesh_facenormal[face_adr : face_adr + n_faces][kept]  # fancy indexing copies
        texcoords = model.mesh_facetexcoord[face_adr : face_adr + n_faces][kept] if textured else None
        model.mesh_face[rows] = corners[kept]
        model.mesh_facenormal[rows] = normals
        if texcoords is not None:
            model.mesh_facetexcoord[rows] = texcoords
        model.mesh_facenum[mesh] = len(kept)
    return before, int(model.mesh_facenum.sum())


def _close_all_renderers() -> None:
    for renderer in list(_LIVE):
        renderer.close()


class OffscreenRenderer:
    """One `mujoco.Renderer` for one model, created once and reused for every frame.

    Shadows, reflections and the skybox are off by default, and so is multisampling: in software GL (Mesa's
    llvmpipe on a 2-core machine) those passes cost far more than the scene itself, and the scene stays fully
    visible without them (see bench/render.py). `multisamples` sets MuJoCo's offscreen anti-aliasing
    (`model.vis.quality.offsamples`; MuJoCo's own default is 4, which about halves the frame rate here); it is
    written into `model` before the GL buffers are made, so this renderer should own its model.
    `mesh_cell` > 0 coarsens the model's meshes for drawing (`simplify_meshes`, in place, physics untouched).
    Frames from cameras in `FLIPPED_CAMERAS` are turned upright unless `upright=False`.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        *,
        width: int = 224,
        height: int = 224,
        camera: str = "corner",
        multisamples: int = 0,
        shadows: bool = False,
        reflections: bool = False,
        skybox: bool = False,
        upright: bool = True,
        mesh_cell: float = 0.0,
    ) -> None:
        if multisamples < 0:
            raise ValueError(f"multisamples={multisamples}: expected 0 (off) or a positive sample count")
        self.model = model
        self.width, self.height = int(width), int(height)
        self.camera = camera
        self.upright = upright
        self._cameras: dict[str, mujoco.MjvCamera] = {}
        self._camera_for(camera)  # fail early on an unknown camera name
        model.vis.quality.offsamples = multisamples
        self.faces = simplify_meshes(model, mesh_cell)  # (before, after); before the context uploads the meshes
        # MuJoCo's offscreen buffer defaults to 640x480; grow it rather than refuse larger frames.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        try:
            self._renderer = mujoco.Renderer(model, height=self.height, width=self.width)
        except Exception as error:  # mujoco raises several types (ImportError, RuntimeError, GLError)
            raise GLBackendError(f"{gl_help()}\nUnderlying error: {type(error).__name__}: {error}") from error
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = shadows
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = reflections
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = skybox
        _LIVE.add(self)
        global _EXIT_HOOK_REGISTERED
        if not _EXIT_HOOK_REGISTERED:
            # Registered after the first GL context exists, so it runs before mujoco's eglTerminate (LIFO).
            atexit.register(_close_all_renderers)
            _EXIT_HOOK_REGISTERED = True

    def _camera_for(self, name: str) -> mujoco.MjvCamera:
        camera = self._cameras.get(name)
        if camera is None:
            camera_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if camera_id < 0:
                names = [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]
                raise ValueError(f"unknown camera {name!r}; this model has cameras {names}")
            camera = mujoco.MjvCamera()
            camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
            camera.fixedcamid = camera_id
            self._cameras[name] = camera
        return camera

    def render(self, data: mujoco.MjData, camera: str | None = None) -> np.ndarray:
        """The current scene as a new (height, width, 3) uint8 array, upright."""
        if self._renderer is None:
            raise RuntimeError("render() called after close()")
        name = camera or self.camera
        self._renderer.update_scene(data, camera=self._camera_for(name))
        frame = self._renderer.render()
        if self.upright and name in FLIPPED_CAMERAS:
            frame = np.ascontiguousarray(frame[::-1, ::-1])
        return frame

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            try:
                renderer.close()
            except Exception:  # freeing a context during interpreter teardown can fail harmlessly
                pass
        _LIVE.discard(self)

    def __enter__(self) -> OffscreenRenderer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
