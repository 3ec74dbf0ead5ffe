#!/usr/bin/env python3
"""Write a single-layer container image as a docker-archive tarball, without any daemon
or registry: `<layer>/layer.tar`, `<config-digest>.json` and `manifest.json`, the format
`docker save` writes and `ctr -n k8s.io images import` (and `docker load`) read.

    mkimage.py --ref k8s.gcr.io/kube-apiserver:v1.20.2 --out kube-apiserver.tar \
        --entrypoint /usr/local/bin/kube-apiserver \
        --file /path/to/kube-apiserver:/usr/local/bin/kube-apiserver \
        [--elf SRC:DEST]      # a dynamically linked binary: its ldd dependencies come along
        [--tree SRC_DIR:DEST_DIR]  # every file under SRC_DIR (ELF files with their deps)
        [--symlink LINK:TARGET] [--dir /var/lib/etcd]

The output is reproducible: fixed mtimes, root ownership, sorted entries.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

MTIME = 1610544000  # 2021-01-13T13:20:00Z, the v1.20.2 build date used for the binaries
CREATED = "2021-01-13T13:20:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def ldd_deps(path):
    """Absolute paths of the shared objects `path` loads (empty for static binaries)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True)
    deps = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
            if target.startswith("/"):
                deps.append(target)
        elif line.startswith("/"):
            deps.append(line.split(" ")[0])
    return deps


class Layer:
    def __init__(self):
        self.files = {}  # dest -> (kind, value, mode)

    def add_dirs(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/" + "/".join(parts[:i])
            if d not in self.files:
                self.files[d] = ("dir", None, 0o755)

    def add_file(self, src, dest, mode=None):
        if mode is None:
            mode = os.stat(src).st_mode & 0o7777
        self.add_dirs(dest)
        self.files[dest] = ("file", os.path.realpath(src), mode)

    def add_elf(self, src, dest):
        self.add_file(src, dest)
        for dep in ldd_deps(src):
            if dep not in self.files:
                self.add_file(dep, dep, 0o755)

    def add_tree(self, src_dir, dest_dir):
        for root, _dirs, names in os.walk(src_dir):
            for name in names:
                src = os.path.join(root, name)
                dest = os.path.join(dest_dir, os.path.relpath(src, src_dir))
                if os.path.islink(src) and not os.path.exists(src):
                    continue
                if is_elf(src):
                    self.add_elf(src, dest)
                else:
                    self.add_file(src, dest)

    def add_symlink(self, link, target):
        self.add_dirs(link)
        self.files[link] = ("symlink", target, 0o777)

    def add_dir(self, dest, mode=0o755):
        self.add_dirs(dest + "/x")
        self.files[dest] = ("dir", None, mode)

    def write(self, fileobj):
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for dest in sorted(self.files):
                kind, value, mode = self.files[dest]
                info = tarfile.TarInfo(dest.lstrip("/"))
                info.mtime = MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = value
                    tar.addfile(info)
                else:
                    info.size = os.path.getsize(value)
                    with open(value, "rb") as f:
                        tar.addfile(info, f)


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_pair(value):
    src, sep, dest = value.rpartition(":")
    if not sep or not src or not dest.startswith("/"):
        sys.exit(f"mkimage: expected SRC:/DEST, got {value!r}")
    return src, dest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ref", required=True, help="repository:tag written into the archive")
    p.add_argument("--out", required=True)
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--file", action="append", default=[])
    p.add_argument("--elf", action="append", default=[])
    p.add_argument("--tree", action="append", default=[])
    p.add_argument("--symlink", action="append", default=[])
    p.add_argument("--dir", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    a = p.parse_args()

    layer = Layer()
    layer.add_dir("/tmp", 0o1777)
    layer.add_dir("/etc")
    for v in a.file:
        layer.add_file(*split_pair(v))
    for v in a.elf:
        layer.add_elf(*split_pair(v))
    for v in a.tree:
        layer.add_tree(*split_pair(v))
    for v in a.symlink:
        link, _, target = v.partition(":")
        layer.add_symlink(link, target)
    for d in a.dir:
        layer.add_dir(d)

    out_dir = os.path.dirname(os.path.abspath(a.out))
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        layer_path = os.path.join(tmp, "layer.tar")
        with open(layer_path, "wb") as f:
            layer.write(f)
        diff_id = sha256_file(layer_path)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": {
                "Env": [PATH_ENV] + a.env,
                "Entrypoint": a.entrypoint or None,
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
            "history": [{"created": CREATED, "created_by": "kubeforge scripts/k8s-mirror/mkimage.py"}],
        }
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = hashlib.sha256(config_bytes).hexdigest()
        repo, _, tag = a.ref.rpartition(":")
        manifest = [
            {
                "Config": config_digest + ".json",
                "RepoTags": [a.ref],
                "Layers": [diff_id + "/layer.tar"],
            }
        ]
        part = a.out + ".part"
        with tarfile.open(part, mode="w", format=tarfile.GNU_FORMAT) as tar:
            d = tarfile.TarInfo(diff_id)
            d.type = tarfile.DIRTYPE
            d.mode = 0o755
            d.mtime = MTIME
            tar.addfile(d)
            add_bytes(tar, diff_id + "/VERSION", b"1.0")
            with open(layer_path, "rb") as f:
                info = tarfile.TarInfo(diff_id + "/layer.tar")
                info.size = os.path.getsize(layer_path)
                info.mtime = MTIME
                info.mode = 0o644
                tar.addfile(info, f)
            add_bytes(tar, config_digest + ".json", config_bytes)
            add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            add_bytes(tar, "repositories", json.dumps({repo: {tag: diff_id}}).encode())
        os.replace(part, a.out)
    print(f"mkimage: {a.ref} -> {a.out} ({os.path.getsize(a.out) // (1 << 20)} MiB, "
          f"{len(layer.files)} entries)", file=sys.stderr)


if __name__ == "__main__":
    main()
