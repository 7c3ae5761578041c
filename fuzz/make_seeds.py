#!/usr/bin/env python3
"""Writes the seed inputs in seeds/<target>/ from the byte layouts in docs/checkpoint-format.md.

An independent encoder (postcard by hand, zlib's CRC-32), so the seeds double as a check that the
document describes what the Rust reader accepts. Run from anywhere: python3 fuzz/make_seeds.py
"""
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pstr(s):
    b = s.encode()
    return varint(len(b)) + b


def snapshot(checkpoint_id, worker, sections):
    data = b""
    index = varint(len(sections))
    offset = 64
    for name, body in sections:
        index += pstr(name) + varint(offset) + varint(len(body)) + varint(zlib.crc32(body))
        data += body
        offset += len(body)
    head = b"WEIRSNAP" + struct.pack(
        "<HHIQIIQQQI",
        1,                # version
        0,                # flags
        64,               # header_len
        checkpoint_id,
        worker,
        len(sections),    # section_count
        64 + len(data),   # index_offset
        len(index),       # index_len
        len(data),        # data_len
        0,                # reserved
    )
    assert len(head) == 60
    head += struct.pack("<I", zlib.crc32(head))
    return head + data + index + struct.pack("<I", zlib.crc32(index))


def metadata(job, checkpoint_id, files, operators, version=5):
    p = varint(version)  # format_version
    p += pstr(job) + varint(checkpoint_id)
    p += varint(1_700_000_000_000) + varint(1_700_000_000_250)  # triggered_at_ms, completed_at_ms
    p += varint(128)  # max_parallelism
    p += varint(len(files))
    for name, owner, worker, size, crc in files:
        p += pstr(name)
        if version >= 2:
            p += varint(owner)  # the checkpoint whose directory holds the file
        p += varint(worker) + varint(size) + varint(crc)
    if version == 1:
        # duration, sync, async, alignment, bytes_written, files_written
        p += b"".join(varint(v) for v in (250, 3, 200, 12, 1333, len(files)))
    else:
        own = [f for f in files if f[1] == checkpoint_id]
        ref = [f for f in files if f[1] != checkpoint_id]
        p += b"".join(varint(v) for v in (
            250, 3, 200, 12,
            sum(f[3] for f in own),  # bytes_written
            len(own) + 1,            # files_written (with the metadata)
            sum(f[3] for f in own),  # bytes_uploaded
            len(own) + 1,            # requests
            len(ref),                # files_referenced
            sum(f[3] for f in ref),  # bytes_referenced
        ))
    p += varint(len(operators))
    for name, parallelism, state_bytes in operators:
        p += pstr(name) + varint(parallelism) + varint(state_bytes)
    out = b"WEIRMETA" + struct.pack("<HI", 1, len(p)) + p
    return out + struct.pack("<I", zlib.crc32(out))


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


write("snapshot_reader", "empty.snap", snapshot(1, 0, []))
write("snapshot_reader", "three.snap", snapshot(7, 3, [
    ("op1/s0/state", b"hello world"),
    ("empty", b""),
    ("op3/s1/state", bytes([0, 1, 2, 255, 254, 0, 0, 9])),
]))
write("snapshot_reader", "big-ids.snap", snapshot(2**64 - 1, 2**32 - 1, [("x" * 300, b"\x00" * 200)]))
write("metadata_reader", "empty.meta", metadata("", 0, [], []))
write("metadata_reader", "two-files.meta", metadata("clicks", 42, [
    ("worker-0.snap", 42, 0, 1234, 0xDEADBEEF),
    ("worker-1.snap", 40, 1, 99, 7),
], [("count", 2, 1300)]))
# Version 4: version 5's metadata layout (its window operators' state differs).
write("metadata_reader", "v4-two-files.meta", metadata("clicks", 42, [
    ("worker-0.snap", 42, 0, 1234, 0xDEADBEEF),
    ("worker-1.snap", 40, 1, 99, 7),
], [("count", 2, 1300)], version=4))
# Version 3: version 4's metadata layout (its keyed process functions' timers differ).
write("metadata_reader", "v3-two-files.meta", metadata("clicks", 42, [
    ("worker-0.snap", 42, 0, 1234, 0xDEADBEEF),
    ("worker-1.snap", 40, 1, 99, 7),
], [("count", 2, 1300)], version=3))
# Version 2: version 3's metadata layout (its window state sections differ too).
write("metadata_reader", "v2-two-files.meta", metadata("clicks", 42, [
    ("worker-0.snap", 42, 0, 1234, 0xDEADBEEF),
    ("worker-1.snap", 40, 1, 99, 7),
], [("count", 2, 1300)], version=2))
write("metadata_reader", "v1-two-files.meta", metadata("clicks", 42, [
    ("worker-0.snap", 42, 0, 1234, 0xDEADBEEF),
    ("worker-1.snap", 42, 1, 99, 7),
], [("count", 2, 1300)], version=1))
