"""A predicted roofline of the bernoulli_gate CUDA kernels on an H200, for each case of the GPU suite, from
the register counts that sass_check.py reads out of the sm_90 build and the launch rules of csrc/cuda.

A prediction, not a measurement: nothing here ran on a GPU. The GPU issue holds these numbers against
measurements. Prints a Markdown table (BENCHMARKS.md, "Predicted roofline").

    python benchmarks/roofline_prediction.py [path/to/_C_cuda*.so]

With a library, registers are read from it (sass_check.check); without one, REGS below (read from the nvcc 13.0
build with sass_check.py) are used.
"""
import math
import sys

# Assumptions (stated in BENCHMARKS.md): NVIDIA's H200 datasheet: 4.8 TB/s HBM3e, 141 GB; GH100 as in H200 SXM:
# 132 SMs, 65536 registers, 2048 threads, 32 blocks and 228 KiB shared memory per SM. DRAM latency under load:
# an assumption of 750 ns (to be measured by the GPU issue).
BANDWIDTH = 4.8e12
SMS, REGS_PER_SM, THREADS_PER_SM, SHARED_PER_SM = 132, 65536, 2048, 228 * 1024
LATENCY = 750e-9
NEED_PER_SM = BANDWIDTH * LATENCY / SMS  # bytes in flight per SM that Little's law asks for
TARGET = 0.85
THREADS = 256
ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
SASS_DTYPE = {"float32": "float", "bfloat16": "BFloat16", "float16": "Half"}
VEC = {"float32": 4, "bfloat16": 8, "float16": 8}

# (kernel, dtype) -> registers, from `python benchmarks/sass_check.py` on the FORCE_CUDA build (VEC > 1, kDraw).
REGS = {("gate_forward_rows_kernel", "float32"): 39, ("gate_forward_rows_kernel", "bfloat16"): 40,
        ("gate_forward_rows_kernel", "float16"): 40, ("gate_backward_rows_kernel", "float32"): 56,
        ("gate_backward_rows_kernel", "bfloat16"): 63, ("gate_backward_rows_kernel", "float16"): 64,
        ("gate_forward_columns_kernel", "float32"): 46, ("gate_forward_columns_kernel", "bfloat16"): 48,
        ("gate_forward_columns_kernel", "float16"): 48, ("gate_backward_columns_kernel", "float32"): 44,
        ("gate_backward_columns_kernel", "bfloat16"): 50, ("gate_backward_columns_kernel", "float16"): 50}

CASES = [("maps", 256, 512, 196), ("maps", 256, 2048, 49), ("maps", 256, 64, 3136), ("tokens", 256, 768, 197)]


def group_size_for(packs):
    group = 1
    while group < 32 and group < packs:
        group *= 2
    return group


