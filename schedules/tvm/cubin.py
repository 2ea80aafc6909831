"""What a cubin says about itself, read without a GPU or the CUDA tools: its SM arch and its kernel names.

A cubin is an ELF64 file (OS/ABI 0x41, CUDA). The arch is in ``e_flags``: bits 8-15 from ELF ABI version 8
(nvcc 12.8+; seen with nvcc 13.0: ``0x6005a04`` for sm_90, ``0x6005004`` for sm_80), bits 0-7 before. The
kernels are the symbol table's functions.
"""

from __future__ import annotations

import struct

_SHT_SYMTAB = 2
_STT_FUNC = 2


def cubin_info(data: bytes) -> dict:
    """``{"sm": 90, "functions": [...]}`` of a cubin's bytes; ValueError for anything that is not one."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    if data[7] != 0x41:
        raise ValueError(f"not a CUDA ELF (OS/ABI {data[7]:#x}, a cubin has 0x41)")
    flags = struct.unpack_from("<I", data, 0x30)[0]
    sm = (flags >> 8) & 0xFF if data[8] >= 8 else flags & 0xFF
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    functions = []
    for _name, kind, _f, _a, off, size, link, _i, _al, entsize in sections:
        if kind != _SHT_SYMTAB or not entsize:
            continue
        str_off = sections[link][4]
        for j in range(size // entsize):
            st_name, st_info = struct.unpack_from("<IB", data, off + j * entsize)
            if st_info & 0xF == _STT_FUNC:
                end = data.index(b"\0", str_off + st_name)
                functions.append(data[str_off + st_name:end].decode())
    return {"sm": sm, "functions": sorted(functions)}
