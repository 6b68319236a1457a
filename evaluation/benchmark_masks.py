"""Micro-benchmark of the tree-buffer builders (the `--mask-impl` choices) on EAGLE-3 trees.

For each total_token size it
draws trees through the engine's own candidate expansion and `select_tree`
(`eagle.tree.synthetic.random_tree`: top_k root children, then per level the best top_k of
top_k * top_k cumulative log-probs), checks that every implementation returns the same buffers,
then times `build(parents, max_depth)` per implementation: wall time of one call with the device
synchronised before and after, several trees cycled, warm-up excluded; the implementations take
turns in blocks of consecutive calls (`--block`); median, p10 and p90.

Outputs: a markdown table (logged, optionally written), a JSON report (device, versions,
settings, tree shapes, results) and a log-log PNG of median time against total tokens.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("evaluation.benchmark_masks")

EPILOG = """examples:
  python -m evaluation.benchmark_masks --iterations 200 --out-json masks.json --out-png masks.png
  python -m evaluation.benchmark_masks --device cpu --total-tokens 60,128 --impls rebuild,vectorized
  python -m evaluation.benchmark_masks --markdown table.md   # table for docs/BENCHMARKS.md
"""


@dataclass(frozen=True)
class BenchConfig:
    iterations: int = 200  # timed calls per implementation and size
    warmup: int = 20  # untimed calls first (Triton compiles, caches fill)
    block: int = 25  # consecutive calls per implementation before the next one takes its turn
    total_tokens: tuple = (60, 128, 256, 512, 1024)  # upstream default 60 up to large trees
    impls: tuple = ()  # empty: every implementation available on the device
    device: str = ""  # empty: cuda when available, else cpu
    depth: int = 5  # upstream default; grown per size when the tree needs it
    top_k: int = 10  # upstream default
    trees: int = 16  # distinct trees cycled per size, so no single shape decides
    seed: int = 0
    out_json: Optional[str] = None
    out_png: Optional[str] = None
    markdown: Optional[str] = None

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.block < 1 or self.warmup < 0 or self.trees < 1:
            raise ValueError("--iterations, --block and --trees must be >= 1, --warmup >= 0")
        if not self.total_tokens or min(self.total_tokens) < 2:
            raise ValueError("--total-tokens needs sizes >= 2")
        if self.depth < 1 or self.top_k < 1:
            raise ValueError("--depth and --top-k must be >= 1")


def comma_ints(text: str) -> tuple:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_names(text: str) -> tuple:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark_masks", description=__doc__.split("\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    work = p.add_argument_group("workload")
    work.add_argument("--total-tokens", type=comma_ints, default=BenchConfig.total_tokens,
                      metavar="N,N,...", help="tree sizes incl. the root (default 60,128,256,512,1024)")
    work.add_argument("--depth", type=int, default=5, metavar="D",
                      help="draft depth; grown per size until top_k + D*top_k^2 >= N-1 (default 5)")
    work.add_argument("--top-k", type=int, default=10, metavar="K", help="top_k (default 10)")
    work.add_argument("--trees", type=int, default=16, metavar="M", help="trees cycled per size")
    work.add_argument("--seed", type=int, default=0, metavar="S")
    impl = p.add_argument_group("implementations")
    impl.add_argument("--impls", type=comma_names, default=(), metavar="A,B,...",
                      help="rebuild,incremental,vectorized,triton (default: all available)")
    impl.add_argument("--device", default="", metavar="DEV", help="cuda, cuda:1, cpu (default: cuda if any)")
    timing = p.add_argument_group("timing")
    timing.add_argument("--iterations", type=int, default=200, metavar="I", help="timed calls (default 200)")
    timing.add_argument("--warmup", type=int, default=20, metavar="W", help="untimed calls (default 20)")
    timing.add_argument("--block", type=int, default=25, metavar="B",
                        help="consecutive calls per implementation per turn; 1 interleaves (default 25)")
    out = p.add_argument_group("output")
    out.add_argument("--out-json", metavar="PATH", help="write the JSON report here")
    out.add_argument("--out-png", metavar="PATH", help="write the log-log plot here")
    out.add_argument("--markdown", metavar="PATH", help="also write the markdown table here")
    return p


def parse_config(argv: Optional[Sequence[str]]) -> BenchConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return BenchConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


def resolve_target(cfg: BenchConfig) -> tuple:
    """(device, implementation names): the requested ones, or all available on the device.
    Exits with a message naming the choices when one is unknown or cannot run there."""
    from eagle.ea_model import resolve_device
    from eagle.tree.masks import MaskImplUnavailable, available_mask_impls, get_mask_impl

    try:
        device = resolve_device(cfg.device or "auto")
        for name in cfg.impls:
            get_mask_impl(name, device)
    except (ValueError, MaskImplUnavailable) as exc:
        raise SystemExit(f"benchmark_masks: error: {exc}") from None
    return device, list(cfg.impls) or available_mask_impls(device)


def draw_trees(cfg: BenchConfig, total_token: int, device) -> tuple:
    """(TreeConfig, [parents [T] on device]) for one size; drawn on the CPU for reproducibility."""
    import torch

    from eagle.tree.synthetic import fit_tree_config, random_tree

    tree = fit_tree_config(total_token, cfg.depth, cfg.top_k)
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + total_token)
    return tree, [random_tree(tree, gen).parents.to(device) for _ in range(cfg.trees)]


def tree_shape(parents_list: list) -> dict:
    """Mean leaf count and deepest node over the drawn trees (from the CPU reference build)."""
    from eagle.tree.masks import build_rebuild

    built = [build_rebuild(p.cpu(), 0) for p in parents_list]
    return {"mean_leaves": sum(b.retrieve_indices.shape[0] for b in built) / len(built),
            "mean_node_depth": sum(float(b.position_ids.float().mean()) for b in built) / len(built),
            "max_node_depth": max(int(b.position_ids.max()) for b in built)}


def compact(retrieve):
    """Drop the -1 padding rows and columns so padded and compact layouts compare."""
    retrieve = retrieve[(retrieve != -1).any(dim=1)]
    return retrieve[:, (retrieve != -1).any(dim=0)]


def check_agreement(impls: list[str], parents_list: list, max_depth: int) -> None:
    """Every implementation returns the same mask, positions and retrieve rows on every tree."""
    import torch

    from eagle.tree.masks import get_mask_impl

    for parents in parents_list:
        outs = [get_mask_impl(n).build(parents, max_depth) for n in impls]
        first = outs[0]
        for name, out in zip(impls[1:], outs[1:]):
            same = (torch.equal(out.mask, first.mask)
                    and torch.equal(out.position_ids, first.position_ids)
                    and torch.equal(compact(out.retrieve_indices), compact(first.retrieve_indices)))
            if not same:
                raise RuntimeError(f"{name} disagrees with {impls[0]} on a tree: {parents.tolist()}")


def time_impls(impls: list[str], parents_list: list, max_depth: int, cfg: BenchConfig,
               device) -> dict:
    """name -> milliseconds of each timed `build` call, device synchronised before and after.

    Calls run in blocks of `cfg.block` consecutive calls per implementation, the implementations
    taking turns block by block, so drifts of clock or load over the run hit all of them alike;
    call i uses tree i % M. block=1 interleaves single calls (caches cooled by the others)."""
    import torch

    from eagle.tree.masks import get_mask_impl

    builds = {name: get_mask_impl(name).build for name in impls}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = len(parents_list)
    for build in builds.values():
        for i in range(cfg.warmup):
            build(parents_list[i % n], max_depth)
    times: dict = {name: [] for name in impls}
    for start in range(0, cfg.iterations, cfg.block):
        for name, build in builds.items():
            for i in range(start, min(start + cfg.block, cfg.iterations)):
                sync()
                t0 = time.perf_counter()
                build(parents_list[i % n], max_depth)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def quantile(sorted_ms: list, q: float) -> float:
    """Linear-interpolation quantile of an ascending list."""
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(name: str, total_token: int, times: list) -> dict:
    ms = sorted(times)
    return {"impl": name, "total_tokens": total_token, "iterations": len(ms),
            "median_ms": quantile(ms, 0.5), "p10_ms": quantile(ms, 0.1), "p90_ms": quantile(ms, 0.9)}


def add_speedups(results: list) -> None:
    """speedup_vs_rebuild = rebuild median / impl median, where rebuild was measured."""
    base = {r["total_tokens"]: r["median_ms"] for r in results if r["impl"] == "rebuild"}
    for r in results:
        if r["total_tokens"] in base:
            r["speedup_vs_rebuild"] = base[r["total_tokens"]] / r["median_ms"]


def environment(device, impls: list[str]) -> dict:
    import torch

    from eagle.tree.masks import MASK_IMPLS

    from .code_version import package_version
    from .preflight import device_name

    return {"device": {"type": device.type, "name": device_name(device)},
            "python": platform.python_version(), "torch": torch.__version__,
            "triton": package_version("triton"),
            "implementations": {name: MASK_IMPLS[name].summary for name in impls}}


def run(cfg: BenchConfig, device, impls: list[str]) -> dict:
    """Draw trees, check agreement, time every implementation at every size; the JSON report."""
    report = {**environment(device, impls), "settings": {**asdict(cfg), "device": str(device), "impls": impls},
              "trees": [],
              "results": []}
    log.info("device %s (%s); implementations: %s", report["device"]["name"], device, ", ".join(impls))
    for total_token in cfg.total_tokens:
        tree, parents_list = draw_trees(cfg, total_token, device)
        shape = {"total_tokens": total_token, "depth": tree.depth, "top_k": tree.top_k,
                 "max_depth": tree.max_depth, **tree_shape(parents_list)}
        report["trees"].append(shape)
        log.info("total_tokens %d: depth %d, top_k %d (max_depth %d); on average %.1f leaves, "
                 "node depth %.2f", total_token, tree.depth, tree.top_k, tree.max_depth,
                 shape["mean_leaves"], shape["mean_node_depth"])
        check_agreement(impls, parents_list, tree.max_depth)
        times = time_impls(impls, parents_list, tree.max_depth, cfg, device)
        report["results"] += [summarize(name, total_token, times[name]) for name in impls]
    add_speedups(report["results"])
    return report


def markdown_table(report: dict) -> str:
    """Median ms (p10-p90) per size and implementation, then speedups against rebuild."""
    impls = report["settings"]["impls"]
    cell = {(r["impl"], r["total_tokens"]): r for r in report["results"]}

    def timing(name: str, size: int) -> str:
        r = cell[name, size]
        return f"{r['median_ms']:.4f} ({r['p10_ms']:.4f}-{r['p90_ms']:.4f})"

    lines = [f"Tree-buffer build time on {report['device']['name']} ({report['device']['type']}), "
             f"ms, median (p10-p90) of {report['settings']['iterations']} calls "
             f"(blocks of {report['settings']['block']})", "",
             "| total_tokens | depth x top_k | " + " | ".join(impls) + " |",
             "|" + "---|" * (len(impls) + 2)]
    for t in report["trees"]:
        row = " | ".join(timing(n, t["total_tokens"]) for n in impls)
        lines.append(f"| {t['total_tokens']} | {t['depth']} x {t['top_k']} | {row} |")
    others = [n for n in impls if n != "rebuild"]
    if "rebuild" in impls and others:
        lines += ["", "| total_tokens | " + " | ".join(f"{n} vs rebuild" for n in others) + " |",
                  "|" + "---|" * (len(others) + 1)]
        for t in report["trees"]:
            row = " | ".join(f"{cell[n, t['total_tokens']]['speedup_vs_rebuild']:.2f}x" for n in others)
            lines.append(f"| {t['total_tokens']} | {row} |")
    return "\n".join(lines)


def plain_log_ticks(ax, sizes: list[int]) -> None:
    """Log axes labelled in plain numbers (60, 0.5), not 6x10^1: x at the measured tree sizes, y at
    1, 2 and 5 times each power of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())