def blocks_per_sm(regs, threads=THREADS, shared=0):
    per_thread = 8 * math.ceil(regs / 8)  # registers are allocated 256 per warp
    by_regs = REGS_PER_SM // (per_thread * threads)
    by_shared = SHARED_PER_SM // (shared + 1024) if shared else 32
    return min(by_regs, THREADS_PER_SM // threads, 32, by_shared)


def predict(kernel, dtype, B, K, S, regs):
    """(bytes moved, blocks per SM, bytes in flight per SM, work balance) of one launch."""
    e, vec = ELEMENT[dtype], VEC[dtype]
    n = B * K * S
    backward = "backward" in kernel
    tensors = 3 if backward else 2  # forward: x in, y out; backward: grad_y, x in, grad_x out
    moved = tensors * n * e + B * K * 8  # plus p (or the mask) in and the mask (or grad_p) out, float32
    loads = 2 if backward else 1  # 16-byte loads per pack step
    balance = 1.0
    if "rows" in kernel:
        packs = S * e / 16
        # rows_group_for: up to kUnroll packs per lane; the unrolled loop and the predicated rest both issue all of
        # a lane's loads before its stores, so a lane has min(4, packs / group) loads in flight (on average).
        group = group_size_for(math.ceil(math.ceil(packs) / 4))
        per_lane = min(4.0, packs / group)
        shared = 0
        resident = blocks_per_sm(regs)
        flight = resident * THREADS * per_lane * loads * 16
    elif not backward:
        shared = K * 4
        resident = blocks_per_sm(regs, shared=shared)
        per = max(1, min(S, 16384 // K))
        packs_per_thread = per * K * e / 16 / THREADS
        per_lane = 4 if packs_per_thread >= 4 else 1
        flight = resident * THREADS * per_lane * 16
    else:
        k_packs = K // vec
        tx = group_size_for(k_packs)  # launch_gate_backward_columns: narrower tiles until 16 tasks per SM, not below 8
        while tx > 8 and B * math.ceil(k_packs / tx) < 16 * SMS:
            tx //= 2
        tasks = B * math.ceil(k_packs / tx)
        blocks = min(tasks, SMS * 64)
        shared = THREADS * vec * 4
        resident = blocks_per_sm(regs, shared=shared)
        # One task per block when tasks < the cap: the blocks come in waves of resident * SMS, and the SMs of a
        # partial last wave idle; fewer blocks than one wave spread ceil(blocks / SMS) per SM.
        resident = min(resident, math.ceil(blocks / SMS))
        waves = blocks / (resident * SMS)
        balance = waves / math.ceil(waves)
        flight = resident * THREADS * 2 * loads * 16  # two positions in flight per thread
    return moved, resident, flight, balance


def rows(regs=REGS):
    out = []
    for dtype in ("float32", "bfloat16", "float16"):
        for kind, B, K, S in CASES:
            layouts = ["contiguous", "channels_last"] if kind == "maps" else ["tokens (B, S, K)"]
            for layout in layouts:
                memory = "rows" if layout == "contiguous" else "columns"
                for direction in ("forward", "backward"):
                    kernel = f"gate_{direction}_{memory}_kernel"
                    r = regs[(kernel, dtype)]
                    moved, resident, flight, balance = predict(kernel, dtype, B, K, S, r)
                    fraction = min(1.0, flight / NEED_PER_SM) * balance
                    out.append({"dtype": dtype, "shape": f"{K}x{S}" if kind == "tokens" else f"{K}, {S}",
                                "layout": layout, "kernel": kernel.replace("gate_", "").replace("_kernel", ""),
                                "regs": r, "warps": resident * THREADS // 32, "MB": moved / 1e6,
                                "us": moved / BANDWIDTH * 1e6, "flight": flight / 1024, "balance": balance,
                                "fraction": fraction, "short": fraction < TARGET})
    return out


def library_regs(path):
    sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    import sass_check
    table, _ = sass_check.check(path)
    regs = {}
    for (kernel, dtype), _ in REGS.items():
        for row in table:
            draw_ok = kernel != "gate_forward_columns_kernel" or row["args"] == "true"
            if row["kernel"] == kernel and row["dtype"] == SASS_DTYPE[dtype] and row["vec"] == VEC[dtype] and draw_ok:
                regs[(kernel, dtype)] = row["regs"]
    return regs


def main(argv):
    regs = library_regs(argv[0]) if argv else REGS
    print(f"Assumed: {BANDWIDTH / 1e12:.1f} TB/s, {SMS} SMs, {LATENCY * 1e9:.0f} ns latency: "
          f"{NEED_PER_SM / 1024:.1f} KiB in flight per SM needed; B = 256\n")
    print("| dtype | K, HxW | layout | kernel | regs | warps/SM | MB moved | us at 4.8 TB/s | KiB in flight/SM "
          "| wave balance | predicted fraction | below 85% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows(regs):
        print(f"| {r['dtype']} | {r['shape']} | {r['layout']} | {r['kernel']} | {r['regs']} | {r['warps']} | "
              f"{r['MB']:.1f} | {r['us']:.1f} | {r['flight']:.0f} | {r['balance']:.2f} | {r['fraction']:.2f} | "
              f"{'yes' if r['short'] else ''} |")


if __name__ == "__main__":
    main(sys.argv[1:])
