"""Checks the sm_90 code of every CUDA kernel instantiation in a built picnn_ext library, without a GPU.

    python benchmarks/sass_check.py path/to/_C_cuda*.so     (or a .cubin)

Reads `cuobjdump --dump-resource-usage` and `cuobjdump -sass` (the nvidia-cuda-cuobjdump pip package carries
the tool; it is looked for on PATH, then under nvidia/cu13/bin of every sys.path entry, then in
/usr/local/cuda/bin) and checks each kernel against its budget in sass_budgets.py:

  spill      no LDL anywhere, no STL except the printf argument buffer just before a call, LOCAL 0,
             STACK within the kernel's budget (a local array shows up as stack, not always as LOCAL);
  registers  within the budget (the occupancy the kernel is designed for);
  packs      with 16-byte packs, the main element loop moves data with 128-bit global loads and stores only;
  div64      no 64-bit integer division or modulo (a call into nvcc's 64-bit divide routine, or the routine's
             I2F.U64.RP inline) in an element loop (an innermost loop that touches global memory);
  shared     static shared memory within the budget.

Prints one row per instantiation and exits 1 naming the kernel and the rule of every breach.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_budgets import budget_for  # noqa: E402

DTYPE_BYTES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "at::Half": 2, "at::BFloat16": 2,
               "__half": 2, "__nv_bfloat16": 2}
GLOBAL_OPS = ("LDG", "STG", "LD", "ST", "ATOMG", "ATOM", "RED")
SYSTEM_SHARED = 1024
PRINTF_WINDOW = 16  # instructions between the printf buffer's STL and the vprintf call


def find_tool(name):
    """The path of a CUDA binary tool, or None."""
    found = shutil.which(name)
    if found:
        return found
    for entry in sys.path + [os.path.join(os.path.dirname(sys.executable), "..", "lib")]:
        candidate = os.path.join(entry, "nvidia", "cu13", "bin", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    candidate = os.path.join("/usr/local/cuda/bin", name)
    return candidate if os.path.isfile(candidate) else None


def _run(args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def demangle(names):
    """Demangled names (c++filt), or the names themselves where c++filt is missing."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), check=True, capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def split_name(demangled):
    """(base name, template arguments) of a demangled kernel name, whatever its namespaces."""
    text = re.sub(r"^void\s+", "", demangled.strip()).replace("(anonymous namespace)", "anon")
    depth, cut = 0, len(text)
    for i, c in enumerate(text):  # the function name ends at the first top-level "("
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            cut = i
            break
    head = text[:cut]
    args = []
    if head.endswith(">"):
        depth, start = 0, None
        for i, c in enumerate(head):
            if c == "<":
                depth += 1
                if depth == 1 and start is None:
                    start = i
            elif c == ">":
                depth -= 1
        inner = head[start + 1:-1]
        depth, part = 0, ""
        for c in inner:
            if c == "," and depth == 0:
                args.append(part.strip())
                part = ""
                continue
            depth += c == "<"
            depth -= c == ">"
            part += c
        args.append(part.strip())
        head = head[:start]
    base = head.split("::")[-1]
    return base, args


def parse_resources(text):
    """{mangled name: {REG, STACK, SHARED, LOCAL}} from cuobjdump --dump-resource-usage."""
    usage, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            usage[name] = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            name = None
    return usage


INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*([^;]*);")


def parse_sass(text):
    """{mangled name: [(address, opcode, operands)]} from cuobjdump -sass."""
    functions, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = INSTR.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return functions


def _target(operands):
    m = re.search(r"0x([0-9a-f]+)", operands)
    return int(m.group(1), 16) if m else None


def is_global(op):
    return op.split(".")[0] in GLOBAL_OPS


