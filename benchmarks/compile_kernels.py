"""Compile every Triton kernel of `ttsplugin_kernels` for a GPU target, on a machine without a GPU.

Catches what an older Triton (the GPU machine has 3.6, CI 3.9) cannot compile, and reports registers and
spills from the bundled ptxas. Run it with the Triton you want to check, e.g. a scratch venv:

    python -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/t36/lib/python3.11/site-packages/zz_stack.pth
    /tmp/t36/bin/python benchmarks/compile_kernels.py --arch 90

(the .pth line lends torch from the project's venv; the scratch venv's own triton comes first).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def import_kernels():
    spec = importlib.util.spec_from_file_location(
        "ttsplugin_kernels",
        ROOT / "kernels" / "__init__.py",
        submodule_search_locations=[str(ROOT / "kernels")],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["ttsplugin_kernels"] = module
    spec.loader.exec_module(module)


def cases():
    """(kernel, signature, constexprs, num_warps, args divisible by 16) for the specialisations that matter."""
    from ttsplugin_kernels import affine_step_triton as affine
    from ttsplugin_kernels import resample_triton as rt

    ancestors_sig = {
        "log_weights_ptr": "*bf16", "uniforms_ptr": "*fp64", "rows_ptr": "*i1", "ancestors_ptr": "*i64",
        "n": "i32", "stride_lb": "i32", "stride_ln": "i32", "stride_ub": "i32", "stride_un": "i32",
        "stride_ab": "i32", "fixed_point_scale": "fp64", "SCHEME": "constexpr", "HAS_ROWS": "constexpr",
        "BLOCK": "constexpr", "LOG2_BLOCK": "constexpr",
    }  # fmt: skip
    for scheme in range(len(rt.SCHEMES)):
        for n in (32, 1024):
            block, log2_block, num_warps = rt._row_block(n)
            constants = {"SCHEME": scheme, "HAS_ROWS": True, "BLOCK": block, "LOG2_BLOCK": log2_block}
            yield rt._resample_ancestors_kernel, ancestors_sig, constants, num_warps, []
    fused_sig = {
        "log_weights_ptr": "*fp64", "uniforms_ptr": "*fp64", "rows_ptr": "*i1", "x_ptr": "*bf16", "out_ptr": "*bf16",
        "ancestors_ptr": "*i64", "n": "i32", "d": "i32", "num_d_blocks": "i32", "stride_lb": "i32",
        "stride_ln": "i32", "stride_ub": "i32", "stride_un": "i32", "stride_xb": "i64", "stride_xn": "i32",
        "stride_ob": "i64", "stride_on": "i32", "stride_ab": "i32", "fixed_point_scale": "fp64",
        "SCHEME": "constexpr", "HAS_ROWS": "constexpr", "IN_PLACE": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_D": "constexpr",
    }  # fmt: skip
    for scheme in range(len(rt.SCHEMES)):
        for n, in_place in ((4, False), (64, True)):
            block_n, block_d = rt.fused_launch_config(n, 262_144)
            constants = {"SCHEME": scheme, "HAS_ROWS": in_place, "IN_PLACE": in_place, "BLOCK_N": block_n,
                         "BLOCK_D": block_d}  # fmt: skip
            yield rt._resample_fused_kernel, fused_sig, constants, 4, ["x_ptr", "out_ptr"]
    gather_sig = {
        "x_ptr": "*bf16", "ancestors_ptr": "*i64", "out_ptr": "*bf16", "n_in": "i32", "n_out": "i32", "d": "i32",
        "num_slots": "i32", "stride_xb": "i64", "stride_xn": "i32", "stride_ab": "i32", "stride_an": "i32",
        "stride_ob": "i64", "stride_on": "i32", "num_d_blocks": "i32", "IN_PLACE": "constexpr",
        "ROWS": "constexpr", "BLOCK_D": "constexpr",
    }  # fmt: skip
    # A launch specialises pointers and ints divisible by 16 (here: a FLUX latent of 262,144 values).
    aligned = ["x_ptr", "ancestors_ptr", "out_ptr", "d", "stride_xb", "stride_xn", "stride_ob", "stride_on"]
    for in_place in (False, True):
        for d in (262_144, 3):
            rows, block_d, num_warps = rt.gather_launch_config(d)
            constants = {"IN_PLACE": in_place, "ROWS": rows, "BLOCK_D": block_d}
            yield (
                rt._gather_particles_kernel,
                gather_sig,
                constants,
                num_warps,
                aligned if d % 16 == 0 else [],
            )
    weights_sig = {
        "rewards_ptr": "*fp32", "weights_ptr": "*fp32", "ess_ptr": "*fp32", "n": "i32", "stride_rb": "i32",
        "stride_rn": "i32", "stride_wb": "i32", "inv_temperature": "fp32", "WRITE_WEIGHTS": "constexpr",
        "WRITE_ESS": "constexpr", "BLOCK": "constexpr",
    }  # fmt: skip
    block, _, num_warps = rt._row_block(1000)
    constants = {"WRITE_WEIGHTS": True, "WRITE_ESS": True, "BLOCK": block}
    yield rt._normalized_weights_kernel, weights_sig, constants, num_warps, []
    affine_sig = {
        "x_ptr": "*bf16", "velocity_ptr": "*bf16", "noise_ptr": "*bf16", "out_ptr": "*bf16", "coef_ptr": "*fp32",
        "n": "i32", "row_size": "i32", "num_rows": "i32", "coef_x": "fp32", "coef_velocity": "fp32",
        "coef_noise": "fp32", "seed": "i32", "HAS_NOISE": "constexpr", "ROW_COEFS": "constexpr", "BLOCK": "constexpr",
    }  # fmt: skip
    for has_noise in (True, False):
        for row_coefs in (False, True):
            constants = {"HAS_NOISE": has_noise, "ROW_COEFS": row_coefs, "BLOCK": affine._BLOCK}
            yield (
                affine._affine_step_kernel,
                affine_sig,
                constants,
                4,
                ["x_ptr", "velocity_ptr", "noise_ptr", "out_ptr"],
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100/H200")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-compile-check-"))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import_kernels()
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    target = GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    for kernel, signature, constants, num_warps, aligned in cases():
        start = time.time()
        attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
        compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
        usage = ""
        if ptxas.exists():
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
                ptx.write(compiled.asm["ptx"])
                ptx.flush()
                arch = f"sm_{args.arch}a" if args.arch >= 90 else f"sm_{args.arch}"
                info = subprocess.run(
                    [str(ptxas), f"-arch={arch}", "-v", ptx.name, "-o", os.devnull],
                    capture_output=True,
                    text=True,
                ).stderr
                registers = re.search(r"Used (\d+) registers", info)
                spills = re.search(r"(\d+) bytes spill stores", info)
                usage = f"{registers.group(1) if registers else '?'} registers, {spills.group(1) if spills else '?'} B spilled"
        print(f"{kernel.__name__:28s} {constants} warps={num_warps}: {time.time() - start:.1f} s, {usage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
