"""Which build of a runtime ran: the compiler identification strings in its library's ``.comment``.

Two wheels of one runtime version can run the same micro-kernel at very different speeds because
they were built by different compilers (issue 15: the executorch wheel's XNNPACK, GCC 13.3.1, spills
an accumulator of the f32 IGEMM kernel that LiteRT's clang 18.1.8 build keeps in registers). The
linker keeps one ``.comment`` string per distinct compiler of the linked objects ("GCC: (GNU)
13.3.1 ...", "clang version 18.1.8 ..."), so the record can say which build ran.

Written by hand with the standard library only, on purpose: this module runs on the device, where
the runner must stay thin and pyelftools (or binutils' readelf) may not be installed; all it needs
is the section header table and two sections. The reader is bounded (it seeks to what it needs,
never reads a whole 500 MB library, caps every count and size) and refuses a malformed or truncated
file with ``ElfError``, never another exception (tests/test_fuzz_parsers.py feeds it garbage).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterable, Optional

MAX_SECTIONS = 1 << 16  # a shared library has tens; more is a damaged header
MAX_SHSTRTAB_BYTES = 1 << 20
MAX_COMMENT_BYTES = 1 << 16  # a .comment holds one short line per compiler
MAX_STRINGS, MAX_STRING_CHARS = 32, 200  # what the record keeps of them
MAX_FILE_OFFSET = 1 << 40  # beyond any library (and below what seek() on a real file accepts)
SOURCE = ".comment"


class ElfError(ValueError):
    """Not an ELF file this reader understands, or one cut short."""


def _read_at(f: BinaryIO, offset: int, size: int, what: str) -> bytes:
    if offset < 0 or size < 0 or offset + size > MAX_FILE_OFFSET:
        raise ElfError(f"{what}: offset {offset} or size {size} out of range")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"{what}: file ends at {offset + len(data)}, {size} bytes wanted at {offset} (truncated)")
    return data


def _sections(f: BinaryIO) -> tuple[list[tuple[int, int, int, int]], int]:
    """``[(name_offset, type, offset, size)]`` of every section header, and the index of the name table."""
    ident = _read_at(f, 0, 16, "ELF identification")
    if ident[:4] != b"\x7fELF":
        raise ElfError("not an ELF file (no \\x7fELF magic)")
    elf_class, data = ident[4], ident[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ElfError(f"unknown ELF class {elf_class} or data encoding {data}")
    end = "<" if data == 1 else ">"
    if elf_class == 2:  # ELF64: e_shoff @0x28, e_shentsize/e_shnum/e_shstrndx @0x3A
        (shoff,) = struct.unpack(end + "Q", _read_at(f, 0x28, 8, "ELF header"))
        shentsize, shnum, shstrndx = struct.unpack(end + "HHH", _read_at(f, 0x3A, 6, "ELF header"))
        entry, want, link_at = end + "IIQQQQ", 64, 40  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
    else:  # ELF32: e_shoff @0x20, e_shentsize/e_shnum/e_shstrndx @0x2E
        (shoff,) = struct.unpack(end + "I", _read_at(f, 0x20, 4, "ELF header"))
        shentsize, shnum, shstrndx = struct.unpack(end + "HHH", _read_at(f, 0x2E, 6, "ELF header"))
        entry, want, link_at = end + "IIIIII", 40, 24
    if shoff == 0:
        raise ElfError("no section header table (e_shoff 0)")
    if shentsize < want:
        raise ElfError(f"section header entries of {shentsize} bytes, at least {want} expected")

    def header(i: int) -> tuple[int, int, int, int, int]:
        raw = _read_at(f, shoff + i * shentsize, want, f"section header {i}")
        name, typ, _flags, _addr, offset, size = struct.unpack(entry, raw[:struct.calcsize(entry)])
        (link,) = struct.unpack(end + "I", raw[link_at:link_at + 4])
        return name, typ, offset, size, link

    if shnum == 0 or shstrndx == 0xFFFF:  # extended numbering: the real values live in section 0
        _n, _t, _o, size0, link0 = header(0)
        shnum = shnum or size0
        shstrndx = link0 if shstrndx == 0xFFFF else shstrndx
    if not 0 < shnum <= MAX_SECTIONS:
        raise ElfError(f"{shnum} section headers (at most {MAX_SECTIONS} read)")
    if shstrndx >= shnum:
        raise ElfError(f"section name table index {shstrndx} is past the {shnum} sections")
    return [header(i)[:4] for i in range(shnum)], shstrndx


def comment_strings(path: str) -> list[str]:
    """The distinct compiler strings of ``path``'s ``.comment`` section, in file order ([] when it has
    none: a stripped or hand-made file). ``ElfError`` for a file that is not well-formed ELF;
    ``OSError`` when it cannot be read."""
    with open(path, "rb") as f:
        return read_comment(f)


def read_comment(f: BinaryIO) -> list[str]:
    """``comment_strings`` of an open binary file (seekable)."""
    sections, names_index = _sections(f)
    _n, _t, names_offset, names_size = sections[names_index]
    if names_size > MAX_SHSTRTAB_BYTES:
        raise ElfError(f"section name table of {names_size} bytes (at most {MAX_SHSTRTAB_BYTES} read)")
    names = _read_at(f, names_offset, names_size, "section name table")
    for name_offset, typ, offset, size in sections:
        end = names.find(b"\0", name_offset)
        if name_offset >= len(names) or names[name_offset:end if end >= 0 else len(names)] != b".comment":
            continue
        if typ == 8:  # SHT_NOBITS: no bytes in the file
            return []
        if size > MAX_COMMENT_BYTES:
            raise ElfError(f".comment of {size} bytes (at most {MAX_COMMENT_BYTES} read)")
        raw = _read_at(f, offset, size, ".comment")
        seen: list[str] = []
        for part in raw.split(b"\0"):
            text = " ".join(part.decode("utf-8", "replace").split())[:MAX_STRING_CHARS]
            text = "".join(c if c.isprintable() else "\ufffd" for c in text)  # a record line, never control bytes
            if text and text not in seen and len(seen) < MAX_STRINGS:
                seen.append(text)
        return seen
    return []


def build(library: Optional[str], missing_reason: str = "the runtime names no native library") \
        -> tuple[Optional[dict], Optional[str]]:
    """The record's ``runner.build`` for ``library`` and, when that is null, ``runner.build_reason``:
    ``({"library": basename, "compilers": [...], "source": ".comment"}, None)`` or ``(None, why)``."""
    if not library:
        return None, missing_reason
    name = os.path.basename(library)
    try:
        compilers = comment_strings(library)
    except ElfError as exc:
        return None, f"{name}: {exc}"
    except OSError as exc:
        return None, f"{name}: cannot read it ({exc.strerror or exc})"
    if not compilers:
        return None, f"{name} has no .comment section (stripped), so its compilers are unknown"
    return {"library": name, "compilers": compilers, "source": SOURCE}, None


def loaded_library(prefixes: Iterable[str], fallback_dirs: Iterable[str] = ()) -> Optional[str]:
    """The path of a shared library mapped into this process whose file name starts with one of
    ``prefixes`` (earlier prefixes first; ``/proc/self/maps``: the file that really runs, wherever the
    loader found it); else such a file in ``fallback_dirs``; None when there is none."""
    prefixes = tuple(prefixes)
    mapped: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
                    mapped.append(fields[5].strip())
    except OSError:
        pass  # not Linux/Android: look in the package's own directories
    listed: list[str] = []
    for d in fallback_dirs:
        try:
            listed += [os.path.join(d, n) for n in sorted(os.listdir(d))]
        except OSError:
            continue
    for paths in (mapped, listed):
        for prefix in prefixes:
            for path in paths:
                name = os.path.basename(path)
                if name.startswith(prefix) and ".so" in name:
                    return path
    return None
