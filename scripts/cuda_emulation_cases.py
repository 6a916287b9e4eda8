"""The cases of scripts/test_cuda_emulation.sh: the CUDA kernels (csrc/cuda/*.cu compiled under the emulation,
torch.ops.picnn_emu) against the compiled CPU backend (torch.ops.picnn), and the planted-bug kernels.

Usage: python scripts/cuda_emulation_cases.py LIBRARY [--planted FLAVOUR] [--quick]
Prints one line per case and `N passed, N failed`; exits 1 on any failure.
"""
import os
import subprocess
import sys

import torch

import picnn_ext  # noqa: F401  (loads the compiled CPU backend, which defines the picnn schemas)

LIB = sys.argv[1]
torch.ops.load_library(LIB)
cpu, emu = torch.ops.picnn, torch.ops.picnn_emu
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# grad_p (a sum over positions in the opmath dtype) against a float64 reference: relative to sum |grad_y * x|
GRAD_P_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 1e-2}
results = []


def case(name, fn):
    try:
        problem = fn()
    except Exception as error:  # noqa: BLE001  (a case that raises is a failed case, with its message)
        problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    results.append(problem is None)
    print(("ok     " if problem is None else "FAILED ") + name + ("" if problem is None else f": {problem}"), flush=True)


def misaligned(shape, dtype, offset):
    """A tensor of `shape` whose storage starts `offset` elements into its buffer (scalar heads and tails)."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + offset, dtype=torch.float64).to(dtype)[offset:].view(shape)


def gate_case(B, K, S, dtype, columns, hard, noise_given, offset):
    def run():
        torch.manual_seed(B * 1000 + K * 10 + S)
        shape = (B, S, K) if columns else (B, K, S)
        channel_dim = -1 if columns else 1
        x = misaligned(shape, dtype, offset)
        p = torch.rand(B, K, dtype=torch.float32 if dtype != torch.float64 else dtype)
        noise = torch.rand(B, K, dtype=p.dtype) if noise_given else None
        seed = torch.randint(0, 2**31, ()).item()
        torch.manual_seed(seed)
        y_cpu, m_cpu = cpu.bernoulli_gate(x, p, hard, noise, None, channel_dim)
        torch.manual_seed(seed)
        y_emu, m_emu = emu.bernoulli_gate(x, p, hard, noise, None, channel_dim)
        if not torch.equal(m_cpu, m_emu):
            return f"mask differs at {(m_cpu != m_emu).sum().item()} of {m_cpu.numel()}"
        if not torch.equal(y_cpu, y_emu):
            return "y differs"
        gy = misaligned(shape, dtype, offset)
        gx_cpu, _ = cpu.bernoulli_gate_backward(gy, x, m_cpu, channel_dim)
        gx_emu, gp_emu = emu.bernoulli_gate_backward(gy, x, m_emu, channel_dim)
        _, gp_again = emu.bernoulli_gate_backward(gy, x, m_emu, channel_dim)
        if not torch.equal(gx_cpu, gx_emu):
            return "grad_x differs"
        if not torch.equal(gp_emu, gp_again):
            return "grad_p differs from run to run"
        prod = gy.double() * x.double()
        dims = 1 if columns else 2
        exact = prod.sum(dims)
        scale = prod.abs().sum(dims) + 1e-30
        err = ((gp_emu.double() - exact).abs() / scale).max().item() if exact.numel() else 0.0
        if gp_emu.dtype != m_emu.dtype or gp_emu.shape != (B, K):
            return f"grad_p has dtype {gp_emu.dtype} shape {tuple(gp_emu.shape)}"
        if err > GRAD_P_TOL[dtype] + (1e-3 if gp_emu.dtype in (torch.float16, torch.bfloat16) else 0):
            return f"grad_p relative error {err:.3g}"
        return None
    return run


def philox_case(B, K, seed, offset):
    def run():
        like = torch.empty(B, K)
        return None if torch.equal(cpu.philox_uniform(like, seed, offset), emu.philox_uniform(like, seed, offset)) \
            else "uniforms differ"
    return run


def sample_case(B, C, dtype, noise_given):
    def run():
        torch.manual_seed(C + B)
        logits = (3 * torch.randn(B, C, dtype=torch.float64)).to(dtype)
        noise = torch.rand(B, dtype=torch.float64 if dtype == torch.float64 else torch.float32) if noise_given else None
        torch.manual_seed(7)
        oh_cpu, i_cpu = cpu.sample_class(logits, noise, None)
        torch.manual_seed(7)
        oh_emu, i_emu = emu.sample_class(logits, noise, None)
        if not torch.equal(i_cpu, i_emu):
            return f"indices differ at {(i_cpu != i_emu).sum().item()} of {B} rows"
        if not torch.equal(oh_cpu, oh_emu):
            return "one-hot differs"
        g = torch.randn(B, C, dtype=torch.float64).to(dtype)
        gl_cpu = cpu.sample_class_backward(g, logits)
        gl_emu = emu.sample_class_backward(g, logits)
        if not torch.equal(gl_emu, emu.sample_class_backward(g, logits)):
            return "grad_logits differs from run to run"
        tol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
        if not torch.allclose(gl_emu.double(), gl_cpu.double(), atol=tol, rtol=tol):
            return f"grad_logits differs by {(gl_emu.double() - gl_cpu.double()).abs().max().item():.3g}"
        return None
    return run


def child(code):
    """Runs `code` in a child process (a failed launch leaves nothing behind); returns (rc, stdout + stderr)."""
    prog = f"import sys, torch, picnn_ext; torch.ops.load_library({LIB!r}); {code}"
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300, env=os.environ)
    return r.returncode, r.stdout + r.stderr


def assertion_case(code, words):
    def run():
        rc, out = child(f"""
