#!/usr/bin/env python3
"""Turns the suite's records into benches/results/latest.md, latest.json and curves.png."""
import argparse, datetime, json, os, platform, shutil, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--records"); ap.add_argument("--out"); ap.add_argument("--command")
ap.add_argument("--quick"); ap.add_argument("--wall", type=int); ap.add_argument("--bin")
a = ap.parse_args()
recs = [json.loads(l) for l in open(a.records) if l.strip()]

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return ""

def cpu_model():
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            return l.split(":", 1)[1].strip()
    return platform.processor()

mem_kib = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
machine = {
    "nproc": os.cpu_count(), "cpu": cpu_model(), "memory_gib": round(mem_kib / 2**20, 1),
    "kernel": platform.release(), "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
    "filesystem_tmp": sh("df -hT /tmp | tail -1 | awk '{print $1\" \"$2\", \"$3\" total, \"$5\" free\"}'"),
    "disk": sh("lsblk -dno NAME,ROTA,SIZE,MODEL 2>/dev/null | head -3 | tr '\\n' ';'"),
    "load_at_end": open("/proc/loadavg").read().split()[:3],
}
tools = {
    "ferry": sh("git rev-parse --short HEAD") + (" (+ uncommitted)" if sh("git status --porcelain -- format server client") else ""),
    "rustc": sh("rustc --version | cut -d' ' -f2"), "zstd": sh("zstd --version | grep -o 'v[0-9.]*' | head -1"),
    "nginx": sh("(nginx -v 2>&1 || /usr/sbin/nginx -v 2>&1) | sed 's/.*nginx\\///'"),
    "curl": sh("curl --version | head -1 | cut -d' ' -f2"), "wrk": sh("dpkg-query -W -f='${Version}' wrk"),
    "h2load": sh("h2load --version 2>&1 | head -1 | sed 's/.*nghttp2\\///'"), "bsdiff": sh("dpkg-query -W -f='${Version}' bsdiff"),
}
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

def num(v, unit=""):
    if not isinstance(v, (int, float)):
        return "–" if v is None else str(v)
    if unit == "KiB":
        return f"{v / 1024:,.1f} MiB"
    if unit == "B":
        return f"{v:,} B ({v / 2**20:,.1f} MiB)"
    if unit == "s":
        return f"{v:,.3f} s" if v < 10 else f"{v:,.1f} s"
    if isinstance(v, float):
        return f"{v:,.3g}{(' ' + unit) if unit else ''}" if abs(v) < 1000 else f"{v:,.0f}{(' ' + unit) if unit else ''}"
    return f"{v:,}{(' ' + unit) if unit else ''}"

def status(r):
    x, t, op = r.get("ratio"), r.get("target"), r.get("op")
    if not isinstance(x, (int, float)) or t is None:
        return "not measured"
    if op == ">=":
        return "met" if x >= t else f"short by {100 * (t - x) / t:.0f}% (needs {t / x:.2f}x)"
    return "met" if x <= t else f"short by {100 * (x - t) / t:.0f}% (over by {x / t:.2f}x)"

targets = [r for r in recs if r.get("kind") == "target"]
infos = [r for r in recs if r.get("kind") == "info"]
notes = [r for r in recs if r.get("kind") == "note"]
curves = [r for r in recs if r.get("kind") == "curve"]
sections = [r for r in recs if r.get("kind") == "section"]
# The server's targets, from the same run's wrk (HTTP/1.1) figures for both servers.
SERVER_TARGETS = {"channel head": ("rps", 1.0, "requests/s"), "64 KiB ranges": ("rps", 1.0, "requests/s"),
                  "4 MiB ranges": ("bps", 0.8, "bytes/s")}
by = {(r["load"], r["server"]): r for r in recs if r.get("kind") == "server" and r.get("proto") == "HTTP/1.1 (wrk)"}
for load, (key, target, what) in SERVER_TARGETS.items():
    f, n = by.get((load, "ferry")), by.get((load, "nginx"))
    if not f or not n or not f.get(key) or not n.get(key):
        continue
    targets.append({"section": "server", "kind": "target", "compare": "rate", "unit": "",
                    "what": f"ferry-server serve vs nginx, {load}, 1,000 keep-alive connections, wrk: {what} "
                            f"(errors {f.get('errors', 0)} vs {n.get('errors', 0)}; table below)",
                    "ferry": f[key], "ref": n[key], "ref_label": "nginx, sendfile on, one worker per core",
                    "op": ">=", "target": target, "ratio": round(f[key] / n[key], 3)})
for r in targets:
    r["status"] = status(r)

def cell(v):
    return str(v).replace("|", "\\|")

L = []
L.append("# ferry benchmark suite: latest run\n")
L.append(f"Generated {now} by `{a.command}` in {a.wall} s{' (--quick: small sizes, esbuild pair)' if a.quick == '1' else ''}.")
L.append(f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, Linux {machine['kernel']}, "
         f"{machine['os']}, /tmp on {machine['filesystem_tmp']}; load average at the end {' '.join(machine['load_at_end'])} "
         "(a shared machine: absolute times drift, ratios are from the same run).")
L.append("Tools: " + "; ".join(f"{k} {v}" for k, v in tools.items() if v) + ".\n")
L.append("Ratios: for times, reference time / ferry time (higher is better, 1.0 = as fast as the reference); "
         "for sizes and memory, ferry / reference (lower is better). Every figure is one run, except where a row gives the medians of alternating runs.\n")
