#!/usr/bin/env python3
"""Independent vector: a signed manifest envelope written from docs/FORMAT.md alone.

Nothing here calls ferry: the body encoding (FORMAT.md 3.1, 3.2), the ids (1), the
envelope (4.2) and the signed message (4.3) are spelled out below with the `blake3`
and `PyNaCl` packages from PyPI. format/tests/independent.rs checks that ferry
produces exactly these bytes for the same manifest and accepts them.

Rerun (only when FORMAT.md changes; CI does not need Python):

    python3 -m venv /tmp/ferry-vectors
    /tmp/ferry-vectors/bin/pip install blake3 PyNaCl
    /tmp/ferry-vectors/bin/python testdata/independent/make_vectors.py

It rewrites manifest_stable_2.0.0_seed01.hex (the object, hex, 32 bytes a line) and
manifest_stable_2.0.0_seed01.txt (its object name and the signing key's ids).
"""

import os
import struct

from blake3 import blake3
from nacl.signing import SigningKey

HERE = os.path.dirname(os.path.abspath(__file__))


def u8(n):
    return struct.pack("<B", n)


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def string(s):
    b = s.encode("utf-8")
    return u64(len(b)) + b


def vec(items):
    return u64(len(items)) + b"".join(items)


def h(data):
    return blake3(data).digest()


def object_ref(hash32, size):
    return hash32 + u64(size)


# The release: a directory, one file of one chunk, one empty file, a symlink.
APP = b"#!/bin/sh\necho ferry\n"
STORED_SIZES = [30]  # the zstd frame of APP as a publisher would store it (not checked here)
ARCHIVE = bytes([0x5A]) * 32  # stands for the archive's name; only its size is ruled on

chunking = u8(1) + u8(1) + u32(16 * 1024) + u32(64 * 1024) + u32(256 * 1024)
chunks = [h(APP) + u32(len(APP)) + u32(STORED_SIZES[0]) + u64(2)]
entries = [
    string("bin") + u32(0) + u32(0o755),
    string("bin/app") + u32(1) + u32(0o755) + u64(len(APP)) + h(APP) + vec([u32(0)]),
    string("bin/empty") + u32(1) + u32(0o644) + u64(0) + h(b"") + vec([]),
    string("run") + u32(2) + string("bin/app"),
]
diffs = [
    string("1.0.0") + bytes([0x11]) * 32 + object_ref(bytes([0x22]) * 32, 4321),
]
body = (
    string("stable")
    + string("2.0.0")
    + u64(2)
    + chunking
    + object_ref(ARCHIVE, sum(STORED_SIZES))
    + vec(chunks)
    + vec(entries)
    + vec(diffs)
)

MAGIC = b"FRYM"
FORMAT = 1
key = SigningKey(bytes([1]) * 32)
public = bytes(key.verify_key)
key_id = h(public)
message = b"ferry-signature-v1\x00" + MAGIC + struct.pack("<H", FORMAT) + body
signature = key.sign(message).signature
envelope = (
    MAGIC
    + struct.pack("<H", FORMAT)
    + u32(len(body))
    + body
    + struct.pack("<H", 1)
    + key_id
    + signature
)

name = "manifest_stable_2.0.0_seed01"
with open(os.path.join(HERE, name + ".hex"), "w") as f:
    for i in range(0, len(envelope), 32):
        f.write(envelope[i : i + 32].hex() + "\n")
with open(os.path.join(HERE, name + ".txt"), "w") as f:
    f.write("object_name %s\n" % h(envelope).hex())
    f.write("object_size %d\n" % len(envelope))
    f.write("public_key %s\n" % public.hex())
    f.write("key_id %s\n" % key_id.hex())
print("wrote", name, len(envelope), "bytes, name", h(envelope).hex())
