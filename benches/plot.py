#!/usr/bin/env python3
"""Tables and plots from the JSON reports of benches/compare.sh.

    benches/plot.py --table DIR CASE...   # a Markdown table of the cases, every system
    benches/plot.py --plots DIR OUTDIR    # size-latency.png and size-cpu.png from size* cases

DIR holds CASE.SYSTEM.json, as `qrelay-cli bench --json` (SYSTEM qrelay) or `qrelay-cli
peer-bench --json` (redis, nats) wrote them. Plots need matplotlib (`pip install matplotlib`).
"""

import argparse
import json
import pathlib
import re
import sys

SYSTEMS = ["qrelay", "redis", "nats"]


def load(directory, case, system):
    """The figures of one run, the same keys whichever tool wrote it; None if absent."""
    path = pathlib.Path(directory) / f"{case}.{system}.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if system == "qrelay":
        kind = report["kinds"][0]
        server = report["server"]
        return {
            "receivers": report["scenario"]["connections"] - report["scenario"]["senders"],
            "rate": report["scenario"]["rate"],
            "latency": kind["latency"],
            "expected": kind["delivery"]["expected"],
            "delivered": kind["delivery"]["delivered"],
            "per_second": kind["deliveries_per_sec"],
            "cpu_us": server.get("cpu_per_delivery_us"),
            "tool_cpu_s": report.get("client_cpu_seconds"),
        }
    return {
        "receivers": report["connections"] - report["senders"],
        "rate": report["rate"],
        "latency": report["latency"],
        "expected": report["expected"],
        "delivered": report["delivered"],
        "per_second": report["deliveries_per_second"],
        "cpu_us": report.get("server_cpu_per_delivery_us"),
        "tool_cpu_s": report.get("tool_cpu_seconds"),
    }


def ms(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def table(directory, cases):
    print("| case | system | p50 | p99 | max | delivered / expected | deliveries/s "
          "| server CPU per delivery | tool CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        for system in SYSTEMS:
            run = load(directory, case, system)
            if run is None:
                continue
            lat = run["latency"]
            cpu = "n/a" if run["cpu_us"] is None else f"{run['cpu_us']:.2f} µs"
            tool = "n/a" if run["tool_cpu_s"] is None else f"{run['tool_cpu_s']:.1f} s"
            print(f"| {case} (1 → {run['receivers']:,}, {run['rate']:g}/s) | {system} "
                  f"| {ms(lat['p50_us'])} | {ms(lat['p99_us'])} | {ms(lat['max_us'])} "
                  f"| {run['delivered']:,} / {run['expected']:,} | {run['per_second']:,.0f} "
                  f"| {cpu} | {tool} |")


def plots(directory, outdir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plots need matplotlib: pip install matplotlib")
    cases = sorted({re.match(r"(size\d+)\.", p.name).group(1)
                    for p in pathlib.Path(directory).glob("size*.json")},
                   key=lambda c: int(c[4:]))
    if not cases:
        sys.exit(f"no size* reports in {directory}: run benches/compare.sh size10 ... first")
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    series = {}
    for system in SYSTEMS:
        runs = [load(directory, case, system) for case in cases]
        runs = [r for r in runs if r is not None]
        if runs:
            series[system] = runs

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, runs in series.items():
        x = [r["receivers"] for r in runs]
        line, = ax.plot(x, [r["latency"]["p50_us"] / 1000 for r in runs], "o-",
                        label=f"{system} p50")
        ax.plot(x, [r["latency"]["p99_us"] / 1000 for r in runs], "s--",
                color=line.get_color(), label=f"{system} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("receivers in the room")
    ax.set_ylabel("send → receive latency (ms)")
    ax.set_title("Latency by room size, 10 messages/s, evenly paced")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "size-latency.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, runs in series.items():
        runs = [r for r in runs if r["cpu_us"] is not None]
        ax.plot([r["receivers"] for r in runs], [r["cpu_us"] for r in runs], "o-", label=system)
    ax.set_xscale("log")
    ax.set_xlabel("receivers in the room")
    ax.set_ylabel("server CPU per delivery (µs)")
    ax.set_title("Server CPU per delivery by room size, 10 messages/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(outdir / "size-cpu.png", dpi=110)
    print(f"wrote {outdir / 'size-latency.png'} and {outdir / 'size-cpu.png'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--table", metavar="DIR")
    mode.add_argument("--plots", metavar="DIR")
    parser.add_argument("rest", nargs="*", help="cases (--table) or the output folder (--plots)")
    args = parser.parse_args()
    if args.table:
        table(args.table, args.rest)
    else:
        if len(args.rest) != 1:
            parser.error("--plots DIR OUTDIR")
        plots(args.plots, args.rest[0])


if __name__ == "__main__":
    main()
