"""Where one level's forward pass spends its time, by OpenVINO node type (PERF_COUNT), after a real prompt.

    python scripts/research/node_profile.py EXPORT_DIR [--level target] [--tokens 1,6] [--property KEY=VALUE ...]

--property adds a CPU compile property (e.g. ENABLE_CPU_PINNING=True, INFERENCE_PRECISION_HINT=f32) to see
whether it changes the step; the kernels OpenVINO picked for the busiest node type are listed too. Shares
are of the summed node times; wall ms is the median step time.
"""
import argparse
import collections
import statistics
import time

import openvino as ov

from specqd.runtime import kvmodel
from specqd.runtime.tools import prompts
from specqd.runtime.pipeline import ExportFolder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("export_dir")
    parser.add_argument("--level", default="target")
    parser.add_argument("--tokens", default="1,6")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = {key: {"True": True, "False": False}.get(value, value)
             for key, value in (item.split("=", 1) for item in args.property)}
    extra["PERF_COUNT"] = True

    folder = ExportFolder(args.export_dir)
    core = folder.core  # the kernel extension is registered there
    compile_model = core.compile_model
    core.compile_model = lambda model, device, config: compile_model(model, device, {**config, **extra})
    model = kvmodel.KVModel(core, folder.path / folder.manifest.level(args.level).path, "bf16", folder.kernel)
    prompt = folder.encode(prompts.load("humaneval:0-0")[0] * 2)
    model.logits(prompt, 1)
    for n in (int(t) for t in args.tokens.split(",")):
        sequence = prompt + prompt[:n]
        walls, nodes = [], collections.Counter()
        for _ in range(6):
            started = time.perf_counter()
            model.logits(sequence, n)
            walls.append((time.perf_counter() - started) * 1000)
            for info in model.request.profiling_info:
                nodes[info.node_type] += info.real_time.total_seconds()
        total = sum(nodes.values())
        shares = ", ".join(f"{kind} {100 * t / total:.1f} %" for kind, t in nodes.most_common(4))
        print(f"{args.level} n={n}: {statistics.median(walls[1:]):.1f} ms, nodes {1000 * total / len(walls):.1f} ms; "
              f"{shares}  {args.property or ''}")
        busiest = nodes.most_common(1)[0][0]
        kernels = collections.Counter(info.exec_type for info in model.request.profiling_info
                                      if info.node_type == busiest)
        print(f"  {busiest} kernels: " + ", ".join(f"{kind} x{count}" for kind, count in kernels.most_common()))


if __name__ == "__main__":
    main()