def analyse(code):
    """Counts and loop facts of one function's SASS."""
    unexplained = set()  # addresses of LDL and of STL that do not fill a printf buffer
    facts = {"ld128": 0, "st128": 0, "other_global": 0, "ldl": 0, "stl_unexplained": 0, "stl": 0}
    for i, (_, op, _) in enumerate(code):
        root = op.split(".")[0]
        if is_global(op):
            wide = ".128" in op
            if wide and root in ("LDG", "LD"):
                facts["ld128"] += 1
            elif wide and root in ("STG", "ST"):
                facts["st128"] += 1
            else:
                facts["other_global"] += 1
        if root == "LDL":
            facts["ldl"] += 1
            unexplained.add(code[i][0])
        if root == "STL":
            facts["stl"] += 1
            following = code[i + 1:i + 1 + PRINTF_WINDOW]
            if not any(o.startswith("CALL.ABS") for _, o, _ in following):
                facts["stl_unexplained"] += 1
                unexplained.add(code[i][0])
    # Subroutines that divide 64-bit integers: nvcc's slow path starts with I2F.U64.RP and ends with RET.
    index = {addr: i for i, (addr, _, _) in enumerate(code)}
    div64_routines = set()
    for addr, op, operands in code:
        if op.startswith("CALL.REL"):
            t = _target(operands)
            if t in index:
                for _, o, _ in code[index[t]:]:
                    if o.startswith("I2F.U64"):
                        div64_routines.add(t)
                        break
                    if o.startswith("RET"):
                        break
    loops = []
    for addr, op, operands in code:
        if op.startswith("BRA"):
            t = _target(operands)
            if t is not None and t < addr:
                loops.append((t, addr))
    innermost = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    element_loops = []
    for lo, hi in innermost:
        body = [(a, o, r) for a, o, r in code if lo <= a <= hi]
        glob = [o for _, o, _ in body if is_global(o)]
        if not glob:
            continue
        div64 = any(o.startswith("I2F.U64") for _, o, _ in body) or any(
            o.startswith("CALL.REL") and _target(r) in div64_routines for _, o, r in body)
        local = sum(a in unexplained for a, _, _ in body)
        element_loops.append({"range": (lo, hi), "wide": sum(".128" in o for o in glob), "local": local,
                              "narrow": sum(".128" not in o for o in glob), "div64": div64})
    facts["element_loops"] = element_loops
    return facts


def check_function(demangled, usage, facts, budgets=None):
    """The row of one kernel instantiation and its breaches [(kernel, rule, detail)]."""
    base, args = split_name(demangled)
    budget, known = (budgets[base], True) if budgets and base in budgets else budget_for(base)
    # An entry may tighten or loosen the budget of some instantiations, keyed by the template arguments
    # after dtype and vector width (gate_forward_columns_kernel's kDraw).
    budget = {**budget, **budget.get("by_args", {}).get(tuple(args[2:]), {})}
    dtype = args[0] if args else "-"
    vec = int(args[1]) if len(args) > 1 and args[1].isdigit() else 1
    breaches = []

    def breach(rule, detail):
        breaches.append((demangled, rule, detail))

    local_ops = facts["ldl"] + facts["stl_unexplained"]
    if local_ops > budget.get("local_ops", 0) or usage.get("LOCAL", 0):
        breach("spill", f"{facts['ldl']} LDL, {facts['stl_unexplained']} STL outside a printf buffer, "
                        f"LOCAL {usage.get('LOCAL', 0)}")
    if usage.get("STACK", 0) > budget["stack"]:
        breach("spill", f"stack {usage['STACK']} bytes > budget {budget['stack']} (a local array?)")
    if usage.get("REG", 0) > budget["regs"]:
        breach("registers", f"{usage['REG']} registers > budget {budget['regs']} ({budget['why']})")
    # sm_90 reserves 1 KiB of shared memory per block for the system in any kernel that uses shared memory.
    if usage.get("SHARED", 0) > budget["shared"] + (SYSTEM_SHARED if usage.get("SHARED", 0) else 0):
        breach("shared", f"static shared {usage['SHARED']} bytes > budget {budget['shared']}")
    packed = budget["packs"] and vec > 1 and vec * DTYPE_BYTES.get(dtype, 0) == 16
    if packed:
        loops = facts["element_loops"]
        main = max(loops, key=lambda lp: lp["wide"], default=None)
        if main is None or main["wide"] == 0:
            breach("packs", "no element loop with 128-bit global loads and stores")
        elif main["narrow"] and not budget["scalar_in_main_loop"]:
            breach("packs", f"main loop {main['range'][0]:#x}-{main['range'][1]:#x}: {main['narrow']} "
                            f"narrower global accesses beside {main['wide']} 128-bit ones")
        if facts["ld128"] == 0 or facts["st128"] == 0:
            breach("packs", f"{facts['ld128']} 128-bit loads, {facts['st128']} 128-bit stores")
    for lp in facts["element_loops"]:
        if lp["local"] and not budget.get("local_in_loop"):
            breach("spill", f"{lp['local']} LDL/STL inside the element loop at {lp['range'][0]:#x}-{lp['range'][1]:#x}")
        if lp["div64"]:
            breach("div64", f"64-bit integer division in the loop at {lp['range'][0]:#x}-{lp['range'][1]:#x}")
    row = {"kernel": base, "dtype": dtype.replace("c10::", ""), "vec": vec if len(args) > 1 else "-",
           "args": ",".join(args[2:]), "regs": usage.get("REG", "?"),
           "spills": facts["ldl"] + facts["stl_unexplained"] + usage.get("LOCAL", 0),
           "stack": usage.get("STACK", "?"), "shared": usage.get("SHARED", "?"), "ld128": facts["ld128"],
           "st128": facts["st128"], "other": facts["other_global"], "budget": ("known" if local_ops else "") if known else "default",
           "ok": "ok" if not breaches else "BREACH"}
    return row, breaches


