"""Point a loaded library's calls of one function at another implementation, through its PLT slot.

Python opens extension modules with RTLD_NOW, so `import mlx.core` binds libmlx's cblas_sgemm to the bundled
reference BLAS at once; a library loaded later cannot interpose. libmlx is linked without BIND_NOW, so its
jump slots stay writable: rewriting the one slot is what the dynamic linker itself does on a lazy bind.
Linux ELF64 (x86_64, aarch64) only; anything unexpected returns False and changes nothing.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Dict, Optional, Tuple

_SHT_RELA, _SHT_DYNSYM = 4, 11
# R_X86_64_GLOB_DAT/JUMP_SLOT, R_AARCH64_GLOB_DAT/JUMP_SLOT: the slots that hold a function's address.
_SLOT_TYPES = {62: (6, 7), 183: (1025, 1026)}


def _sections(data: bytes):
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]


def _symbols(data: bytes) -> Tuple[Dict[int, Tuple[str, int, int]], list, int]:
    """({index: (name, value, section)} of the dynamic symbols, the section headers, the dynsym index)."""
    sections = _sections(data)
    index = next(i for i, s in enumerate(sections) if s[1] == _SHT_DYNSYM)
    sym, strtab = sections[index], sections[sections[index][6]]
    out = {}
    for i in range(sym[5] // 24):
        st_name, _, _, shndx, value, _ = struct.unpack_from("<IBBHQQ", data, sym[4] + 24 * i)
        start = strtab[4] + st_name
        out[i] = (data[start : data.index(b"\0", start)].decode(errors="replace"), value, shndx)
    return out, sections, index


def _slots(data: bytes, symbol: str) -> list:
    """Offsets (from the load base) of the slots through which the library calls `symbol`."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return []
    (machine,) = struct.unpack_from("<H", data, 0x12)
    types = _SLOT_TYPES.get(machine)
    if types is None:
        return []
    symbols, sections, dynsym = _symbols(data)
    slots = []
    for s in sections:
        if s[1] != _SHT_RELA or s[6] != dynsym:
            continue
        for i in range(s[5] // 24):
            offset, info, _ = struct.unpack_from("<QQq", data, s[4] + 24 * i)
            if info & 0xFFFFFFFF in types and symbols.get(info >> 32, ("",))[0] == symbol:
                slots.append(offset)
    return slots


def _base(path: str, data: bytes) -> Optional[int]:
    """The library's load base: a defined function's address minus its symbol value."""
    symbols, _, _ = _symbols(data)
    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
    for name, value, shndx in symbols.values():
        if name and shndx != 0 and value:
            try:
                return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value - value
            except AttributeError:
                continue
    return None


def _writable(address: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return "w" in line.split()[1]
    return False


def loaded_path(name_part: str) -> Optional[str]:
    """The path of a loaded library whose file name contains `name_part`."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and name_part in os.path.basename(parts[5]):
                return parts[5]
    return None


def rebind(path: str, symbol: str, address: int) -> bool:
    """Make the loaded library at `path` call `address` for `symbol`; False (and nothing changed) if it cannot."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        slots = _slots(data, symbol)
        base = _base(path, data) if slots else None
    except (OSError, ValueError, StopIteration, struct.error):
        return False
    if base is None or not all(_writable(base + s) for s in slots):
        return False
    for s in slots:
        ctypes.c_void_p.from_address(base + s).value = address
    return True