def plot(report: dict, path: Path) -> None:
    """Log-log median time against total tokens, one line (p10-p90 band) per implementation;
    the PNG's Description metadata lists the plotted implementations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    impls = report["settings"]["impls"]
    for name in impls:
        rows = sorted((r for r in report["results"] if r["impl"] == name), key=lambda r: r["total_tokens"])
        x = [r["total_tokens"] for r in rows]
        (line,) = ax.plot(x, [r["median_ms"] for r in rows], marker="o", label=name)
        ax.fill_between(x, [r["p10_ms"] for r in rows], [r["p90_ms"] for r in rows],
                        color=line.get_color(), alpha=0.2)
    ax.set(xscale="log", yscale="log", xlabel="total tokens (tree nodes incl. root)",
           ylabel="build time per tree, ms (median, p10-p90)",
           title=f"Tree mask + positions + retrieve indices on {report['device']['name']}")
    plain_log_ticks(ax, sorted({r["total_tokens"] for r in report["results"]}))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Description": "implementations: " + ", ".join(impls)})
    plt.close(fig)


def write_outputs(cfg: BenchConfig, report: dict, table: str) -> None:
    for target, writer in ((cfg.out_json, lambda p: p.write_text(json.dumps(report, indent=2) + "\n")),
                           (cfg.markdown, lambda p: p.write_text(table + "\n")),
                           (cfg.out_png, lambda p: plot(report, p))):
        if target:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer(path)
            log.info("wrote %s", path)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(argv)
    device, impls = resolve_target(cfg)
    report = run(cfg, device, impls)
    table = markdown_table(report)
    log.info("\n%s", table)
    write_outputs(cfg, report, table)
    return report


if __name__ == "__main__":
    main()
