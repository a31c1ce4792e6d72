"""Sums up two perf recordings of one workload as a JSON line (standard library only).

  profile.py NAME SHOP_PID COMMS FOLDED

COMMS is `perf script -F comm,pid` of a system-wide recording (thread name and process id of
each sample): the CPU is split by process, idle included, which says whether the machine was
saturated and by whom.
FOLDED is the shop's own recording with call stacks, folded by inferno-collapse-perf (one
`thread;frame;...;leaf count` per line, kernel frames marked `_[k]`): its samples are grouped by
the crate of the leaf frame (where the CPU was spent) and by the innermost frame of a few
libraries or of the shop's own code (who the time was spent for: the kernel, std and the
allocator below it count for their caller).
"""

import collections
import json
import re
import sys

# Thread names of the other processes on the machine during a workload.
PROCESS = (
    ("postgres", "PostgreSQL"),
    ("wrk", "wrk (the load)"),
    ("swapper", "idle"),
    ("perf", "perf (the recording)"),
)

# Who a sample was for: the innermost frame that matches one of these names it.
PURPOSE = (
    ("password hashing (argon2)", re.compile(r"argon2")),
    ("JWT and HMAC", re.compile(r"jsonwebtoken|hmac|sha2")),
    ("PostgreSQL client (sqlx, rustls)", re.compile(r"^<?&?(sqlx|rustls)")),
    ("JSON (serde_json)", re.compile(r"serde_json")),
    ("actors (ractor)", re.compile(r"^<?&?ractor")),
    ("metrics", re.compile(r"^<?&?metrics")),
    ("tracing", re.compile(r"^<?&?tracing")),
    ("HTTP (hyper, axum, tower)", re.compile(r"^<?&?(hyper|axum|tower|h1|http)")),
    ("the shop's own code", re.compile(r"^<?&?shop(_actors)?::")),
)


def process_of(comm, pid, shop_pid):
    if pid == shop_pid:
        return "shop"
    for prefix, name in PROCESS:
        if comm.startswith(prefix):
            return name
    return "other"


def crate_of(frame):
    if frame.endswith("_[k]"):
        return "kernel"
    frame = frame.lstrip("<&*")
    if frame.startswith(("[unknown]", "0x")):
        return "unknown"
    head = frame.split("::", 1)[0]
    if head in ("core", "alloc", "std"):
        return "Rust std"
    if head.startswith(("_mi_", "mi_")):
        return "allocator (mimalloc)"
    if "::" not in frame:
        return "libc and other C"
    return head


def main():
    name, shop_pid, comms_path, folded_path = sys.argv[1:5]
    processes = collections.Counter()
    for line in open(comms_path):
        comm, _, pid = line.strip().rpartition(" ")
        if pid:
            processes[process_of(comm.strip(), pid, shop_pid)] += 1
    crates, purposes = collections.Counter(), collections.Counter()
    shop_samples = 0
    for line in open(folded_path):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        count = int(count)
        frames = stack.split(";")[1:]
        if not frames:
            continue
        shop_samples += count
        crates[crate_of(frames[-1])] += count
        purpose = next((label for frame in reversed(frames) for label, pattern in PURPOSE
                        if pattern.search(frame)), "other (the runtime, std, the kernel)")
        purposes[purpose] += count
    total = sum(processes.values())
    print(json.dumps({
        "kind": "profile",
        "name": name,
        "samples": total,
        "processes": {k: v / total for k, v in processes.most_common()} if total else {},
        "shop_samples": shop_samples,
        "shop_leaf_crates": {k: v / shop_samples for k, v in crates.most_common(10)} if shop_samples else {},
        "shop_purposes": {k: v / shop_samples for k, v in purposes.most_common()} if shop_samples else {},
    }))


if __name__ == "__main__":
    main()
