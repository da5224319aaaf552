"""Run conditions (CPU, flags, cores, versions, git commit) and installed sizes of dependencies."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

# Instruction-set flags that decide int8 and fp32 GEMM speed, as Linux names them.
SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_int8", "amx_bf16")
VERSIONS_OF = ("rewardrt", "torch", "transformers", "tokenizers", "safetensors", "onnxruntime", "onnx",
               "numpy", "scipy", "matplotlib", "psutil")


def cpu_info() -> dict:
    """Model name, flags of interest and core counts; /proc/cpuinfo on Linux, py-cpuinfo elsewhere."""
    name, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    if not name or not flags:
        try:
            import cpuinfo as pycpuinfo

            info = pycpuinfo.get_cpu_info()
            name = name or info.get("brand_raw", "")
            flags = flags or set(info.get("flags", []))
        except Exception:  # py-cpuinfo probes the CPU in ways that can fail on odd platforms
            pass
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return {
        "model": name or platform.processor() or "unknown",
        "machine": platform.machine(),
        "flags": {f: f in flags for f in SIMD_FLAGS},
        "int8_dot_product": "VNNI" if {"avx512_vnni", "avx_vnni"} & flags
        else ("AVX2 (no VNNI)" if "avx2" in flags else "none"),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "cores_available": available,
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONS_OF:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(source: Path) -> dict:
    """The commit of the source tree running the bench, and whether it has local changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def conditions(threads: tuple[int, ...]) -> dict:
    return {
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "versions": versions(),
        "threads": list(threads),
        "git": git_commit(Path(__file__).resolve().parent),
        "python": sys.executable,
    }


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(roots: tuple[str, ...]) -> list[str]:
    """Installed distributions ``roots`` need at run time: requirements followed transitively,
    extras not taken, environment markers evaluated here."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = _canonical(name)
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist.metadata["Name"]
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return sorted(seen.values(), key=str.lower)


def distribution_bytes(name: str) -> int:
    """Bytes of the files a distribution installed (from its RECORD)."""
    dist = md.distribution(name)
    total = 0
    for f in dist.files or []:
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass
    if _canonical(name) == "rewardrt":  # an editable install records no sources: count them
        import rewardrt.runtime

        for path in Path(rewardrt.runtime.__file__).parent.rglob("*.py"):
            total += path.stat().st_size
    return total


def installed_size(roots: tuple[str, ...]) -> dict:
    dists = dependency_closure(roots)
    sizes = {d: distribution_bytes(d) for d in dists}
    return {"bytes": sum(sizes.values()), "distributions": sizes}
