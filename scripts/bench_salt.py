#!/usr/bin/env python3
"""Measure SaltStack on this machine, and set its figures beside Runwarden's.

Two commands, both run by scripts/bench-salt:

  salt   Run with the Python of a virtualenv that has Salt installed. Starts a
         salt-master and N salt-minions on 127.0.0.1 with all their state in
         --dir, accepts the minion keys, measures through one long-lived
         LocalClient, stops every process it started by PID and writes the
         figures as JSON.
  table  Run with any Python 3. Reads that JSON and runwarden-bench's, and
         prints one Markdown table with both.

Figures use the shape of runwarden-bench's JSON: id, label, unit, median,
p95, p99 and runs, with nearest-rank percentiles.
"""

import argparse
import getpass
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid

# Name of the environment variable that marks a timed-out job's processes,
# the same one runwarden-bench's timeout section uses.
MARKER_VARIABLE = "RW_BENCH_MARK"


def percentile(sorted_values, p):
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def figure(fig_id, label, unit, samples):
    values = sorted(samples)
    return {
        "id": fig_id,
        "label": label,
        "unit": unit,
        "median": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "runs": len(values),
    }


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(check, limit, description):
    """Call check() every 0.2 s until it returns a true value, for at most
    limit seconds, and return that value."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{description} did not happen within {limit} s")
        time.sleep(0.2)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# /proc helpers


def parent_pids():
    """Map each live pid to its parent pid."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        after_name = text[text.rfind(")") + 2:].split()
        parents[int(name)] = int(after_name[1])
    return parents


def process_tree(root):
    """Return the pid root and every live descendant of it."""
    parents = parent_pids()
    tree = [root]
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.extend(children)
        frontier.extend(children)
    return [pid for pid in tree if pid in parents]


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_mib(root):
    """RSS and PSS summed over a process tree, in MiB, and its size. RSS
    counts pages shared between forked workers once per process; PSS splits
    them, so the PSS sum is the tree's share of memory."""
    tree = process_tree(root)
    rss = sum(status_kib(pid, "VmRSS") for pid in tree) / 1024
    pss = sum(pss_kib(pid) for pid in tree) / 1024
    return rss, pss, len(tree)


def is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return True
    return text[text.rfind(")") + 2:].startswith("Z")


def processes_with_marker(marker):
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or is_zombie(int(name)):
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:
            continue
        if needle in variables:
            found.append(int(name))
    return found


class Processes:
    """Processes this helper started, stopped by PID at the end."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.started = []

    def start(self, name, argv):
        log = open(os.path.join(self.log_dir, f"{name}.out"), "wb")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((name, process))
        return process

    def stop_all(self):
        """SIGTERM each started process, wait up to 20 s for it and its
        descendants, then SIGKILL whatever of them is left, by PID."""
        trees = {}
        for name, process in self.started:
            trees[name] = process_tree(process.pid) if process.poll() is None else []
        for name, process in reversed(self.started):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, process in self.started:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"bench_salt: {name} (pid {process.pid}) ignored SIGTERM; sending SIGKILL", file=sys.stderr)
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        alive = parent_pids()
        leftover = [(name, pid) for name, pids in trees.items() for pid in pids if pid in alive and not is_zombie(pid)]
        for name, pid in leftover:
            print(f"bench_salt: a process of {name} (pid {pid}) outlived it; sending SIGKILL", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.started = []


def write_configs(root, minions):
    user = getpass.getuser()
    publish_port = free_port()
    ret_port = free_port()
    master_dir = os.path.join(root, "master")
    os.makedirs(os.path.join(master_dir, "conf"))
    with open(os.path.join(master_dir, "conf", "master"), "w") as conf:
        # root_dir is prefixed to pki_dir, cachedir, sock_dir, log_file and
        # pidfile, so all state stays under it.
        conf.write(
            f"root_dir: {master_dir}\n"
            f"user: {user}\n"
            "interface: 127.0.0.1\n"
            f"publish_port: {publish_port}\n"
            f"ret_port: {ret_port}\n"
            "log_level_logfile: warning\n"
        )
    minion_dirs = []
    for n in range(minions):
        minion_dir = os.path.join(root, f"minion-{n}")
        os.makedirs(os.path.join(minion_dir, "conf"))
        with open(os.path.join(minion_dir, "conf", "minion"), "w") as conf:
            conf.write(
                f"root_dir: {minion_dir}\n"
                f"id: minion-{n}\n"
                f"user: {user}\n"
                "master: 127.0.0.1\n"
                f"master_port: {ret_port}\n"
                f"publish_port: {publish_port}\n"
                # Retry authentication every second while the key waits to be
                # accepted (the default is 10 s); this only shortens set-up.
                "acceptance_wait_time: 1\n"
                "random_reauth_delay: 0\n"
                "log_level_logfile: warning\n"
            )
        minion_dirs.append(minion_dir)
    return master_dir, minion_dirs, publish_port, ret_port


def listening_addresses(pids):
    """Local TCP addresses the given pids listen on, from /proc/net/tcp*."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and inode in inodes:
                        address, port = local.split(":")
                        if width == 8:
                            host = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                        else:
                            host = address
                        addresses.append(f"{host}:{int(port, 16)}")
        except OSError:
            continue
    return sorted(set(addresses))


