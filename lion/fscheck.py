"""Is a path on a network filesystem? The run's SQLite files (call cache, answer index) need a local disk.

    python -m lion.fscheck PATH        # the filesystem type under PATH, and whether lion's SQLite files may live there

SQLite's write-ahead log keeps its index in a memory-mapped `-wal`/`-shm` pair and relies on POSIX locks; on NFS,
Lustre, CIFS and other network or cluster filesystems those are not coherent (SQLite's own documentation: WAL
"does not work over a network filesystem"), so a crash or a second host can lose or corrupt cached calls. The
gateway and the answer store therefore refuse such a place, naming `llm.cache_path` (a file on a local disk for
the call cache; the answer index goes beside it) and `llm.allow_network_fs` (accept the risk: one process on one
host). Detection reads the mount table (`/proc/self/mounts`, Linux); elsewhere it finds nothing and allows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ConfigError

# filesystem types (as the mount table names them) that are shared over a network or a cluster
NETWORK_FS = frozenset({
    "nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "afs", "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs",
    "sshfs", "9p", "beegfs", "gpfs", "panfs", "wekafs", "orangefs", "pvfs2", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.juicefs", "fuse.rclone", "fuse.mount-s3", "davfs", "ncpfs", "coda", "fuse.lustre", "quobyte",
})

MOUNTS = Path("/proc/self/mounts")  # tests point this at a mount table of their own


def _unescape(field: str) -> str:
    """Mount-table fields escape space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every line of a /proc/mounts-style table."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows.append((_unescape(parts[1]), parts[2]))
    return rows


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the filesystem that holds `path` (or, if it does not exist yet, its nearest existing parent);
    None when the mount table cannot be read."""
    try:
        table = mount_table(MOUNTS.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    best, kind = -1, None
    for point, fstype in table:  # the longest mount point that contains the path (later mounts shadow earlier)
        point = point.rstrip("/") or "/"
        if real == point or real.startswith(point if point == "/" else point + "/"):
            if len(point) >= best:
                best, kind = len(point), fstype
    return kind


def is_network_fs(path: str | os.PathLike[str]) -> bool:
    kind = filesystem_type(path)
    return kind is not None and kind.lower() in NETWORK_FS


def check_sqlite_home(path: str | os.PathLike[str], *, what: str, allow_network: bool = False) -> None:
    """Refuse (ConfigError) to put the SQLite file `path` on a network filesystem unless allowed."""
    if allow_network:
        return
    kind = filesystem_type(path)
    if kind is not None and kind.lower() in NETWORK_FS:
        raise ConfigError(
            f"llm.cache_path: {path} ({what}) would be on a {kind} filesystem; SQLite's write-ahead log is unsafe on "
            "network and cluster filesystems (cached calls can be lost or corrupted). Set llm.cache_path to a file "
            "on a local disk (e.g. /tmp/lion/RUN-NAME.sqlite; the answer index goes beside it), or set "
            "llm.allow_network_fs: true if only one process on one host ever opens it (docs/scaling.md)"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lion.fscheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    args = ap.parse_args(argv)
    kind = filesystem_type(args.path)
    verdict = "network: put the call cache elsewhere (llm.cache_path)" if is_network_fs(args.path) else "local: fine"
    print(f"{args.path}: {kind or 'unknown filesystem'} ({verdict if kind else 'allowed'})")
    return 0


if __name__ == "__main__":
    from .errors import cli_main

    cli_main(main, sys.argv[1:])
