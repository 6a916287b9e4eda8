"""What each CUDA kernel of picnn_ext may use on sm_90, and why (read by sass_check.py).

Kernels are matched by the base name of their __global__ function as demangled (namespaces and template
arguments stripped), so moving code between files or namespaces does not change which budget applies. A kernel
with no entry gets DEFAULT and is reported as such.

Registers: every element kernel is launched with 256 threads (kThreads, __launch_bounds__(256)). The design
point is 4 blocks = 1024 threads = 32 warps per SM (50% occupancy): with kUnroll = 4 packs of 16 bytes per
lane that is 64 KiB of loads in flight per SM, above the ~27 KiB Little's law asks for at the H200's
4.8 TB/s over 132 SMs and ~750 ns of DRAM latency (BENCHMARKS.md, predicted roofline). 65536 registers /
1024 threads = 64 registers per thread. A kernel over its budget loses a block per SM (72 registers: 3 blocks,
24 warps), which is what the check is there to catch.

Stack: the kernels that check their arguments call printf (a device-side assertion naming the argument) from
an out-of-line cold function (bad_probability in gate_kernels.cuh, bad_logits in sample_class_cuda.cu,
PICNN_NOINLINE): its argument buffer is the only stack they may have, and the hot code around the call saves
nothing (no STL/LDL). ptxas reports the buffer as the kernel's stack: 16 bytes for the gate's (an int64 index and
a double), 8 for sample_class's (an int64 row). Kernels without that path get 0: any stack there is a local
array (which shows up as STACK, not always as LOCAL).

Shared: the gate kernels use dynamic shared memory only (sized by the launch: K mask values, or the backward's
partial sums), so their static shared memory must be 0; sample_class_block_kernel holds one value and one
int64 index per warp of its 256 threads: 8 * (8 + 8) = 128 bytes.

packs: the instantiations with 16-byte packs (VEC > 1) must move x, y, grad_y, grad_x in their main loop with
128-bit global loads and stores only. `scalar_in_main_loop` names what else a main loop may read one value at a
time, with the reason; it must stay empty unless a reason is given.
"""

# Registers that keep 4 blocks of 256 threads per SM (65536 / 1024).
REGS_4_BLOCKS = 64

DEFAULT = {"regs": REGS_4_BLOCKS, "stack": 0, "shared": 0, "packs": False, "scalar_in_main_loop": None,
           "why": "no entry in sass_budgets.py: the default (4 blocks of 256 threads, no stack, no static shared)"}

_FORWARD = {"regs": REGS_4_BLOCKS, "stack": 16, "shared": 0, "packs": True, "scalar_in_main_loop": None,
            "why": "4 blocks of 256 per SM; stack for the assertion's printf buffer only (int64 + double)"}
_BACKWARD = {"regs": REGS_4_BLOCKS, "stack": 0, "shared": 0, "packs": True, "scalar_in_main_loop": None,
             "why": "4 blocks of 256 per SM; no assertion path, so no stack"}

# No kernel may have LDL or STL besides the printf buffer (`local_ops`, the allowance for stack traffic, is 0 for
# all since issue 18 point 4, measured on the nvcc 13.0 build): the values the inlined printf used to save and
# reload went with the cold functions, and the runtime-indexed PhiloxBlock of sample_class with philox_word's
# select chain. An entry may set `local_ops` (with `local_why`) again only with a reason and a change to make.
BUDGETS = {
    "gate_forward_rows_kernel": _FORWARD,
    "gate_backward_rows_kernel": _BACKWARD,
    # kDraw = false (channels last, K above 16K) copies a tile of the mask to shared memory first, so its element
    # loop is held to the same rule as kDraw = true: 128-bit accesses only, 64 registers.
    "gate_forward_columns_kernel": _FORWARD,
    "gate_backward_columns_kernel": _BACKWARD,
    # One thread per Philox block of four (sample, channel) values, touched once: no packs.
    "gate_mask_kernel": {"regs": REGS_4_BLOCKS, "stack": 16, "shared": 0, "packs": False,
                         "scalar_in_main_loop": None, "why": "4 blocks of 256 per SM; printf buffer stack"},
    "philox_uniform_kernel": {"regs": REGS_4_BLOCKS, "stack": 0, "shared": 0, "packs": False,
                              "scalar_in_main_loop": None, "why": "4 blocks of 256 per SM"},
    # A warp per sample over the classes: the row is read one logit per lane (a reduction, not a copy).
    "sample_class_kernel": {"regs": REGS_4_BLOCKS, "stack": 8, "shared": 0, "packs": False,
                            "scalar_in_main_loop": None, "why": "4 blocks of 256 per SM; printf buffer stack (int64)"},
    "sample_class_block_kernel": {"regs": REGS_4_BLOCKS, "stack": 8, "shared": 128, "packs": False,
                                  "scalar_in_main_loop": None,
                                  "why": "4 blocks of 256 per SM; printf buffer stack; per-warp value and index in shared"},
    "sample_class_backward_kernel": {"regs": REGS_4_BLOCKS, "stack": 0, "shared": 0, "packs": False,
                                     "scalar_in_main_loop": None, "why": "4 blocks of 256 per SM"},
}


def budget_for(base_name):
    """The budget of a kernel base name and whether it came from BUDGETS (False: DEFAULT)."""
    if base_name in BUDGETS:
        return BUDGETS[base_name], True
    return DEFAULT, False
