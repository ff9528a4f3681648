"""What the benchmarks read back: a wrk report, and a process's disk writes and CPU.

As a script, `python3 bench/wrk_report.py FILE` prints "rps p50_ms p99_ms non2xx", with
wrk's socket errors after them when there were any.
"""
import os
import re
import sys


def read(path):
    """The figures of the wrk report at `path`: requests/s, p50 and p99 in ms, requests,
    non-2xx answers and the socket-errors line (or None)."""
    text = open(path).read()

    def ms(label):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, text, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": ms("50"),
        "p99": ms("99"),
        "requests": int(re.search(r"(\d+) requests in", text).group(1)),
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else None,
    }


def cpu_seconds(stat_path):
    """User plus system CPU seconds of a /proc .../stat file."""
    fields = open(stat_path).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_bytes(pid):
    """Bytes the process has caused to be written to disk."""
    io = dict(line.split(": ") for line in open(f"/proc/{pid}/io").read().splitlines())
    return int(io["write_bytes"])


if __name__ == "__main__":
    report = read(sys.argv[1])
    errors = f" ({report['socket_errors']})" if report["socket_errors"] else ""
    print(f"{report['rps']:.0f} {report['p50']:.2f} {report['p99']:.2f} {report['non2xx']}{errors}")
