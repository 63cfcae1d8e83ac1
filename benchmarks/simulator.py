"""Speed of the qMRI -> MR signal simulator: eager vs fused kernels, against the machine's memory bandwidth.

What it measures, on random but physically valid float32 maps (PD in [0, 1], R1 in [0.2, 3] 1/s, R2* in [1, 40] 1/s,
MT in [0, 0.05]; R2* stands in for R2 as ``simulate`` does when no R2 map is given):

0. With ``--nitorch PATH`` (a NITorch source tree; NITorch, which the reference work used, is on no package
   registry): per sequence with ``TYPICAL_PROTOCOLS``, NITorch's own generator (``fse``, ``spgr``, ``flair``,
   ``mprage`` from ``nitorch.tools.qmri.generators``, called as its API is meant to be called, fresh outputs)
   against ``simulate`` eager (the default call, validation included) and fused (``validate=False``, as a training
   loop calls it; fresh outputs too, no ``out=``), on the same maps in one process: medians and lower quartiles,
   the ratios, the first fused call's compile seconds, the largest relative difference and the page faults per
   call. Every contestant is timed the same way: each round calls each contestant ``--block`` times in a row (4 by
   default) and times all but the first ``--settle`` (2), i.e. in the steady state of its own repeated calls, where
   the allocator recycles what the previous call of the same contestant freed (the free after the first call may
   still trim memory the previous contestant left to the kernel, so the second call can page-fault); the first call
   of each block (right after another contestant, whose freed temporaries glibc may have returned to the kernel, so
   that a fresh output page-faults) is printed on its own line. Without ``--nitorch`` the part is skipped.
1. Per sequence, one protocol (``TYPICAL_PROTOCOLS``): the signal kernel called through
   ``mri_ssl.physics.fused.run_kernel`` with the protocol values as 0-d tensors (prepared by ``as_protocol_batch``,
   exactly as ``simulate`` prepares them), eager and fused. Median ms, Mvoxel/s, and the ratio to the
   *memory-bound time*: ``(input maps + 1 output) * voxels * 4 bytes / copy bandwidth``, where the copy bandwidth is
   the median of ``dst.copy_(src)`` on one map-sized buffer (bytes read + written / time), timed in the same rounds.
   The fused kernel is timed writing a fresh output and writing into an existing one (``out=``); the goal is judged
   on the latter, which is the kernel's own memory traffic. A fresh 33 MB output costs whatever glibc gives: memory
   recycled from its heap (no page faults) or new pages the kernel must fault in and zero (about 8,000 faults,
   the time of another full write), depending on what the process allocated before; the faults per call are printed.
   Also ``simulate(..., fused=True, validate=False)`` (the kernel plus its ``.abs()``) and the cost of validation
   (``check_maps`` + ``check_protocol``) on its own.
   A probe with a long-TE FSE protocol shows what float32 denormals (exp(-R2 TE) underflowing) cost.
2. Per sequence, B protocols from one set of maps (``sample_protocol``), through ``simulate(..., fused=True,
   validate=False)``: one call with 1-D protocol tensors (output ``(B, *shape)``) against B calls with float
   protocols, (a) every call returning fresh tensors (the issue's goal) and (b) refilling an ``out=`` buffer, with
   the minor page faults and system CPU time of each call (``resource.getrusage``): the kernel zeroing newly touched
   pages of a fresh output is a large share of a batched call on CPU, and the separate calls' 31.5 MiB outputs can
   be recycled from glibc's heap without it. Also the eager paths, and what the output memory
   alone costs (one ``(B, *shape)`` ``torch.empty``, B single-map ones, refilling). ``--thp`` (PyTorch's
   ``THP_MEM_ALLOC_ENABLE=1``) asks for 2 MiB pages: far fewer faults on a quiet machine, but the kernel then
   compacts memory on fault, which on this busy machine cost more system time than the 4 KiB faults it saved.

Timings interleave the variants round by round (copy, eager, fused, ... for every sequence, then the next round), so
a burst of load from another process on a shared machine hits every variant alike; medians and ratios come from the
same run. On a noisy machine compare ratios between runs, not absolute times.
Compile seconds are the first fused call minus the steady-state median; by default the inductor cache is a fresh
temporary directory so they are cold-start figures (``--warm-cache`` uses the normal on-disk cache).

The goals are printed as PASS/MISS for information; the exit code is 0 either way. Typical use::

    PYTHONPATH=. python benchmarks/simulator.py
    PYTHONPATH=. python benchmarks/simulator.py --threads 2 --nitorch /path/to/nitorch-source --parts nitorch
    PYTHONPATH=. python benchmarks/simulator.py --shape 96 112 96 --repeats 5 --sequences fse mprage
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

SEQUENCE_NAMES = ("fse", "gre", "flair", "mprage")
# Fused time / memory-bound time the fused path should stay within on a 2-core CPU.
MEMORY_BOUND_GOALS = {"fse": 2.0, "gre": 2.0, "flair": 2.0, "mprage": 4.0}
BATCH_SPEEDUP_GOAL = 1.5
# Against NITorch (the reference implementation): the default (eager) path at least as fast, the fused one 5x.
NITORCH_EAGER_GOAL = 1.0
NITORCH_FUSED_GOAL = 5.0
PARTS = ("nitorch", "kernels", "batched")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the MR signal simulator (eager vs fused kernels, batched protocols) against the "
        "machine's copy bandwidth. Prints a table; PASS/MISS against the goals is information only (exit code 0).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--shape", type=int, nargs=3, default=[192, 224, 192], metavar=("X", "Y", "Z"),
                        help="map shape in voxels")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant after the compile call")
    parser.add_argument("--batch-repeats", type=int, default=5,
                        help="timed rounds of the fused variants in the batched-protocol comparison")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own choice); set before anything compiles")
    parser.add_argument("--protocols", type=int, default=8, help="protocols per batched call (B)")
    parser.add_argument("--sequences", nargs="+", default=list(SEQUENCE_NAMES), choices=SEQUENCE_NAMES,
                        help="sequences to benchmark")
    parser.add_argument("--eager-batch-repeats", type=int, default=2,
                        help="timed rounds for the eager variants of the batched comparison (0 skips them; they "
                        "take most of the run time)")
    parser.add_argument("--thp", action="store_true",
                        help="set THP_MEM_ALLOC_ENABLE=1 before torch starts, so torch asks the kernel for 2 MB "
                        "pages for large tensors (fewer page faults on fresh outputs)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the normal inductor on-disk cache (compile seconds then show cache hits)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maps and the sampled protocols")
    parser.add_argument("--nitorch", metavar="PATH", default=None,
                        help="a NITorch source tree (the folder holding the nitorch package; NITorch is not on any "
                        "package registry, and needs torch-interpol): adds the table against its sequence generators")
    parser.add_argument("--block", type=int, default=4,
                        help="against NITorch: calls of each contestant in a row per round (the first call's time and "
                        "faults are printed apart); 1 times every call right after another contestant's")
    parser.add_argument("--settle", type=int, default=2,
                        help="against NITorch: untimed calls at the start of each block (with --block 1, use 0). The "
                        "free after the first call can return to the kernel memory the previous contestant left "
                        "(glibc trims a heap top over 2x its mmap threshold), so the second call still page-faults")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                        help="which parts to run: nitorch (only with --nitorch), kernels (one protocol vs the memory "
                        "bound), batched (B protocols per call)")
    args = parser.parse_args(argv)
    if not 0 <= args.settle < args.block:
        parser.error(f"--settle {args.settle} must be at least 0 and less than --block {args.block}")
    return args


def say(text: str = "") -> None:
    print(text, flush=True)


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def lower_quartile_ms(times: list[float]) -> float:
    return statistics.quantiles(times, n=4)[0] * 1e3 if len(times) > 1 else times[0] * 1e3


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved(variants: dict, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Time every variant once per round, in turn; return the seconds of each variant's timed rounds."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            seconds, result = timed(fn)
            del result
            times[name].append(seconds)
    return times


def interleaved_with_faults(variants: dict, rounds: int, warmup: int, block: int = 1, settle: int = 0,
                            first_calls: dict | None = None):
    """Like ``interleaved``, also returning each call's minor page faults, system CPU seconds and process CPU seconds
    (user + system, all threads), from getrusage.

    ``block`` > 1: each round calls each variant ``block`` times in a row and records all but the first ``settle``
    calls, so every variant is timed in the steady state of its own repeated calls (as a loop calls it: its outputs
    and temporaries recycled by the allocator) rather than in whatever heap state the previous variant left. The
    first call of each block goes to ``first_calls[name]`` (seconds, faults) when that dict is given."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in variants}
    faults = {name: [] for name in variants}
    system = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for call in range(block):
                before = resource.getrusage(resource.RUSAGE_SELF)
                seconds, result = timed(fn)
                after = resource.getrusage(resource.RUSAGE_SELF)
                del result
                if block > 1 and call == 0 and first_calls is not None:
                    first_calls.setdefault(name, []).append((seconds, after.ru_minflt - before.ru_minflt))
                if call < settle:
                    continue
                times[name].append(seconds)
                faults[name].append(after.ru_minflt - before.ru_minflt)
                system[name].append(after.ru_stime - before.ru_stime)
                cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return times, faults, system, cpu


