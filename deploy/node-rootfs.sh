#!/bin/sh
# Assemble the node image's whole file system in ROOTFS from the build stage
# (deploy/node.Dockerfile): the virtual environment VENV, the Python interpreter and standard
# library it runs on (Debian's or python:3.11-slim's, wherever sys.base_prefix is), and the
# shared libraries all of their ELF files load, found with ldd, plus users, the loader's
# cache and the node's directories. No shell, package manager, compiler, docs or locales.
# Finally the node's own modules are imported inside ROOTFS (chroot) as a smoke test, which
# also leaves bytecode for exactly the modules a node imports.
# Usage: node-rootfs.sh VENV ROOTFS
set -eu
venv=${1:?usage: node-rootfs.sh VENV ROOTFS}
root=${2:?usage: node-rootfs.sh VENV ROOTFS}
python="$venv/bin/python3"
mkdir -p "$root"

# copy PATH...: each path as it is (file or symlink) and, for a symlink, what it points at;
# directories are resolved first so merged-/usr symlinks (/lib -> usr/lib) are not copied
# as directories.
copy() {
    for path in "$@"; do
        real_dir=$(cd "$(dirname "$path")" && pwd -P)
        path="$real_dir/$(basename "$path")"
        cp -a --parents "$path" "$root"
        if [ -L "$path" ]; then
            cp -a --parents "$(readlink -f "$path")" "$root"
        fi
    done
}

# The top-level merged-/usr links, as the build stage has them.
for dir in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$dir" ]; then ln -sfn "$(readlink "/$dir")" "$root/$dir"; fi
done

# The interpreter, its standard library (without tests, IDLE, Tk, ensurepip, 2to3, the
# static libpython and bytecode) and its extension modules.
eval "$("$python" -c '
import sys, sysconfig
print("interpreter=%r; stdlib=%r; dynload=%r; version=%r" % (
    sys._base_executable, sysconfig.get_paths()["stdlib"],
    sysconfig.get_config_var("DESTSHARED"), sysconfig.get_python_version()))
')"
# The venv's python3 symlinks lead there, maybe through others (python3 -> python3.11).
copy "$interpreter"
link="$venv/bin/python3"
while [ -L "$link" ]; do
    target=$(readlink "$link")
    case "$target" in /*) ;; *) target="$(dirname "$link")/$target" ;; esac
    case "$target" in "$venv"/*) ;; *) copy "$target" ;; esac
    link=$target
done
tar -C / --exclude=__pycache__ --exclude=test --exclude=tests --exclude=idlelib \
    --exclude=tkinter --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 \
    --exclude='config-*' --exclude=site-packages --exclude=dist-packages \
    --exclude='_tkinter*' --exclude='_curses*' --exclude='readline*' --exclude='_gdbm*' \
    --exclude='_dbm*' --exclude='_test*' --exclude='xx*' --exclude='nis.*' \
    -cf - "${stdlib#/}" "${dynload#/}" | tar -C "$root" -xf -
# Debian's stdlib links sitecustomize.py to /etc/python3.X.
if [ -d "/etc/python$version" ]; then copy "/etc/python$version"/*; fi
# The venv, without pip's scripts (pip is not installed), activation scripts and the
# scripts of tools node-slim.sh removed (f2py).
tar -C / -cf - "${venv#/}" | tar -C "$root" -xf -
(cd "$root$venv/bin" && rm -f pip pip3 pip3.* activate activate.* Activate.ps1 f2py \
    numpy-config cffi-gen-src)

# Every shared library that an ELF file of the interpreter, the stdlib or the venv loads.
find "$root" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print \
    | while read -r file; do
        case "$(head -c 4 "$file" | od -An -c | tr -d ' ')" in *ELF*) ;; *) continue ;; esac
        ldd "${file#"$root"}" 2>/dev/null || true
    done \
    | sed -n -e 's/.*=> \(\/[^ ]*\) (0x.*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p' \
    | sort -u > /tmp/node-libraries
missing=$(find "$root" -type f -name '*.so*' -exec ldd {} + 2>/dev/null | grep 'not found' \
    | sort -u || true)
if [ -n "$missing" ]; then
    echo "node-rootfs: libraries not found: $missing" >&2
    exit 1
fi
while read -r library; do
    case "$library" in "$venv"/*) continue ;; esac  # the wheels' own, copied with the venv
    copy "$library"
done < /tmp/node-libraries
# The loader's configuration and cache for exactly these libraries.
if [ -f /etc/ld.so.conf ]; then copy /etc/ld.so.conf; fi
if [ -d /etc/ld.so.conf.d ]; then cp -a --parents /etc/ld.so.conf.d "$root"; fi
ldconfig -r "$root"

# Users (the node runs as uid 10001), name service, CA bundle, and the node's directories:
# /etc/bridgestat config (read-only), /data the export (read-only), /var/lib/bridgestat the
# ledger and audit log (the only writable state), /tmp for Python's temporary files.
mkdir -p "$root/etc" "$root/tmp" "$root/etc/bridgestat" "$root/data" "$root/var/lib/bridgestat"
printf 'root:x:0:0:root:/root:/nonexistent\nbridgestat:x:10001:10001:bridgestat node:/var/lib/bridgestat:/nonexistent\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nbridgestat:x:10001:\n' > "$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$root/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then copy /etc/ssl/certs/ca-certificates.crt; fi
chmod 1777 "$root/tmp"
chown 10001:10001 "$root/var/lib/bridgestat"

# Smoke test and bytecode: the node's modules and every data source's library, imported by
# the copied interpreter inside the new root.
chroot "$root" "$python" -m compileall -q "$("$python" -c 'import bridgestat, os; print(os.path.dirname(bridgestat.__file__))')"
chroot "$root" "$python" -c '
import importlib, pkgutil
import bridgestat.common, bridgestat.node
for package in (bridgestat.common, bridgestat.node):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
import openpyxl, psycopg, pyarrow.compute, pyarrow.parquet  # excel, postgresql, parquet
import bridgestat.node.cli
print("node-rootfs: the node imports inside the image root; psycopg", psycopg.pq.__impl__)
'
chroot "$root" "$venv/bin/bridgestat-node" --help > /dev/null
