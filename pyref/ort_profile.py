"""Sum an onnxruntime profile (TLEARN_ORT_PROFILE=prefix …) per operator type.

usage: ort_profile.py PROFILE.json [TOP]         → op type, total ms, share, calls; per-run mean.
       ort_profile.py PROFILE.json --nodes [TOP] → the costliest nodes, with GFLOP/s for Conv,
           ConvTranspose and MatMul/Gemm nodes, and the run split into the FLOP-carrying kernels
           (those), the unfold Convs (the training graph's im2col copies) and the rest.
       ort_profile.py --peak                     → onnxruntime's own MatMul (2048³, 2 threads) in
           GFLOP/s: the machine's sgemm rate to compare the nodes with (needs onnx, onnxruntime).
"""
import collections
import json
import math
import sys


def peak():
    import time

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = 2048
    io = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "peak", io[:2], io[2:])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {k: np.random.default_rng(0).random((n, n), dtype=np.float32) for k in "ab"}
    best = float("inf")
    for _ in range(12):
        t = time.perf_counter()
        s.run(None, feed)
        best = min(best, time.perf_counter() - t)
    print(f"onnxruntime MatMul {n}³, 2 threads: {2 * n**3 / best / 1e9:.1f} GFLOP/s")


def shapes(args, key):
    return [list(d.values())[0] for d in args.get(key, [])]


def flops(op, ins, outs):
    """Multiply-adds × 2 of a Conv, ConvTranspose or GEMM node from its shapes (None for other
    ops, and for GEMM forms whose shapes do not say their inner dimension)."""
    if not outs or len(ins) < 2:
        return None
    out, w = outs[0], ins[1]
    if op in ("Conv", "FusedConv") and len(w) == 4:
        return 2 * math.prod(out) * math.prod(w[1:])
    if op == "ConvTranspose" and len(w) == 4:
        return 2 * math.prod(ins[0]) * math.prod(w[1:])
    if op in ("MatMul", "FusedMatMul", "Gemm", "FusedGemm") and len(out) >= 2 and len(ins[0]) >= 2 and len(w) >= 2:
        # A holds M × K per batch entry, transposed or not; K must be one of B's last two dims.
        k = math.prod(ins[0][-2:]) // max(out[-2], 1)
        return 2 * math.prod(out) * k if k in w[-2:] else None
    return None


def is_unfold(op, ins):
    """The training graph's im2col: a Conv with a one-hot weight (C·kh·kw, 1, kh, kw) over C channels."""
    if op != "Conv" or len(ins) < 2 or len(ins[1]) != 4 or len(ins[0]) != 4:
        return False
    w = ins[1]
    return w[1] == 1 and w[0] == ins[0][1] * w[2] * w[3] and w[2] * w[3] > 1


def nodes(events, top):
    runs = max(1, sum(1 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"))
    time, info = collections.Counter(), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e.get("args", {})
            name = e["name"][: -len("_kernel_time")]
            time[name] += e["dur"]
            info[name] = (a.get("op_name", "?"), shapes(a, "input_type_shape"), shapes(a, "output_type_shape"))
    total = sum(time.values()) or 1
    kinds, work, rate = collections.Counter(), 0, {}
    for name, us in time.items():
        op, ins, outs = info[name]
        unfold = is_unfold(op, ins)
        f = None if unfold else flops(op, ins, outs)
        kinds["unfold" if unfold else "flop" if f else "other"] += us
        work += f or 0
        if f:
            rate[name] = f * runs / us / 1e3
    print(
        f"{runs} runs; per run: kernels {total / runs / 1e3:.1f} ms — FLOP-carrying Conv/GEMM "
        f"{kinds['flop'] / runs / 1e3:.1f} ms ({work / 1e9:.2f} GFLOP, {work * runs / max(kinds['flop'], 1) / 1e3:.1f} "
        f"GFLOP/s), unfold {kinds['unfold'] / runs / 1e3:.1f} ms, the rest {kinds['other'] / runs / 1e3:.1f} ms"
    )
    for name, us in time.most_common(top):
        op, ins, outs = info[name]
        r = f"{rate[name]:7.1f} GFLOP/s" if name in rate else " " * 15
        print(f"{us / runs / 1e3:8.2f} ms {100 * us / total:5.1f} %  {r}  {op:<14} {name[:44]:<44} {ins} → {outs}")


def ops(events, top):
    per_op, calls = collections.Counter(), collections.Counter()
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"]
            calls[op] += 1
    total = sum(per_op.values()) or 1
    print(f"{len(runs)} runs, mean {sum(runs) / max(len(runs), 1) / 1e3:.1f} ms per run; kernel time by op:")
    for op, us in per_op.most_common(top):
        print(f"{op:<24}{us / 1e3:>10.1f} ms {100 * us / total:>6.1f} %  {calls[op]:>6} calls")


if __name__ == "__main__":
    argv = sys.argv[1:]
    flags = [a for a in argv if a.startswith("--")]
    rest = [a for a in argv if not a.startswith("--")]
    if flags == ["--peak"]:
        peak()
    elif not rest or flags not in ([], ["--nodes"]):
        sys.exit(__doc__)
    elif flags == ["--nodes"]:
        nodes(json.load(open(rest[0])), int(rest[1]) if len(rest) > 1 else 15)
    else:
        ops(json.load(open(rest[0])), int(rest[1]) if len(rest) > 1 else 25)