def check(path, budgets=None):
    """(rows, breaches) for every kernel in a library or cubin."""
    tool = find_tool("cuobjdump")
    if tool is None:
        raise FileNotFoundError("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    usage = parse_resources(_run([tool, "--dump-resource-usage", path]))
    sass = parse_sass(_run([tool, "-sass", path]))
    names = demangle(sorted(set(usage) | set(sass)))
    rows, breaches = [], []
    for mangled in sorted(sass, key=lambda n: names[n]):
        row, found = check_function(names[mangled], usage.get(mangled, {}), analyse(sass[mangled]), budgets)
        rows.append(row)
        breaches += found
    if not rows:
        breaches.append((path, "kernels", "no sm_90 kernel found (was the library built with FORCE_CUDA=1 "
                                          "and TORCH_CUDA_ARCH_LIST=9.0?)"))
    return rows, breaches


COLUMNS = [("kernel", 30), ("dtype", 9), ("vec", 3), ("args", 5), ("regs", 4), ("spills", 6), ("stack", 5),
           ("shared", 6), ("ld128", 5), ("st128", 5), ("other", 5), ("budget", 7), ("ok", 6)]


def format_table(rows):
    lines = [" ".join(f"{name:>{w}}" if name not in ("kernel", "dtype") else f"{name:<{w}}" for name, w in COLUMNS)]
    for row in rows:
        lines.append(" ".join(f"{str(row[n]):>{w}}" if n not in ("kernel", "dtype") else f"{str(row[n]):<{w}}"
                              for n, w in COLUMNS))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", help="a built _C_cuda*.so (FORCE_CUDA build, sm_90) or a .cubin")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.library):
        parser.error(f"library: no such file: {args.library}")
    rows, breaches = check(args.library)
    print(format_table(rows))
    print("columns: other = global accesses narrower than 128 bits (incl. p/mask/grad_p); spills = LDL + STL "
          "outside printf + LOCAL bytes; budget 'default' = no entry in sass_budgets.py")
    for kernel, rule, detail in breaches:
        print(f"BREACH [{rule}] {kernel}: {detail}")
    print(f"{len(rows)} kernel instantiations, {len(breaches)} breaches")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
