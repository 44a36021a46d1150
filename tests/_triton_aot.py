"""Compiles every Triton kernel of miga_fast for the default CUDA arch (csrc/DEFAULT_CUDA_ARCH)
with Triton's compiler and ptxas, no GPU needed, and prints one JSON line: per kernel its
resource usage (cuobjdump) and whether its float scalars arrive as float64 parameters.
Run without TRITON_INTERPRET (tests/test_triton_kernels.py does). Exit status 3: a tool
is missing (the test skips)."""

import importlib
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

F32, F64 = "*fp32", "*fp64"
# per kernel: the pointer dtypes (default *fp32), the constexprs and the launch options
# (num_warps; Triton's default 4 otherwise) of one representative launch, as its launcher makes it
AOT = {
    "_linf_kernel": ({}, {"HAS_GRAD": True, "IMAGE": False, "BLOCK": 1024}),
    "_reduce_kernel": ({"part_ptr": F64}, {"MODE": 0, "PASS": 0, "NPART": 64, "BLOCK": 1024}),
    "_update_kernel": ({"part_ptr": F64}, {"MODE": 2, "SCALED": False, "NPART": 64, "BLOCK": 1024}),
    "_hmoments_kernel": ({}, {"K": 11, "BH": 8, "BW": 32}),
    "_ssim_kernel": ({"part_ptr": F64}, {"K": 11, "WITH_GRAD": True, "BH": 8, "BW": 32}),
    "_hgrad_kernel": ({}, {"K": 11, "BH": 8, "BW": 32}),
    "_ssim_grad_kernel": ({}, {"K": 11, "BH": 8, "BW": 32}),
    "_ball_moments_kernel": ({"hor_ptr": F64, "win_ptr": F64, "mom_ptr": F64}, {"K": 11, "BH": 8, "BW": 32}),
    "_ball_sums_kernel": ({"mom_ptr": F64, "ts_ptr": F64, "part_ptr": F64}, {"NT": 16, "BLOCK": 256}),
    "_window_ball_kernel": ({}, {"WIN": 8, "BLOCK": 64, "COMPUTE": tl.float32}),
    "_lse_kernel": ({}, {"ACT": 2, "EXCL": True, "BI": 64, "BJ": 64}),
    "_grad_rows_kernel": ({}, {"ACT": 2, "EXCL": True, "BI": 64, "BJ": 64}, {"num_warps": 16}),
    "_grad_cols_kernel": ({}, {"ACT": 2, "EXCL": True, "BI": 64, "BJ": 64}, {"num_warps": 16}),
    "_sampler_forward_kernel": (
        {},
        {"MODE": 2, "HAS_MASK": True, "HAS_JUMP": True, "CLIP": True, "HAS_NOISE": True, "BLOCK": 1024},
    ),
    "_sampler_backward_kernel": (
        {},
        {
            "MODE": 2,
            "HAS_MASK": True,
            "HAS_JUMP": True,
            "CLIP": True,
            "NEED_X": True,
            "NEED_E": True,
            "NEED_K": True,
            "BLOCK": 1024,
        },
    ),
}


def cuobjdump_path():
    for path in (
        shutil.which("cuobjdump"),
        "/usr/local/cuda/bin/cuobjdump",
        str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"),
    ):
        if path and Path(path).exists():
            return path
    return None


def resources(cuobjdump, binary: Path) -> dict:
    """{function: {REG, STACK, SHARED, LOCAL, ...}} from `cuobjdump --dump-resource-usage`."""
    out = subprocess.run(
        [cuobjdump, "--dump-resource-usage", str(binary)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    res, name = {}, None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Function "):
            name = line[len("Function ") :].rstrip(":")
        elif name and line.startswith("REG:"):
            res[name] = {k: int(v) for k, v in (f.split(":") for f in line.split() if f.split(":")[1].isdigit())}
            name = None
    return res


def default_arch() -> int:
    root = Path(__file__).resolve().parents[1]
    return int(float((root / "csrc" / "DEFAULT_CUDA_ARCH").read_text().split()[0]) * 10)


def main() -> int:
    cuobjdump = cuobjdump_path()
    if cuobjdump is None:
        print("no cuobjdump (CUDA toolkit or Triton's NVIDIA backend)")
        return 3
    kernels = importlib.import_module("miga_fast.triton_kernels")
    found = {}
    for family in ("projection", "ssim", "mine", "sampler"):
        for name, obj in vars(getattr(kernels, family)).items():
            if name.endswith("_kernel") and isinstance(obj, triton.runtime.jit.JITFunction):
                found[name] = obj
    if set(found) != set(AOT):
        print(f"kernels without an AOT entry or gone: {sorted(set(found) ^ set(AOT))}", file=sys.stderr)
        return 1
    target = GPUTarget("cuda", default_arch(), 32)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pointers, constexprs, *options) in AOT.items():
            fn = found[name]
            signature, floats = {}, []
            for p in inspect.signature(fn.fn).parameters.values():
                if p.name in constexprs:
                    signature[p.name] = "constexpr"
                elif p.name.endswith("_ptr"):
                    signature[p.name] = pointers.get(p.name, F32)
                else:
                    signature[p.name] = triton.runtime.jit._normalize_ty(p.annotation)
                    floats += [p.name] if signature[p.name] == "fp64" else []
            source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
            compiled = triton.compile(source, target=target, options=options[0] if options else None)
            cubin = Path(tmp) / f"{name}.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            (usage,) = resources(cuobjdump, cubin).values()
            params = [line for line in compiled.asm["ptx"].splitlines() if ".param ." in line]
            usage["fp64_scalars_as_f64"] = sum(".param .f64" in line for line in params) >= len(floats)
            report[name] = usage
    if "--markdown" in sys.argv:
        print_markdown(report, cuobjdump)
    else:
        print(json.dumps(report))
    return 0


def _short(mangled: str) -> str:
    """`lse_kernel<Elu<float>, float>` for a mangled CUDA kernel (c++filt, when installed)."""
    import re

    if shutil.which("c++filt") is None:
        return mangled
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True, timeout=30).stdout.strip()
    name = re.sub(r"^void |\(anonymous namespace\)::|miga_fast::|cuda::", "", name)
    return name.split("(")[0]


def print_markdown(triton_report: dict, cuobjdump: str) -> None:
    """The tables of docs/kernels.md: registers, shared memory and stack of every kernel."""
    print(f"| Triton kernel (sm_{default_arch()}) | registers | shared B | stack B |")
    print("|---|---:|---:|---:|")
    for name, u in triton_report.items():
        print(f"| `{name}` | {u['REG']} | {u['SHARED']} | {u['STACK']} |")
    try:
        ext = importlib.import_module("miga_fast._C")
    except ImportError:
        return
    usage = resources(cuobjdump, Path(ext.__file__))
    print()
    print("| CUDA kernel (instantiation) | registers | static shared B | stack B |")
    print("|---|---:|---:|---:|")
    for name, u in sorted(((_short(m), u) for m, u in usage.items()), key=lambda nu: nu[0]):
        print(f"| `{name}` | {u['REG']} | {u['SHARED']} | {u['STACK']} |")


if __name__ == "__main__":
    sys.exit(main())
