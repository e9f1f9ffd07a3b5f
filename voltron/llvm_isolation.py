"""Load Triton's bundled LLVM so that it never binds to another LLVM already in the process (Mesa's, for rendering).

Why the process died: Mesa's software GL (llvmpipe, through `MUJOCO_GL=egl` or `osmesa` without a GPU driver) loads
the system `libLLVM-<N>.so`, and Mesa's DRI loader opens its driver with RTLD_GLOBAL, so every LLVM symbol of that
library joins the process's global symbol scope. Triton's `libtriton.so` carries its own, newer LLVM and exports
those symbols too. The dynamic linker searches the global scope before a library's own definitions, so when
`libtriton.so` is loaded after a render, its LLVM calls bind to Mesa's LLVM (LD_DEBUG=bindings shows
`libtriton.so ... to libLLVM-15.so.1: normal symbol _ZN4llvm...`) and its static constructors crash inside the
other version (SIGSEGV in the import of `triton._C.libtriton`). `torch.compile` and distributed checkpointing
import Triton lazily, so any render-then-compile order in one process crashed. The other order is safe: Python
loads extension modules RTLD_LOCAL, so Triton's symbols never enter the global scope that Mesa searches.

The fix: when `triton._C.libtriton` is imported while another libLLVM is mapped, it is loaded with RTLD_DEEPBIND,
which makes the library resolve its own symbols before the global scope. Choosing another Mesa driver does not
help (softpipe lives in the same `swrast_dri.so`, which links libLLVM just the same), and loading Triton first
everywhere cannot cover a user who renders before importing voltron. DEEPBIND is used only when needed, because
it also bypasses interposers such as sanitizer runtimes. `install()` runs when voltron is imported, and is cheap:
one finder on `sys.meta_path` that looks at a single module name.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

GUARDED_MODULES = frozenset({"triton._C.libtriton"})  # extension modules that bundle (and export) an LLVM


def other_llvm_loaded() -> bool:
    """Whether a shared libLLVM (Mesa's llvmpipe dependency, for one) is mapped into this process."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libLLVM" in line for line in maps)
    except OSError:  # no procfs (macOS, Windows): Mesa's LLVM clash is a Linux matter
        return False


class _DeepBindLoader(importlib.machinery.ExtensionFileLoader):
    def create_module(self, spec):
        flags = sys.getdlopenflags()
        if other_llvm_loaded():
            sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            return super().create_module(spec)
        finally:
            sys.setdlopenflags(flags)


class _GuardedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in GUARDED_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            spec.loader = _DeepBindLoader(spec.loader.name, spec.loader.path)
        return spec


def install() -> None:
    """Guard later imports of Triton's LLVM (idempotent; a no-op where RTLD_DEEPBIND does not exist)."""
    if not hasattr(os, "RTLD_DEEPBIND") or any(isinstance(f, _GuardedFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _GuardedFinder())