try:
    {code}
except RuntimeError as e:
    print('RAISED', e)
""")
        missing = [w for w in words + ["RAISED"] if w not in out]
        return None if rc == 0 and not missing else f"rc {rc}, missing {missing} in: {out[-400:]}"
    return run


# Which planted bug each build must report, and the words that show it was this bug that was reported.
PLANTED = {
    "plain": {"shuffle_skipped": ["bug_shuffle_skipped_kernel", "divergent warp operation"],
              "branch_barrier": ["bug_branch_barrier_kernel", "divergent __syncthreads"]},
    "tsan": {"missing_barrier": ["ThreadSanitizer: data race", "bug_missing_barrier_kernel"]},
    "asan": {"past_end": ["AddressSanitizer", "bug_past_end_kernel"],
             "misaligned_pack": ["misaligned address", "planted_bugs.cu"]},
}


def planted_case(name, words):
    def run():
        rc, out = child(f"torch.ops.picnn_emu_bugs.run({name!r}, torch.zeros(64))")
        missing = [w for w in words if w not in out]
        return None if rc != 0 and not missing else f"not reported (rc {rc}, missing {missing}): {out[-300:]}"
    return run


def main():
    quick = "--quick" in sys.argv
    flavour = sys.argv[sys.argv.index("--planted") + 1] if "--planted" in sys.argv else None
    shapes_rows = [(2, 5, 7), (1, 3, 33), (3, 4, 1), (2, 3, 0), (2, 0, 5), (1, 1, 1), (5, 7, 300), (2, 40, 16)]
    shapes_cols = [(2, 5, 7), (1, 33, 3), (3, 1, 4), (2, 0, 3), (2, 5, 0), (1, 1, 1), (2, 17, 64), (1, 3, 16400)]
    for dtype in DTYPES:
        for columns, shapes in ((False, shapes_rows), (True, shapes_cols)):
            for i, (B, K, S) in enumerate(shapes if not columns else [(b, k, s) for b, s, k in shapes]):
                for offset in ((0, 1) if not quick or i % 2 == 0 else (1,)):
                    hard, noise = (True, False) if i % 3 == 0 else (True, True) if i % 3 == 1 else (False, False)
                    if quick and i % 2:
                        hard, noise = True, False
                    name = f"gate {'(B,S,K)' if columns else '(B,K,S)'} B={B} K={K} S={S} {str(dtype)[6:]} " \
                           f"offset={offset} {'hard' if hard else 'soft'}{' noise' if noise else ''}"
                    case(name, gate_case(B, K, S, dtype, columns, hard, noise, offset))
    # lane groups 1..32 (rows of 1 to more than 32 packs), for the drawn mask of the rows forward
    for S in (1, 9, 17, 40, 70, 130, 260):
        case(f"gate (B,K,S) lane groups S={S} float32", gate_case(3, 11, S, torch.float32, False, True, False, 0))
    for B, K, seed, offset in ((1, 1, 0, 0), (3, 5, 1, 4), (7, 33, 2**40 + 3, 2**63 + 8 - 2**64), (2, 1000, 5, 12)):
        case(f"philox_uniform B={B} K={K} seed={seed} offset={offset}", philox_case(B, K, seed, offset))
    for dtype in DTYPES:
        for B, C in ((1, 1), (3, 5), (40, 33), (5, 1000), (3, 1025), (2, 3000)):
            for noise in ((False, True) if not quick else (B % 2 == 0,)):
                case(f"sample_class B={B} C={C} {str(dtype)[6:]}{' noise' if noise else ''}",
                     sample_case(B, C, dtype, noise))
    case("device-side assertion names p", assertion_case(
        "torch.ops.picnn_emu.bernoulli_gate(torch.randn(2, 3, 4), torch.full((2, 3), 1.5), True, None, None, 1)",
        ["p must hold probabilities", "device-side assert triggered", "gate_forward_rows_kernel"]))
    case("device-side assertion names logits", assertion_case(
        "torch.ops.picnn_emu.sample_class(torch.full((2, 40), float('nan')), None, None)",
        ["logits", "device-side assert triggered"]))
    case("printf and assertion of a planted kernel", assertion_case(
        "torch.ops.picnn_emu_bugs.run('assert_message', torch.zeros(64))",
        ["thread 3 of block 0 stops here", "planted assertion", "assert_message_kernel"]))
    if flavour:
        for name, words in PLANTED[flavour].items():
            case(f"planted bug reported ({flavour}): {name}", planted_case(name, words))
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


main()