def relative_error(result, reference) -> float:
    scale = float(reference.abs().max())
    return float((result - reference).abs().max()) / (scale if scale > 0 else 1.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.thp:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"  # read once, at torch's first allocation
    cache_dir = None
    if not args.warm_cache:
        # Must be set before inductor first reads it; a fresh directory makes the compile seconds cold-start ones.
        cache_dir = tempfile.mkdtemp(prefix="mri_ssl_bench_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        return run(args)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from mri_ssl.physics import fused as fused_module
    from mri_ssl.physics.fused import compile_disabled, fused_available, run_kernel
    from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS, check_protocol, protocol_item, sample_protocol
    from mri_ssl.physics.sequences import MAP_ARGUMENTS, PROTOCOL_ARGUMENTS, as_protocol_batch
    from mri_ssl.physics.simulate import check_maps, simulate

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    shape = tuple(args.shape)
    voxels = shape[0] * shape[1] * shape[2]
    bytes_per_map = voxels * 4

    def uniform(low, high):
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float32)

    maps = {"pd": uniform(0.0, 1.0), "r1": uniform(0.2, 3.0), "r2s": uniform(1.0, 40.0), "mt": uniform(0.0, 0.05)}
    # The kernels' map arguments, as simulate() resolves them (R2* stands in for R2; GRE reads MT).
    resolved = dict(maps, r2=maps["r2s"])

    def kernel_arguments(sequence, protocol):
        map_values = tuple(resolved[name] for name in MAP_ARGUMENTS[sequence])
        params = tuple(protocol[name] for name in PROTOCOL_ARGUMENTS[sequence]) + (1.0,)
        map_values, params = as_protocol_batch(map_values, params)
        return map_values + params

    copy_src = torch.rand(shape, generator=generator)
    copy_dst = torch.empty_like(copy_src)

    def copy():
        return copy_dst.copy_(copy_src)

    say("mri_ssl simulator benchmark")
    say(f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {sys.version.split()[0]}, "
        f"CPU {cpu_summary()}")
    say(f"shape {shape} = {voxels / 1e6:.2f} Mvoxel float32 ({bytes_per_map / 1e6:.1f} MB per map), "
        f"repeats {args.repeats} (batched: fused {args.batch_repeats}, eager {args.eager_batch_repeats}), "
        f"inductor cache {'on-disk (warm)' if args.warm_cache else 'fresh (cold)'}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    say(f"kernels called through run_kernel(sequence, *maps, *protocol as 0-d float32 tensors, b1) -- no "
        f"validation, no .abs(); {fused_module.DISABLE_ENV} set: {compile_disabled()}")
    say()

    if "nitorch" in args.parts and args.nitorch:
        nitorch_table(args, maps, shape)
    elif "nitorch" in args.parts:
        say("against NITorch: skipped (give --nitorch PATH to a NITorch source tree)")
        say()
    if "kernels" not in args.parts and "batched" not in args.parts:
        return 0
    # Part 'batched' is compared with part 'kernels' (per-protocol times, copy bandwidth), so it runs that too.
    # ---------------------------------------------------------------------------------------------------------
    # 1. One protocol per call. Everything is compiled first; then every round times every sequence's variants,
    # so a burst of load from elsewhere spreads over all sequences instead of ruining one.
    variants = {}
    single = {}
    single_buffer = torch.empty(shape)
    for sequence in args.sequences:
        protocol = TYPICAL_PROTOCOLS[sequence]
        arguments = kernel_arguments(sequence, protocol)
        eager_out = run_kernel(sequence, *arguments, fused=False)
        compile_seconds, fused_out = timed(lambda: run_kernel(sequence, *arguments, fused=True))
        single[sequence] = {
            "first_call_s": compile_seconds,
            "error": relative_error(fused_out, eager_out),
            "compiled": fused_available(sequence),
            "inputs": len(MAP_ARGUMENTS[sequence]),
        }
        del eager_out, fused_out
        variants[f"{sequence}/copy"] = copy  # one copy per kernel timing, right before it
        variants[f"{sequence}/eager"] = lambda sequence=sequence, arguments=arguments: run_kernel(
            sequence, *arguments, fused=False)
        variants[f"{sequence}/fused"] = lambda sequence=sequence, arguments=arguments: run_kernel(
            sequence, *arguments, fused=True)
        variants[f"{sequence}/fused_out"] = lambda sequence=sequence, arguments=arguments: run_kernel(
            sequence, *arguments, fused=True, out=single_buffer)
        variants[f"{sequence}/simulate"] = lambda sequence=sequence, protocol=protocol: simulate(
            maps, sequence, protocol, fused=True, validate=False)
    times, faults, _, _ = interleaved_with_faults(variants, args.repeats, args.warmup)
    copy_times = [seconds for name, values in times.items() if name.endswith("/copy") for seconds in values]
    for sequence, row in single.items():
        for variant in ("eager", "fused", "fused_out", "simulate"):
            row[variant] = median_ms(times[f"{sequence}/{variant}"])
        row["faults"] = statistics.median(faults[f"{sequence}/fused"])
        row["compile_s"] = row["first_call_s"] - row["fused"] / 1e3

    validation_ms = median_ms(interleaved(
        {"validate": lambda: (check_maps(maps, spatial_dims=3), check_protocol("gre", TYPICAL_PROTOCOLS["gre"]))},
        max(3, args.repeats // 2),
        0,
    )["validate"])
    copy_ms = median_ms(copy_times)
    bandwidth = 2 * bytes_per_map / (copy_ms / 1e3)  # bytes read + written per second

    say(f"copy bandwidth: dst.copy_(src) on one map-sized buffer, median {copy_ms:.2f} ms over {len(copy_times)} "
        f"rounds interleaved with the kernels -> {bandwidth / 1e9:.1f} GB/s (read + write)")
    say("mem-bound = (input maps + 1 output) x voxels x 4 B / copy bandwidth; fused = kernel into a fresh output "
        "(faults: its minor page faults per call, median), out= = kernel into an existing buffer; goal: out= / "
        "mem-bound <= goal")
    say()
    header = (f"{'sequence':8s} {'maps':>4s} {'mem-bound':>9s} {'eager':>8s} {'fused':>8s} {'faults':>6s} "
              f"{'out=':>8s} {'eager':>7s} {'out=':>7s} {'eager/':>6s} {'fused/':>6s} {'out=/':>6s} {'goal':>5s} "
              f"{'':4s} {'compile':>7s} {'simulate':>8s} {'rel.err':>8s} {'compiled':>8s}")
    units = (f"{'':8s} {'':>4s} {'ms':>9s} {'ms':>8s} {'ms':>8s} {'':>6s} {'ms':>8s} {'Mvox/s':>7s} {'Mvox/s':>7s} "
             f"{'membnd':>6s} {'membnd':>6s} {'membnd':>6s} {'':>5s} {'':4s} {'s':>7s} {'ms':>8s} {'':>8s} {'':>8s}")
    say(header)
    say(units)
    say("-" * len(header))
    for sequence, row in single.items():
        memory_bound_ms = (row["inputs"] + 1) * bytes_per_map / bandwidth * 1e3
        out_ratio = round(row["fused_out"] / memory_bound_ms, 2)  # the verdict agrees with the printed figure
        goal = MEMORY_BOUND_GOALS[sequence]
        say(f"{sequence:8s} {row['inputs']:4d} {memory_bound_ms:9.2f} {row['eager']:8.2f} {row['fused']:8.2f} "
            f"{row['faults']:6.0f} {row['fused_out']:8.2f} {voxels / row['eager'] / 1e3:7.0f} "
            f"{voxels / row['fused_out'] / 1e3:7.0f} {row['eager'] / memory_bound_ms:6.1f} "
            f"{row['fused'] / memory_bound_ms:6.2f} {out_ratio:6.2f} {'<=' + format(goal, 'g') + 'x':>5s} "
            f"{'PASS' if out_ratio <= goal else 'MISS':4s} {row['compile_s']:7.1f} {row['simulate']:8.2f} "
            f"{row['error']:8.1e} {str(row['compiled']):>8s}")
    say()
    say("compile = first fused call minus the steady median (the first sequence also pays inductor's start-up); "
        "simulate = simulate(maps, seq, TYPICAL_PROTOCOLS[seq], fused=True, validate=False) = kernel with the "
        "magnitude taken in the same loop; "
        "rel.err = max|fused - eager| / max|eager|")
    say(f"validation alone (check_maps on the 4 maps + check_protocol), as simulate(validate=True) adds it: "
        f"median {validation_ms:.1f} ms")

    if "fse" in args.sequences:
        # A protocol sample_protocol can draw (TE up to 3 s): exp(-R2 TE) underflows into float32's denormal range
        # for the fast-decaying voxels, where x86 arithmetic takes a slow microcode path.
        slow_protocol = {"tr": 3.0, "te": 2.5}
        slow_arguments = kernel_arguments("fse", slow_protocol)
        typical_arguments = kernel_arguments("fse", TYPICAL_PROTOCOLS["fse"])
        denormal = denormal_fraction(run_kernel("fse", *slow_arguments, fused=True))
        probe = {name: median_ms(values) for name, values in interleaved(
            {
                "typical": lambda: run_kernel("fse", *typical_arguments, fused=True),
                "slow": lambda: run_kernel("fse", *slow_arguments, fused=True),
                "slow_eager": lambda: run_kernel("fse", *slow_arguments, fused=False),
            },
            args.repeats,
            args.warmup,
        ).items()}
        say(f"denormal probe, FSE TR 3 s TE 2.5 s: {100 * denormal:.1f} % of output voxels denormal; fused "
            f"{probe['slow']:.1f} ms vs {probe['typical']:.1f} ms for the typical protocol "
            f"({probe['slow'] / probe['typical']:.1f}x), eager {probe['slow_eager']:.1f} ms")
    say()

    if "batched" in args.parts:
        # ---------------------------------------------------------------------------------------------------------
        # 2. B protocols from one set of maps: one simulate() call with 1-D protocol tensors against B calls, with fresh
        # outputs (the issue's goal) and with out= buffers; page faults and system CPU time per call show the cost of
        # fresh output memory, which the arithmetic does not explain.
        batch = args.protocols
        say(f"{batch} protocols from one set of maps (sample_protocol), through simulate(..., fused=True, "
            f"validate=False): one call with 1-D protocol tensors -> ({batch}, {', '.join(map(str, shape))}) vs "
            f"{batch} calls with float "
            f"protocols; median ms over {args.batch_repeats} interleaved rounds, speed-up = {batch} calls / 1 call")
        say("  fresh: every call returns new tensors (the separate outputs kept in a list, as a batch keeps its own); "
            "out=: the batched call refills one (B, ...) buffer, the separate calls refill its B planes")
        say("  faults = minor page faults per call (median), sys = system CPU ms per call (median): the kernel zeroing "
            "new pages")
        header = (f"{'sequence':8s} {'fresh 1x' + str(batch):>10s} {'fresh ' + str(batch) + 'x1':>10s} "
                  f"{'speed-up':>8s} "
                  f"{'goal':>6s} {'':4s} {'faults':>7s} {'faults':>7s} {'sys':>5s} {'sys':>5s} "
                  f"{'out= 1x' + str(batch):>10s} {'out= ' + str(batch) + 'x1':>10s} {'speed-up':>8s} "
                  f"{'compile':>7s} {'rel.err':>8s}")
        units = (f"{'':8s} {'ms':>10s} {'ms':>10s} {'':>8s} {'':>6s} {'':4s} {'1x' + str(batch):>7s} "
                 f"{str(batch) + 'x1':>7s} {'1x' + str(batch):>5s} {str(batch) + 'x1':>5s} {'ms':>10s} {'ms':>10s} "
                 f"{'':>8s} {'s':>7s} {'':>8s}")
        say(header)
        say(units)
        say("-" * len(header))
        buffer = torch.empty((batch, *shape))
        eager_rows = []
        cpu_rows = []
        bound_rows = []
        for sequence in args.sequences:
            protocols = sample_protocol(sequence, batch, generator=generator)
            singles = [protocol_item(protocols, index) for index in range(batch)]

            def batched_fresh():
                return simulate(maps, sequence, protocols, fused=True, validate=False)

            def separate_fresh():
                return [simulate(maps, sequence, single, fused=True, validate=False) for single in singles]

            def batched_out():
                return simulate(maps, sequence, protocols, fused=True, validate=False, out=buffer)

            def separate_out():
                return [simulate(maps, sequence, single, fused=True, validate=False, out=buffer[index])
                        for index, single in enumerate(singles)]

            compile_seconds, fused_out = timed(batched_fresh)
            separate_stack = torch.stack(separate_fresh())
            error = relative_error(fused_out, separate_stack)
            del fused_out, separate_stack
            variants = {"batched_fresh": batched_fresh, "separate_fresh": separate_fresh, "batched_out": batched_out,
                        "separate_out": separate_out}
            times, faults, system, cpu = interleaved_with_faults(variants, args.batch_repeats, args.warmup)
            medians = {name: median_ms(values) for name, values in times.items()}
            fault_medians = {name: statistics.median(values) for name, values in faults.items()}
            sys_medians = {name: median_ms(values) for name, values in system.items()}
            cpu_medians = {name: median_ms(values) for name, values in cpu.items()}
            cpu_rows.append((sequence, cpu_medians))
            bound_rows.append((sequence, medians["batched_out"]))
            speedup = round(medians["separate_fresh"] / medians["batched_fresh"], 2)
            verdict = "PASS" if speedup >= BATCH_SPEEDUP_GOAL else "MISS"
            say(f"{sequence:8s} {medians['batched_fresh']:10.1f} {medians['separate_fresh']:10.1f} {speedup:7.2f}x "
                f"{'>=' + format(BATCH_SPEEDUP_GOAL, 'g') + 'x':>6s} {verdict:4s} "
                f"{fault_medians['batched_fresh']:7.0f} {fault_medians['separate_fresh']:7.0f} "
                f"{sys_medians['batched_fresh']:5.0f} {sys_medians['separate_fresh']:5.0f} "
                f"{medians['batched_out']:10.1f} {medians['separate_out']:10.1f} "
                f"{medians['separate_out'] / medians['batched_out']:7.2f}x "
                f"{compile_seconds - medians['batched_fresh'] / 1e3:7.1f} {error:8.1e}")
            if args.eager_batch_repeats > 0:
                eager = {name: median_ms(values) for name, values in interleaved(
                    {
                        "batched": lambda: simulate(maps, sequence, protocols, fused=False, validate=False),
                        "separate": lambda: [simulate(maps, sequence, single, fused=False, validate=False)
                                             for single in singles],
                    },
                    args.eager_batch_repeats,
                    0,
                ).items()}
                eager_rows.append((sequence, eager))
        say()
        say("rel.err = max|batched - stacked separate| / max|separate| (fresh outputs)")
        say("process CPU ms per call (user + system, both threads; median), which a busy machine inflates less than "
            "wall time:")
        for sequence, cpu_ms in cpu_rows:
            say(f"  {sequence:6s} CPU ms: fresh 1x{batch} {cpu_ms['batched_fresh']:.0f}, fresh {batch}x1 "
                f"{cpu_ms['separate_fresh']:.0f} ({cpu_ms['separate_fresh'] / cpu_ms['batched_fresh']:.2f}x); out= "
                f"1x{batch} {cpu_ms['batched_out']:.0f}, out= {batch}x1 {cpu_ms['separate_out']:.0f} "
                f"({cpu_ms['separate_out'] / cpu_ms['batched_out']:.2f}x)")
        say(f"what bounds a batch: memory-bound time of the batched call ((maps + {batch} outputs) x voxels x 4 B / "
            f"copy bandwidth) and of {batch} separate calls ({batch} x (maps + 1)), against the arithmetic: "
            f"the batched out= time per protocol beside one single-protocol out= call (section 1). Per protocol about "
            f"equal means the kernel is bound by arithmetic, which batching does not reduce: it then saves only the "
            f"maps' re-reading and "
            f"each call's own overhead.")
        for sequence, batched_out_ms in bound_rows:
            inputs = single[sequence]["inputs"]
            batched_bound = (inputs + batch) * bytes_per_map / bandwidth * 1e3
            separate_bound = batch * (inputs + 1) * bytes_per_map / bandwidth * 1e3
            say(f"  {sequence:6s} mem-bound: 1x{batch} {batched_bound:.1f} ms, {batch}x1 {separate_bound:.1f} ms "
                f"(at most {separate_bound / batched_bound:.2f}x from batching if memory-bound); batched out= "
                f"{batched_out_ms:.1f} ms = {batched_out_ms / batch:.2f} ms per protocol vs "
                f"{single[sequence]['fused_out']:.2f} ms for one protocol alone "
                f"({batched_out_ms / batch / single[sequence]['fused_out']:.2f}x)")
        for sequence, eager in eager_rows:
            say(f"eager {sequence:6s}: 1x{batch} {eager['batched']:.1f} ms, {batch}x1 {eager['separate']:.1f} ms, "
                f"speed-up {eager['separate'] / eager['batched']:.2f}x")

        # What the output memory alone costs, before any arithmetic.
        allocation = {
            "empty_batched": lambda: torch.empty((batch, *shape)).fill_(1.0),
            "empty_separate": lambda: [torch.empty(shape).fill_(1.0) for _ in range(batch)],
            "refill": lambda: buffer.fill_(1.0),
        }
        times, faults, system, _ = interleaved_with_faults(allocation, args.batch_repeats, args.warmup)
        text = {name: f"{median_ms(times[name]):.1f} ms ({statistics.median(faults[name]):.0f} faults, "
                      f"sys {median_ms(system[name]):.0f} ms)" for name in allocation}
        say(f"output memory alone (.fill_(1), no arithmetic): torch.empty(({batch}, ...)) {text['empty_batched']}; "
            f"{batch} x torch.empty(shape) {text['empty_separate']}; refilling an existing ({batch}, ...) buffer "
            f"{text['refill']}")
        buffer = None
        say()
    say("fused_available: " + ", ".join(f"{s}={fused_available(s)}" for s in args.sequences))
    try:
        from torch._dynamo.utils import counters

        say(f"dynamo graphs compiled in this run: {counters['stats'].get('unique_graphs', 'n/a')} (per sequence 3: "
            f"the signed signal of a volume (run_kernel), the magnitude of a volume and of a batch (simulate); more "
            f"would mean recompilation)")
    except Exception:  # counters are private API; their absence only loses this line
        pass
    return 0


def load_nitorch_generators(path: str):
    """NITorch's qMRI sequence generators, imported from a source tree given on the command line."""
    root = os.path.abspath(path)
    if os.path.basename(root) == "nitorch" and os.path.isfile(os.path.join(root, "__init__.py")):
        root = os.path.dirname(root)
    if not os.path.isfile(os.path.join(root, "nitorch", "tools", "qmri", "generators", "__init__.py")):
        raise SystemExit(f"--nitorch {path}: no nitorch/tools/qmri/generators inside; give the folder that holds the "
                         f"nitorch package")
    os.environ.setdefault("NI_CHECK_BACKEND", "0")  # its start-up warning about the non-compiled backend
    sys.path.insert(0, root)
    try:
        from nitorch.tools.qmri import generators
    except ImportError as error:
        raise SystemExit(f"--nitorch {path}: importing NITorch failed ({error}); it needs numpy, scipy and "
                         f"torch-interpol")
    return generators


def nitorch_calls(generators, maps: dict) -> dict:
    """One call per sequence of NITorch's generator with ``TYPICAL_PROTOCOLS`` (R2* standing in for R2, as in
    ``simulate``; NITorch takes flip angles in degrees and an integer train length)."""
    import math

    from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS as typical

    pd, r1, r2s, mt = maps["pd"], maps["r1"], maps["r2s"], maps["mt"]
    fse, gre, flair, mprage = typical["fse"], typical["gre"], typical["flair"], typical["mprage"]
    return {
        "fse": lambda: generators.fse(pd, r1, r2s, tr=fse["tr"], te=fse["te"]),
        "gre": lambda: generators.spgr(pd, r1, r2s, mt, tr=gre["tr"], te=gre["te"],
                                       fa=math.degrees(gre["flip_angle"])),
        "flair": lambda: generators.flair(pd, r1, r2s, tr=flair["tr"], te=flair["te"], ti=flair["ti"]),
        "mprage": lambda: generators.mprage(pd, r1, r2s, tr=mprage["tr"], ti=mprage["ti"], tx=mprage["tx"],
                                            te=mprage["te"], fa=math.degrees(mprage["flip_angle"]),
                                            n=int(mprage["n"]), eff=mprage["inversion_efficiency"]),
    }


def nitorch_table(args: argparse.Namespace, maps: dict, shape: tuple) -> None:
    """The side-by-side table against NITorch: medians of interleaved rounds, ratios, largest relative difference."""
    import torch

    from mri_ssl.physics.protocols import TYPICAL_PROTOCOLS
    from mri_ssl.physics.sequences import MAP_ARGUMENTS
    from mri_ssl.physics.simulate import simulate

    generators = load_nitorch_generators(args.nitorch)
    calls = nitorch_calls(generators, maps)
    # The memory floor of each sequence: no kernel that reads its maps and writes one image can beat the time of
    # moving those bytes, measured as a map-sized copy in the same rounds. nitorch / floor is therefore the largest
    # nitorch / fused ratio this machine allows (a goal above it cannot be met by any single-pass kernel).
    copy_src, copy_dst = maps["pd"].clone(), torch.empty_like(maps["pd"])
    variants, first_fused_s, differences = {"copy": lambda: copy_dst.copy_(copy_src)}, {}, {}
    for sequence in args.sequences:
        protocol = TYPICAL_PROTOCOLS[sequence]
        variants[f"{sequence}/nitorch"] = calls[sequence]
        variants[f"{sequence}/eager"] = lambda sequence=sequence, protocol=protocol: simulate(
            maps, sequence, protocol, fused=False)
        variants[f"{sequence}/fused"] = lambda sequence=sequence, protocol=protocol: simulate(
            maps, sequence, protocol, fused=True, validate=False)
        reference, eager = calls[sequence]().abs(), variants[f"{sequence}/eager"]()
        first_fused_s[sequence], fused = timed(variants[f"{sequence}/fused"])
        differences[sequence] = (relative_error(eager, reference), relative_error(fused, eager))
        del reference, eager, fused
    load_before = os.getloadavg()
    first_calls = {}
    times, faults, _, _ = interleaved_with_faults(variants, args.repeats, args.warmup, args.block, args.settle,
                                                  first_calls)
    load_after = os.getloadavg()
    medians = {name: median_ms(values) for name, values in times.items()}
    lower_quartiles = {name: lower_quartile_ms(values) for name, values in times.items()}
    fault_medians = {name: statistics.median(values) for name, values in faults.items()}
    map_bytes = voxels_of(shape) * 4
    bandwidth = 2 * map_bytes / (medians["copy"] / 1e3)  # bytes read + written per second
    floor_ms = {sequence: (len(MAP_ARGUMENTS[sequence]) + 1) * map_bytes / bandwidth * 1e3
                for sequence in args.sequences}
    say(f"against NITorch ({os.path.abspath(args.nitorch)}): TYPICAL_PROTOCOLS, median ms over {args.repeats} "
        f"interleaved rounds; each round calls nitorch, eager, fused of each sequence in turn, each {args.block} "
        f"times in a row, timing the last {args.block - args.settle} (every contestant in the steady state of its "
        f"own repeated calls, as a loop calls it); load average before {load_before[0]:.2f}, after "
        f"{load_after[0]:.2f} (1 min)")
    say("  nitorch = its generator (fse, spgr, flair, mprage); eager = simulate(maps, seq, protocol, fused=False), "
        "the default call with validation; fused = simulate(..., fused=True, validate=False), the training-loop call")
    header = (f"{'sequence':8s} {'nitorch':>8s} {'eager':>8s} {'fused':>8s} {'nitorch/':>8s} {'':4s} "
              f"{'nitorch/':>8s} {'':4s} {'compile':>7s} {'rel.diff':>8s} {'fused vs':>8s} "
              f"{'page faults per call':>22s} {'floor':>6s} {'nitorch/':>8s}")
    units = (f"{'':8s} {'ms':>8s} {'ms':>8s} {'ms':>8s} {'eager':>8s} {'':4s} {'fused':>8s} {'':4s} {'s':>7s} "
             f"{'nitorch':>8s} {'eager':>8s} {'nitorch':>8s} {'eager':>6s} {'fused':>6s} {'ms':>6s} {'floor':>8s}")
    say(header)
    say(units)
    say("-" * len(header))
    totals = {"nitorch": 0.0, "eager": 0.0, "fused": 0.0}
    for sequence in args.sequences:
        row = {variant: medians[f"{sequence}/{variant}"] for variant in totals}
        for variant in totals:
            totals[variant] += row[variant]
        eager_ratio = round(row["nitorch"] / row["eager"], 2)  # verdicts agree with the printed figures
        fused_ratio = round(row["nitorch"] / row["fused"], 1)
        say(f"{sequence:8s} {row['nitorch']:8.1f} {row['eager']:8.1f} {row['fused']:8.1f} {eager_ratio:7.2f}x "
            f"{'PASS' if eager_ratio >= NITORCH_EAGER_GOAL else 'MISS':4s} {fused_ratio:7.1f}x "
            f"{'PASS' if fused_ratio >= NITORCH_FUSED_GOAL else 'MISS':4s} "
            f"{first_fused_s[sequence] - row['fused'] / 1e3:7.1f} {differences[sequence][0]:8.1e} "
            f"{differences[sequence][1]:8.1e} {fault_medians[sequence + '/nitorch']:8.0f} "
            f"{fault_medians[sequence + '/eager']:6.0f} {fault_medians[sequence + '/fused']:6.0f} "
            f"{floor_ms[sequence]:6.1f} {row['nitorch'] / floor_ms[sequence]:7.1f}x")
    say(f"{'all':8s} {totals['nitorch']:8.1f} {totals['eager']:8.1f} {totals['fused']:8.1f} "
        f"{totals['nitorch'] / totals['eager']:7.2f}x {'':4s} {totals['nitorch'] / totals['fused']:7.1f}x")
    say("lower quartiles (ms; the same rounds), nitorch / eager / fused and the ratios: " + "; ".join(
        f"{sequence} {lower_quartiles[sequence + '/nitorch']:.1f} / {lower_quartiles[sequence + '/eager']:.1f} / "
        f"{lower_quartiles[sequence + '/fused']:.1f} = "
        f"{lower_quartiles[sequence + '/nitorch'] / lower_quartiles[sequence + '/eager']:.2f}x, "
        f"{lower_quartiles[sequence + '/nitorch'] / lower_quartiles[sequence + '/fused']:.1f}x"
        for sequence in args.sequences))
    if first_calls:
        first = {name: (statistics.median(s for s, _ in calls) * 1e3, statistics.median(f for _, f in calls))
                 for name, calls in first_calls.items()}
        say("first call of each block (right after another contestant; median ms, page faults), nitorch / eager / "
            "fused and the ratios: " + "; ".join(
                f"{sequence} {first[sequence + '/nitorch'][0]:.1f} ({first[sequence + '/nitorch'][1]:.0f}) / "
                f"{first[sequence + '/eager'][0]:.1f} ({first[sequence + '/eager'][1]:.0f}) / "
                f"{first[sequence + '/fused'][0]:.1f} ({first[sequence + '/fused'][1]:.0f}) = "
                f"{first[sequence + '/nitorch'][0] / first[sequence + '/eager'][0]:.2f}x, "
                f"{first[sequence + '/nitorch'][0] / first[sequence + '/fused'][0]:.1f}x"
                for sequence in args.sequences))
    say(f"floor = the sequence's memory floor: (its {', '.join(f'{q} {len(MAP_ARGUMENTS[q])}' for q in args.sequences)}"
        f" maps + 1 output) x {map_bytes / 1e6:.1f} MB at the copy bandwidth of the same rounds "
        f"({bandwidth / 1e9:.1f} GB/s read + write, a map-sized copy_ median {medians['copy']:.2f} ms); nitorch/floor "
        f"= the largest nitorch/fused any kernel reading each map once could reach here (a fused goal above it "
        f"cannot be met on this machine)")
    say(f"goals: nitorch/eager >= {NITORCH_EAGER_GOAL:g}x, nitorch/fused >= {NITORCH_FUSED_GOAL:g}x; compile = first "
        f"fused call minus the median ({'on-disk' if args.warm_cache else 'fresh'} inductor cache); rel.diff "
        f"nitorch = max|eager - |nitorch|| / max|nitorch| (NITorch's FLAIR is signed, so its magnitude is compared; "
        f"its MPRAGE samples the echo one pulse before the k-space centre, which makes a difference of order 1e-3); "
        f"page faults = minor faults per call (median): a fresh {shape[0]}x{shape[1]}x{shape[2]} float32 buffer that "
        f"glibc does not recycle costs about {voxels_of(shape) * 4 // 4096} faults, the kernel zeroing every page")
    say()


def voxels_of(shape) -> int:
    return shape[0] * shape[1] * shape[2]


def denormal_fraction(values) -> float:
    """Fraction of non-zero values below the smallest normal float, where x86 arithmetic takes a slow path."""
    import torch

    tiny = torch.finfo(values.dtype).tiny
    return float(((values != 0) & (values.abs() < tiny)).float().mean())


def cpu_summary() -> str:
    """Core count and last-level cache size, which decide whether the maps stay in cache between calls."""
    cores = os.cpu_count()
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as handle:
            return f"{cores} cores, L3 {handle.read().strip()}"
    except OSError:
        return f"{cores} cores"


if __name__ == "__main__":
    sys.exit(main())
