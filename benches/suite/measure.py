#!/usr/bin/env python3
"""Runs one command and prints one JSON object describing it (stdlib only).

    measure.py [--out FILE] [--stdout FILE] [--cwd DIR] -- CMD ARGS...

wall_s: wall time; user_s/sys_s/cpu_pct from wait4 (cpu_pct 200 = two cores busy);
maxrss_kib: peak resident set (ru_maxrss); rss_anon_peak_kib: the largest RssAnon seen
in /proc/PID/status, sampled every 10 ms; write_bytes: bytes the process caused to be
written to storage (ru_oublock x 512, i.e. /proc/PID/io write_bytes at exit, threads
included). Exit status is the command's; the JSON is printed (or written) either way.
"""
import json, os, sys, threading, time

def main():
    args = sys.argv[1:]
    out = stdout = cwd = None
    while args and args[0] != "--":
        k, v = args[0], args[1]; args = args[2:]
        if k == "--out": out = v
        elif k == "--stdout": stdout = v
        elif k == "--cwd": cwd = v
        else: sys.exit(f"measure.py: unknown option {k}")
    cmd = args[1:]
    fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if stdout else None
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        if cwd: os.chdir(cwd)
        if fd is not None: os.dup2(fd, 1)
        try: os.execvp(cmd[0], cmd)
        except OSError as e:
            print(f"measure.py: {cmd[0]}: {e}", file=sys.stderr); os._exit(127)
    peak = [0]; done = [False]
    def sample():
        while not done[0]:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.01)
    th = threading.Thread(target=sample, daemon=True); th.start()
    _, status, ru = os.wait4(pid, 0)
    wall = time.monotonic() - t0
    done[0] = True; th.join()
    code = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    r = {"wall_s": round(wall, 4), "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3),
         "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else 0, "maxrss_kib": ru.ru_maxrss,
         "rss_anon_peak_kib": peak[0], "write_bytes": ru.ru_oublock * 512, "exit": code}
    text = json.dumps(r)
    if out:
        with open(out, "w") as f: f.write(text + "\n")
    else:
        print(text, file=sys.stderr)
    sys.exit(code if code >= 0 else 128 - code)

main()