L.append("## Targets\n")
L.append("| section | measurement | ferry | reference | ratio | target | status |")
L.append("|---|---|---:|---:|---:|---:|---|")
for r in targets:
    u = r.get("unit", "")
    ref = num(r.get("ref"), u) + (f" ({r['ref_label']})" if r.get("ref_label") else "")
    what = r["what"] + (f" — {r['detail']}" if r.get("detail") else "")
    x = r.get("ratio")
    L.append(f"| {r['section']} | {cell(what)} | {num(r.get('ferry'), u)} | {cell(ref)} | {x if x is not None else '–'} | {r.get('op', '')} {r.get('target', '')} | {r['status']} |")
if infos:
    L.append("\n## Other figures\n")
    L.append("| section | measurement | ferry | reference |")
    L.append("|---|---|---:|---:|")
    for r in infos:
        u = r.get("unit", "")
        ref = "" if r.get("ref") is None else num(r.get("ref"), u) + (f" ({r['ref_label']})" if r.get("ref_label") else "")
        L.append(f"| {r['section']} | {cell(r['what'])} | {num(r.get('ferry'), u)} | {cell(ref)} |")
servers = [r for r in recs if r.get("kind") == "server"]
if servers:
    L.append("\n## Server under 1,000 concurrent keep-alive connections (loopback)\n")
    L.append("| load | protocol | server | requests/s | bytes/s | p50 | p99 (h2load: mean) | errors | server peak RSS |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|")
    rss = {(r["load"], r["server"]): r.get("peak_rss_kib") for r in servers if r.get("proto") == "-"}
    def ms(v): return "–" if not isinstance(v, (int, float)) else f"{v:,.2f} ms"
    for r in servers:
        if r.get("proto") == "-":
            continue
        p99 = ms(r.get("p99_ms")) if "p99_ms" in r else ("mean " + ms(r.get("mean_ms")))
        bps = r.get("bps")
        L.append(f"| {r['load']} | {r['proto']} | {r['server']} | {num(r.get('rps'))} | "
                 f"{'–' if not isinstance(bps, (int, float)) else f'{bps / 1e6:,.1f} MB/s'} | {ms(r.get('p50_ms'))} | {p99} | "
                 f"{num(r.get('errors'))} | {num(rss.get((r['load'], r['server'])), 'KiB')} |")
if curves:
    L.append("\n## Cost curves ([curves.png](curves.png))\n")
    L.append("| operation | input | time | peak memory |")
    L.append("|---|---|---:|---:|")
    for r in sorted(curves, key=lambda r: (r["axis"], r["op"], r["x"])):
        x = r["x"]
        lab = (f"{x / 2**30:.0f} GiB" if x >= 2**30 else f"{x / 1e6:.0f} MB") if r["axis"] == "bytes" else f"{x:,} files"
        L.append(f"| {r['op']} | {lab} | {num(r['seconds'], 's')} | {num(r['peak_kib'], 'KiB')} |")
    L.append("\npublish: whole `ferry-server publish` (peak RSS); update: fresh `ferry update` from a loopback nginx "
             "(peak RSS of the agent); serve: fresh `ferry update` from `ferry-server serve` (time of the update, peak RSS of the server).")
if notes:
    L.append("\n## Notes\n")
    for r in notes:
        L.append(f"- {r['section']}: {r['text']}")
if sections:
    L.append("\nSection wall times: " + ", ".join(f"{r['section']} {r['seconds']} s" for r in sections) + ".")
md = "\n".join(L) + "\n"
os.makedirs(a.out, exist_ok=True)
open(os.path.join(a.out, "latest.md"), "w").write(md)
json.dump({"generated": now, "command": a.command, "wall_s": a.wall, "quick": a.quick == "1", "machine": machine,
           "tools": tools, "targets": targets, "info": infos, "curves": curves, "servers": servers, "notes": notes, "sections": sections},
          open(os.path.join(a.out, "latest.json"), "w"), indent=1)
print(md)

# ---- curves.png (gnuplot) ----
if curves and shutil.which("gnuplot"):
    d = os.path.join(a.out, ".curves")
    os.makedirs(d, exist_ok=True)
    series = {}
    for r in curves:
        series.setdefault((r["axis"], r["op"]), []).append(r)
    for (axis, op), rs in series.items():
        with open(os.path.join(d, f"{axis}-{op}.dat"), "w") as f:
            for r in sorted(rs, key=lambda r: r["x"]):
                x = r["x"] / 2**20 if axis == "bytes" else r["x"]
                f.write(f"{x} {r['seconds']} {r['peak_kib'] / 1024}\n")
    def plots(axis, col):
        ps = [f"'{d}/{axis}-{op}.dat' using 1:{col} with linespoints title '{op}'"
              for op in ("publish", "update", "serve") if (axis, op) in series]
        return ", ".join(ps) if ps else "NaN notitle"
    g = f"""set terminal pngcairo size 1000,700 font ',9'
set output '{os.path.join(a.out, "curves.png")}'
set multiplot layout 2,2 title 'ferry cost curves ({machine["nproc"]} cores, {now}{", --quick" if a.quick == "1" else ""})'
set logscale xy; set grid; set key left top
set xlabel 'release size (MiB, one file)'; set ylabel 'seconds'; set title 'time vs release size'
plot {plots('bytes', 2)}
set ylabel 'peak RSS (MiB)'; set title 'peak memory vs release size'
plot {plots('bytes', 3)}
set xlabel 'files in the tree'; set ylabel 'seconds'; set title 'time vs tree size'
plot {plots('files', 2)}
set ylabel 'peak RSS (MiB)'; set title 'peak memory vs tree size'
plot {plots('files', 3)}
unset multiplot
"""
    subprocess.run(["gnuplot"], input=g, text=True, check=False)
    shutil.rmtree(d, ignore_errors=True)