def run_salt(args):
    import salt.client
    import salt.version

    os.makedirs(args.dir, exist_ok=True)
    log_dir = os.path.join(args.dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    master_dir, minion_dirs, _, ret_port = write_configs(args.dir, args.minions)
    bin_dir = os.path.dirname(sys.executable)
    processes = Processes(log_dir)
    report = {
        "salt_version": salt.version.__version__,
        "python": platform.python_version(),
        "minions": args.minions,
        "figures": [],
        "notes": [],
    }
    try:
        master = processes.start("salt-master", [os.path.join(bin_dir, "salt-master"), "-c", os.path.join(master_dir, "conf")])
        wait_for(lambda: port_open(ret_port), 120, "salt-master listening")
        minions = [
            processes.start(f"salt-minion-{n}", [os.path.join(bin_dir, "salt-minion"), "-c", os.path.join(minion_dir, "conf")])
            for n, minion_dir in enumerate(minion_dirs)
        ]
        accept_keys(bin_dir, master_dir, args.minions)
        client = salt.client.LocalClient(c_path=os.path.join(master_dir, "conf", "master"))
        wait_for(
            lambda: len(client.cmd("*", "test.ping", timeout=5) or {}) == args.minions,
            180,
            f"all {args.minions} minions answering test.ping",
        )
        listening = listening_addresses(process_tree(master.pid))
        report["master_listening"] = listening
        print(f"bench_salt: salt-master listens on {', '.join(listening)}", file=sys.stderr)
        minion_listening = listening_addresses([pid for minion in minions for pid in process_tree(minion.pid)])
        if minion_listening:
            print(f"bench_salt: salt-minions listen on {', '.join(minion_listening)}", file=sys.stderr)
        beyond_loopback = [address for address in listening + minion_listening if not address.startswith("127.0.0.1:")]
        if beyond_loopback:
            raise RuntimeError(f"Salt listens beyond 127.0.0.1 on {beyond_loopback}; check the interface setting")

        measure_latency(client, args.latency_runs, report)
        measure_fanout(client, args.minions, args.fanout_runs, report)
        measure_memory(master, minions, args.rss_samples, report)
        measure_timeout(client, report)
    finally:
        processes.stop_all()

    with open(args.json, "w") as out:
        json.dump(report, out, indent=2)
        out.write("\n")
    print(f"bench_salt: wrote {args.json}", file=sys.stderr)


def accept_keys(bin_dir, master_dir, count):
    salt_key = [os.path.join(bin_dir, "salt-key"), "-c", os.path.join(master_dir, "conf")]

    def pending():
        listing = subprocess.run(salt_key + ["-L", "--out", "json"], capture_output=True, text=True, check=True)
        keys = json.loads(listing.stdout)
        return len(keys.get("minions_pre", [])) + len(keys.get("minions", [])) >= count

    wait_for(pending, 180, f"{count} minion keys waiting for acceptance")
    subprocess.run(salt_key + ["-A", "-y"], capture_output=True, check=True)


def measure_latency(client, runs, report):
    samples = []
    for n in range(runs + 3):
        started = time.perf_counter()
        answer = client.cmd("minion-0", "cmd.run", ["true"], timeout=60)
        elapsed = time.perf_counter() - started
        if answer.get("minion-0") != "":
            raise RuntimeError(f"cmd.run true on minion-0 returned {answer!r}")
        if n >= 3:
            samples.append(elapsed * 1e3)
    report["figures"].append(figure("salt_latency", "LocalClient cmd.run 'true', 1 minion", "ms", samples))


def measure_fanout(client, minions, runs, report):
    samples = []
    for n in range(runs + 1):
        started = time.perf_counter()
        answer = client.cmd("*", "cmd.run", ["true"], timeout=120)
        elapsed = time.perf_counter() - started
        if len(answer) != minions or any(value != "" for value in answer.values()):
            raise RuntimeError(f"cmd.run true on all {minions} minions returned {answer!r}")
        if n >= 1:
            samples.append(elapsed * 1e3)
    report["figures"].append(
        figure(f"salt_fanout_{minions}", f"LocalClient cmd.run 'true' to {minions} minions, until all returns", "ms", samples)
    )


def measure_memory(master, minions, samples, report):
    time.sleep(2)
    master_rss, master_pss, master_minion_rss, master_minion_pss = [], [], [], []
    sizes = set()
    for n in range(samples):
        if n:
            time.sleep(0.2)
        rss, pss, size = tree_memory_mib(master.pid)
        master_rss.append(rss)
        master_pss.append(pss)
        sizes.add(size)
        # Every minion once per sample: the median minion stands for one.
        per_minion = [tree_memory_mib(minion.pid) for minion in minions]
        master_minion_rss.extend(rss for rss, _, _ in per_minion)
        master_minion_pss.extend(pss for _, pss, _ in per_minion)
    count = len(minions)
    report["figures"].append(figure("salt_master_rss", f"salt-master RSS, all processes, {count} minions", "MiB", master_rss))
    report["figures"].append(figure("salt_master_pss", f"salt-master PSS, all processes, {count} minions", "MiB", master_pss))
    report["figures"].append(figure("salt_minion_rss", "one idle salt-minion RSS, all processes", "MiB", master_minion_rss))
    report["figures"].append(figure("salt_minion_pss", "one idle salt-minion PSS, all processes", "MiB", master_minion_pss))
    report["notes"].append(f"salt-master ran as {max(sizes)} processes")


def measure_timeout(client, report):
    marker = str(uuid.uuid4())
    started = time.perf_counter()
    answer = client.cmd(
        "minion-0",
        "cmd.run",
        ["sleep 600; echo done"],
        kwarg={"timeout": 1, "env": {MARKER_VARIABLE: marker}},
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 3
    leftover = processes_with_marker(marker)
    while leftover and time.monotonic() < deadline:
        time.sleep(0.05)
        leftover = processes_with_marker(marker)
    for pid in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    report["figures"].append(figure("salt_timeout_reported_after", "cmd.run 'sleep 600; echo done', timeout=1: result after", "s", [elapsed]))
    report["figures"].append(figure("salt_timeout_leftover", "processes of that job alive 3 s after its result", "processes", [len(leftover)]))
    report["timeout_answer"] = answer.get("minion-0")
    if leftover:
        report["notes"].append(
            f"Salt's timed-out cmd.run left {len(leftover)} process(es) running (pids {leftover}); this helper killed them by PID"
        )


# The combined table


def format_value(value):
    magnitude = abs(value)
    if magnitude >= 1000 or (value == int(value)):
        return f"{value:.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(fig):
    if fig is None:
        return "not measured"
    if fig["unit"] == "processes":
        count = int(fig["median"])
        return f"{count} process" if count == 1 else f"{count} processes"
    if fig["runs"] == 1:
        return f"{format_value(fig['median'])} {fig['unit']}"
    return (
        f"{format_value(fig['median'])} {fig['unit']} "
        f"(p95 {format_value(fig['p95'])}, p99 {format_value(fig['p99'])}, n={fig['runs']})"
    )


def times_cost(ours, other, higher_is_better):
    """Return how many times `other` costs what `ours` costs, as text: 3.00
    means other is three times slower or bigger."""
    if ours is None or other is None or ours["median"] == 0 or other["median"] == 0:
        return ""
    if higher_is_better:
        return f"{ours['median'] / other['median']:.2f}"
    return f"{other['median'] / ours['median']:.2f}"


def print_table(args):
    with open(args.runwarden) as runwarden_file:
        runwarden = json.load(runwarden_file)
    salt = None
    if args.salt and os.path.exists(args.salt):
        with open(args.salt) as salt_file:
            salt = json.load(salt_file)
    rw = {fig["id"]: fig for fig in runwarden["figures"]}
    sf = {fig["id"]: fig for fig in salt["figures"]} if salt else {}
    minions = salt["minions"] if salt else args.minions

    rows = [
        ("`true`, one agent or minion, latency", "sync_latency_memory", "sync_floor", "salt_latency", False),
        ("the same, Runwarden with SQLite storage", "sync_latency_sqlite", "sync_floor", None, False),
        (f"fan-out of `true` to {minions}", f"fanout_{minions}", f"fanout_{minions}_floor", f"salt_fanout_{minions}", False),
    ]
    for fig_id, fig in rw.items():
        if fig_id.startswith("fanout_") and not fig_id.endswith("_floor") and fig_id != f"fanout_{minions}":
            count = fig_id.split("_")[1]
            rows.append((f"fan-out of `true` to {count}", fig_id, f"{fig_id}_floor", None, False))
    rows += [
        ("async jobs, 1 agent", "throughput_1_agent", "throughput_floor_1", None, True),
        ("async jobs, 4 agents", "throughput_4_agents", "throughput_floor_4", None, True),
        ("coordinator RSS, no agent", "coordinator_rss_0", None, None, False),
        (f"coordinator / master RSS, {minions} idle agents / minions", f"coordinator_rss_{minions}", None, "salt_master_rss", False),
        (f"coordinator / master PSS, {minions} idle agents / minions", f"coordinator_pss_{minions}", None, "salt_master_pss", False),
    ]
    for fig_id in rw:
        if fig_id.startswith(("coordinator_rss_", "coordinator_pss_")) and fig_id not in (
            "coordinator_rss_0",
            f"coordinator_rss_{minions}",
            f"coordinator_pss_{minions}",
            f"coordinator_rss_per_agent_{minions}",
        ):
            rows.append((rw[fig_id]["label"], fig_id, None, None, False))
    rows += [
        ("one idle agent / minion RSS", "agent_rss_idle", None, "salt_minion_rss", False),
        ("one idle agent / minion PSS", "agent_pss_idle", None, "salt_minion_pss", False),
        ("output capture rate", "output_rate", "output_floor", None, True),
        ("agent peak RSS while capturing it", "output_agent_peak_rss", None, None, False),
        ("job without plugins", "job_no_hooks", None, None, False),
        ("job with fixture plugins", "job_fixture_hooks", None, None, False),
        ("cost the plugins add to a job", "job_hook_cost", None, None, False),
        ("`sleep 600` child, timeout 1 s: result after", "timeout_reported_after", None, "salt_timeout_reported_after", False),
        ("processes left 3 s after that timeout", "timeout_leftover", None, "salt_timeout_leftover", False),
    ]

    print("| figure | Runwarden | floor (direct spawn) | Runwarden x floor | Salt | Salt x Runwarden |")
    print("|---|---|---|---|---|---|")
    for label, rw_id, floor_id, salt_id, higher in rows:
        ours = rw.get(rw_id) if rw_id else None
        floor = rw.get(floor_id) if floor_id else None
        other = sf.get(salt_id) if salt_id else None
        if ours is None and other is None:
            continue
        salt_cell = cell(other) if salt_id else "—"
        if salt_id and salt is None:
            salt_cell = "missing (Salt did not run)"
        vs_floor = ""
        if ours and floor:
            vs_floor = times_cost(floor, ours, higher)
        vs_salt = times_cost(ours, other, higher) if "leftover" not in (rw_id or "") else ""
        print(
            f"| {label} | {cell(ours) if rw_id else '—'} | {cell(floor) if floor_id else ''} "
            f"| {vs_floor} | {salt_cell} | {vs_salt} |"
        )
    print()
    machine = runwarden["machine"]
    print(
        f"Machine: {machine['cores']} cores, {machine['memory_gib']:.1f} GiB, kernel {machine['kernel']}, "
        f"{machine['cpu']}; load average at start {machine['load_average']}; Runwarden {runwarden['profile']} build."
    )
    if salt:
        print(f"Salt {salt['salt_version']} on Python {salt['python']}, {salt['minions']} minions; master listened on {', '.join(salt.get('master_listening', []))}.")
        for note in salt["notes"]:
            print(f"Salt: {note}.")
        print(f"Salt's answer to the timed-out job: {salt.get('timeout_answer')!r}")
    for note in runwarden["notes"]:
        print(f"Runwarden {note}.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    salt_parser = commands.add_parser("salt", help="measure Salt and write its figures as JSON")
    salt_parser.add_argument("--dir", required=True, help="folder for every file of the Salt master and minions")
    salt_parser.add_argument("--minions", type=int, default=10, help="salt-minion processes to start (default 10)")
    salt_parser.add_argument("--latency-runs", type=int, default=200, help="sequential cmd.run calls (default 200)")
    salt_parser.add_argument("--fanout-runs", type=int, default=10, help="cmd.run calls to every minion (default 10)")
    salt_parser.add_argument("--rss-samples", type=int, default=10, help="memory readings 200 ms apart (default 10)")
    salt_parser.add_argument("--json", required=True, help="file to write the figures to")
    table_parser = commands.add_parser("table", help="print Salt's and Runwarden's figures in one Markdown table")
    table_parser.add_argument("--runwarden", required=True, help="JSON file from runwarden-bench --json")
    table_parser.add_argument("--salt", help="JSON file from the salt command; missing means Salt did not run")
    table_parser.add_argument("--minions", type=int, default=10, help="minion count, when Salt did not run")
    args = parser.parse_args()
    if args.command == "salt":
        # A SIGTERM (or Ctrl-C) still stops every started process through the
        # finally block of run_salt.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        run_salt(args)
    else:
        print_table(args)


if __name__ == "__main__":
    main()
